""" Neighborhood Attention Transformer (NAT) and Dilated Neighborhood Attention Transformer (DiNAT)

A timm implementation of:
    - `Neighborhood Attention Transformer` (CVPR 2023) - https://arxiv.org/abs/2204.07143
    - `Dilated Neighborhood Attention Transformer` - https://arxiv.org/abs/2209.15001

Model structure and weights from https://github.com/SHI-Labs/Neighborhood-Attention-Transformer
(MIT License, Copyright (c) 2022-2023 SHI Lab). The state-dict layout is the official one (`patch_embed.proj.{0,1}`,
`levels.{i}.blocks.{j}`, `levels.{i}.downsample`), except the classifier (`head` -> `head.fc`) and the per-output norms
of the dense-task backbones (`norm{i}` -> `out_norms.{i}`, the last one is `norm`); `checkpoint_filter_fn` maps both.

The feature maps are channels-last (NHWC) inside the model, as in the official code; `forward_features` returns NHWC
(`output_fmt = 'NHWC'`), `forward_intermediates` and `features_only` return NCHW. Per-output norms: with
`output_norms=True` (the default for `features_only=True`) the model carries one LayerNorm per level output, as the
official mmdet/mmseg backbones do, and `forward_intermediates(norm=True)` applies them (the last level uses `norm`).
"""
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Type

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, Mlp, trunc_normal_
from timm.models import generate_default_cfgs, register_model

from hiervit.backbones._pretrained import build_with_official_layouts, check_checkpoint_keys, model_description
from hiervit.backbones.layers.contract import ContractStage, HierarchicalContract
from hiervit.backbones.layers.neighborhood import NeighborhoodAttention2d
from hiervit.backbones.layers.shape import check_image_input

__all__ = ['NAT']

torch.fx.wrap('check_image_input')  # an FX leaf for plain torch.fx.symbolic_trace (timm's tracer knows it already)


class ConvTokenizer(nn.Module):
    """Overlapping stride-4 stem: two 3x3 stride-2 convs (nothing between them), then LayerNorm. NCHW in, NHWC out."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 64, norm_layer: Callable[..., nn.Module] = nn.LayerNorm):
        super().__init__()
        self.in_chans = in_chans
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_input(x, self.in_chans, 'NAT')
        x = self.proj(x).permute(0, 2, 3, 1)  # [B, C, H, W] -> [B, H, W, C]
        return self.norm(x)


class ConvDownsampler(nn.Module):
    """3x3 stride-2 conv (no bias) doubling the channels, then LayerNorm. NHWC in and out."""

    def __init__(self, dim: int, norm_layer: Callable[..., nn.Module] = nn.LayerNorm):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = norm_layer(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # NHWC -> NCHW -> conv -> NHWC
        return self.norm(x)


class NATBlock(nn.Module):
    """Pre-norm transformer block: (D)NA then MLP, each with optional layer scale (`gamma1`/`gamma2`) and drop path."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            kernel_size: int = 7,
            dilation: int = 1,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            layer_scale: Optional[float] = None,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
            attn_backend: Optional[str] = None,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = NeighborhoodAttention2d(
            dim,
            num_heads=num_heads,
            kernel_size=kernel_size,
            dilation=dilation,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            proj_drop=proj_drop,
            backend=attn_backend,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        # Plain parameters (not timm's LayerScale module) keep the official `gamma1`/`gamma2` state-dict keys.
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(dim))
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(dim))
        else:
            self.gamma1 = self.gamma2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attn(self.norm1(x))
        x = x + self.drop_path(y if self.gamma1 is None else self.gamma1 * y)
        y = self.mlp(self.norm2(x))
        x = x + self.drop_path(y if self.gamma2 is None else self.gamma2 * y)
        return x


class NATStage(ContractStage):
    """One level: blocks at constant resolution, then (except for the last level) the downsampler."""

    def __init__(
            self,
            dim: int,
            depth: int,
            num_heads: int,
            kernel_size: int,
            dilations: Sequence[int],
            downsample_layer: Optional[Callable[..., nn.Module]] = ConvDownsampler,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            proj_drop: float = 0.,
            drop_path: Sequence[float] = (),
            layer_scale: Optional[float] = None,
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
            attn_backend: Optional[str] = None,
    ):
        super().__init__(downsample_first=False)
        self.blocks = nn.Sequential(*[
            NATBlock(
                dim=dim,
                num_heads=num_heads,
                kernel_size=kernel_size,
                dilation=dilations[i],
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                proj_drop=proj_drop,
                drop_path=drop_path[i],
                layer_scale=layer_scale,
                norm_layer=norm_layer,
                attn_backend=attn_backend,
            )
            for i in range(depth)])
        self.downsample = nn.Identity() if downsample_layer is None else downsample_layer(dim, norm_layer=norm_layer)


def _check_dilations(
        dilations: Optional[Sequence[Sequence[int]]],
        depths: Sequence[int],
) -> List[List[int]]:
    if dilations is None:
        return [[1] * d for d in depths]
    if len(dilations) != len(depths) or any(len(dl) != d for dl, d in zip(dilations, depths)):
        raise ValueError(
            f'dilations must hold one list per level with one dilation per block, matching depths={tuple(depths)}; '
            f'got {dilations}. Pass dilations= together with depths= (or dilations=None for plain NA).')
    return [[int(v) for v in dl] for dl in dilations]


class NAT(HierarchicalContract, nn.Module):
    """Neighborhood Attention Transformer; with `dilations` it is DiNAT (the official `DiNAT` class is NAT itself).

    The timm contract (`forward_intermediates`, pruning, `group_matcher`, ...) comes from `HierarchicalContract`.
    """

    contract_stem = 'patch_embed'
    contract_stages = 'levels'

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 64,
            depths: Sequence[int] = (3, 4, 6, 5),
            num_heads: Sequence[int] = (2, 4, 8, 16),
            kernel_size: int = 7,
            dilations: Optional[Sequence[Sequence[int]]] = None,
            mlp_ratio: float = 3.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            layer_scale: Optional[float] = None,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.2,
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
            stem_layer: Callable[..., nn.Module] = ConvTokenizer,
            downsample_layer: Callable[..., nn.Module] = ConvDownsampler,
            output_norms: bool = False,
            attn_backend: Optional[str] = None,
    ):
        """
        Args:
            in_chans: Input image channels.
            num_classes: Classifier outputs (0: no classifier).
            global_pool: Head pooling ('avg', 'max', ... or '' for none).
            embed_dim: Channels of the first level; doubled at every level.
            depths: Blocks per level.
            num_heads: Attention heads per level.
            kernel_size: Neighbourhood size (odd) in every level.
            dilations: Per level, per block dilation (DiNAT); None = 1 everywhere (NAT).
            mlp_ratio: MLP hidden width / dim.
            qkv_bias: Bias in the qkv projections.
            qk_scale: Attention logit scale override (head_dim ** -0.5 when None).
            layer_scale: Initial layer-scale value; None disables layer scale.
            drop_rate: Dropout after the stem and before the classifier.
            proj_drop_rate: Dropout after the attention projection and in the MLP (the official `drop_rate`).
            drop_path_rate: Stochastic depth rate, increased linearly over all blocks.
            norm_layer: Norm layer (channels-last).
            stem_layer: Stride-4 stem `(in_chans, embed_dim, norm_layer)`, NCHW in, NHWC out.
            downsample_layer: Level-closing downsampler `(dim, norm_layer)` to 2 * dim channels, NHWC.
            output_norms: Add one LayerNorm per level output for dense tasks (`out_norms`; the last level uses `norm`).
            attn_backend: Force a neighborhood-attention backend (None: the op's dispatcher chooses).
        """
        super().__init__()
        num_levels = len(depths)
        if len(num_heads) != num_levels:
            raise ValueError(f'num_heads={tuple(num_heads)} must have one entry per level of depths={tuple(depths)}.')
        dilations = _check_dilations(dilations, depths)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_levels = num_levels  # before any pruning: the last level's output norm is `norm`
        self.kernel_size = kernel_size
        self.dilations = dilations
        self.output_fmt = 'NHWC'
        dims = [int(embed_dim * 2 ** i) for i in range(num_levels)]
        self.num_features = self.head_hidden_size = dims[-1]

        self.patch_embed = stem_layer(in_chans=in_chans, embed_dim=embed_dim, norm_layer=norm_layer)
        self.pos_drop = nn.Dropout(p=drop_rate)

        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu').split(list(depths))]
        self.levels = nn.ModuleList()
        self.feature_info = []
        for i in range(num_levels):
            self.levels.append(NATStage(
                dim=dims[i],
                depth=depths[i],
                num_heads=num_heads[i],
                kernel_size=kernel_size,
                dilations=dilations[i],
                downsample_layer=downsample_layer if i < num_levels - 1 else None,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                proj_drop=proj_drop_rate,
                drop_path=dpr[i],
                layer_scale=layer_scale,
                norm_layer=norm_layer,
                attn_backend=attn_backend,
            ))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f'levels.{i}.blocks'))

        self.norm = norm_layer(self.num_features)
        self.out_norms = nn.ModuleList([norm_layer(d) for d in dims[:-1]]) if output_norms else None
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt=self.output_fmt)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        # The official code exempts `rpb` (keyword) and its dense-task configs also the norms; norm weights, biases and
        # layer scales are 1-D and exempted by timm's optimizer factory anyway, so only the bias tables are listed.
        return {n for n, _ in self.named_parameters() if n.endswith('.rpb')}

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_drop(self.patch_embed(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for level in self.levels:
            x = level(x)
        return self.norm(x)


def _describe_checkpoint(state_dict: Dict[str, torch.Tensor], variants: Dict[str, Dict[str, Any]]) -> str:
    """What architecture an official-layout state dict looks like, for error messages."""
    swin_layout = any(k.startswith('layers.') for k in state_dict)
    depths: Dict[int, int] = {}
    for k in state_dict:
        m = re.match(r'(?:levels|layers)\.(\d+)\.blocks\.(\d+)\.', k)
        if m:
            depths[int(m[1])] = max(depths.get(int(m[1]), 0), int(m[2]) + 1)
    stem = state_dict.get('patch_embed.proj.1.weight', state_dict.get('patch_embed.proj.weight'))
    rpb = next((v for k, v in state_dict.items() if k.endswith('attn.rpb')), None)
    desc = dict(
        embed_dim=None if stem is None else stem.shape[0],
        depths=tuple(depths[i] for i in sorted(depths)),
        kernel_size=None if rpb is None else (rpb.shape[-1] + 1) // 2,
        layer_scale=any(k.endswith('gamma1') for k in state_dict),
    )
    guesses = [
        name for name, a in variants.items()
        if (a['embed_dim'], tuple(a['depths']), a.get('kernel_size', 7), a.get('layer_scale') is not None)
        == tuple(desc.values())]
    layout = 'DiNAT_s (PatchEmbed, PatchMerging, `layers.*`)' if swin_layout else 'NAT/DiNAT (ConvTokenizer)'
    return f'a {layout} checkpoint with {desc}, like {guesses or "no variant of this family"}'


def convert_official_checkpoint(
        state_dict: Dict[str, Any],
        model: NAT,
        stage_prefix: str = 'levels.',
        variants: Optional[Dict[str, Dict[str, Any]]] = None,
) -> Dict[str, torch.Tensor]:
    """Map an official NAT/DiNAT/DiNAT_s state dict onto `model`, or raise a ValueError saying what does not fit.

    Unwraps `model`/`state_dict`, strips `backbone.` and drops the neck/heads of dense-task checkpoints, renames the
    stages (`stage_prefix` -> `levels.`), the classifier (`head` -> `head.fc`) and the per-output norms (`norm{i}` ->
    `out_norms.{i}`, the last level's -> `norm`). Classification checkpoints carry no per-output norms: in a model with
    `output_norms=True` all of them, `norm` included, start as identity LayerNorms, as the official dense-task code gets
    them (its non-strict load ignores the classifier's `norm`).
    """
    for key in ('model', 'state_dict'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    num_levels = len(model.levels)
    out = {}
    for k, v in state_dict.items():
        m = re.match(r'norm(\d+)\.(.*)', k)
        if m:
            i = int(m[1])
            k = f'norm.{m[2]}' if i == num_levels - 1 else f'out_norms.{i}.{m[2]}'
        elif k.startswith('head.') and not k.startswith('head.fc.'):
            k = 'head.fc.' + k[len('head.'):]
        elif k.startswith(stage_prefix):
            k = 'levels.' + k[len(stage_prefix):]
        out[k] = v

    target = model.state_dict()
    if any(k.startswith('out_norms.') for k in out) and model.out_norms is None:
        raise ValueError(
            'This checkpoint is a dense-task backbone with per-output norms (norm0.., mmdet/mmseg); create the model '
            'with output_norms=True (features_only=True does this) to load them.')
    if 'head.fc.weight' not in target:
        out = {k: v for k, v in out.items() if not k.startswith('head.fc.')}
    elif 'head.fc.weight' not in out:
        raise ValueError(
            'This checkpoint has no classifier (a dense-task backbone?); create the model with num_classes=0 or '
            'features_only=True to load it.')
    if model.out_norms is not None and not any(k.startswith('out_norms.') for k in out):
        # A classification checkpoint into a dense-task model: every output norm starts fresh, the last level's too
        # (the official `norm3` ignores the classifier's final `norm`, which its non-strict load drops).
        for k, v in target.items():
            if k.startswith(('out_norms.', 'norm.')):
                out[k] = torch.ones_like(v) if k.endswith('weight') else torch.zeros_like(v)

    # Exempt from the checks: the classifier (timm drops it afterwards when num_classes differs from the checkpoint's)
    # and the first conv's shape (timm adapts it afterwards when in_chans differs).
    first_conv = (getattr(model, 'pretrained_cfg', None) or {}).get('first_conv', 'patch_embed.proj.0') + '.weight'
    check_checkpoint_keys(
        out, target, model_description(model, type(model).__name__), reshapable=(first_conv,),
        norms_arg='output_norms', variants=f'It looks like {_describe_checkpoint(state_dict, variants or {})}.')
    return out


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: NAT) -> Dict[str, torch.Tensor]:
    """Convert an official NAT/DiNAT checkpoint (classification, or the backbone of an mmdet/mmseg one)."""
    return convert_official_checkpoint(state_dict, model, 'levels.', _VARIANT_ARGS)


def build_nat(
        model_cls: Type[NAT],
        variant: str,
        pretrained: bool,
        filter_fn: Callable[[Dict[str, Any], NAT], Dict[str, torch.Tensor]],
        variant_args: Dict[str, Any],
        **kwargs,
) -> NAT:
    """`build_model_with_cfg` of a registered variant (its `variant_args` overridden by the caller's kwargs) with the
    NAT-family feature defaults (shared with DiNAT_s)."""
    if 'depths' in kwargs and 'dilations' not in kwargs and 'dilations' in variant_args:
        raise ValueError(
            f'{variant} has per-block dilations for depths={variant_args["depths"]}; when overriding depths, pass '
            f'dilations= too (one list per level, one value per block).')
    kwargs = dict(variant_args, **kwargs)
    out_indices = kwargs.pop('out_indices', tuple(range(len(kwargs['depths']))))
    feature_cfg = dict(out_indices=out_indices, feature_cls=kwargs.pop('feature_cls', 'getter'))
    if feature_cfg['feature_cls'] == 'fx':
        feature_cfg['output_fmt'] = 'NHWC'  # the graph returns the levels' own (channels-last) maps
    if kwargs.get('features_only', False) and feature_cfg['feature_cls'] == 'getter':
        # dense-task backbones: NCHW maps with one LayerNorm per output, as the official mmdet/mmseg backbones
        kwargs.setdefault('output_norms', True)
        feature_cfg['norm'] = True
    return build_with_official_layouts(model_cls, variant, pretrained, filter_fn, feature_cfg=feature_cfg, **kwargs)


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    # The official models had no default_cfg, so timm 0.5's data defaults applied: bicubic, crop 0.875, ImageNet stats.
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': .875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj.0', 'classifier': 'head.fc', 'license': 'mit',
        'origin_url': 'https://github.com/SHI-Labs/Neighborhood-Attention-Transformer', **kwargs,
    }


_NAT_URL = 'https://shi-labs.com/projects/nat/checkpoints/CLS/'
_DINAT_URL = 'https://shi-labs.com/projects/dinat/checkpoints/'

default_cfgs = generate_default_cfgs({
    'nat_mini.shi_in1k': _cfg(url=_NAT_URL + 'nat_mini.pth', paper_ids='arXiv:2204.07143'),
    'nat_tiny.shi_in1k': _cfg(url=_NAT_URL + 'nat_tiny.pth', paper_ids='arXiv:2204.07143'),
    'nat_small.shi_in1k': _cfg(url=_NAT_URL + 'nat_small.pth', paper_ids='arXiv:2204.07143'),
    'nat_base.shi_in1k': _cfg(url=_NAT_URL + 'nat_base.pth', paper_ids='arXiv:2204.07143'),
    'dinat_mini.shi_in1k': _cfg(url=_DINAT_URL + 'imagenet1k/dinat_mini_in1k_224.pth', paper_ids='arXiv:2209.15001'),
    'dinat_tiny.shi_in1k': _cfg(url=_DINAT_URL + 'imagenet1k/dinat_tiny_in1k_224.pth', paper_ids='arXiv:2209.15001'),
    'dinat_small.shi_in1k': _cfg(
        url=_DINAT_URL + 'imagenet1k/dinat_small_in1k_224.pth', paper_ids='arXiv:2209.15001'),
    'dinat_base.shi_in1k': _cfg(url=_DINAT_URL + 'imagenet1k/dinat_base_in1k_224.pth', paper_ids='arXiv:2209.15001'),
    'dinat_large.shi_in22k_ft_in1k': _cfg(
        url=_DINAT_URL + 'imagenet1k/dinat_large_in22k_in1k_224.pth', paper_ids='arXiv:2209.15001'),
    'dinat_large_384.shi_in22k_ft_in1k': _cfg(
        url=_DINAT_URL + 'imagenet1k/dinat_large_in22k_in1k_384.pth', paper_ids='arXiv:2209.15001',
        input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
    'dinat_large_384_11x11.shi_in22k_ft_in1k': _cfg(
        url=_DINAT_URL + 'imagenet1k/dinat_large_in22k_in1k_384_11x11.pth', paper_ids='arXiv:2209.15001',
        input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
    'dinat_large_21k.shi_in22k': _cfg(
        url=_DINAT_URL + 'imagenet22k/dinat_large_in22k_224.pth', paper_ids='arXiv:2209.15001', num_classes=21841),
    'dinat_large_21k_11x11.shi_in22k': _cfg(
        url=_DINAT_URL + 'imagenet22k/dinat_large_in22k_224_11x11interp.pth', paper_ids='arXiv:2209.15001',
        num_classes=21841,
        notes=('the 224 px 7x7 22k weights with the rpb tables bicubically resized to 11x11, not trained at 11x11',)),
})

_DILATIONS_224 = ([1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5)
_DILATIONS_224_MINI = ([1, 8, 1], [1, 4, 1, 4], [1, 2] * 3, [1] * 5)
_DILATIONS_384 = ([1, 13, 1], [1, 6, 1, 6], [1, 3] * 9, [1] * 5)

# Architecture arguments of every entrypoint (the official ones, including drop_path_rate).
_VARIANT_ARGS: Dict[str, Dict[str, Any]] = {
    'nat_mini': dict(depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3, drop_path_rate=0.2),
    'nat_tiny': dict(depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3, drop_path_rate=0.2),
    'nat_small': dict(
        depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=2, drop_path_rate=0.3,
        layer_scale=1e-5),
    'nat_base': dict(
        depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), embed_dim=128, mlp_ratio=2, drop_path_rate=0.5,
        layer_scale=1e-5),
    'dinat_mini': dict(
        depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3, drop_path_rate=0.2,
        dilations=_DILATIONS_224_MINI),
    'dinat_tiny': dict(
        depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3, drop_path_rate=0.2,
        dilations=_DILATIONS_224),
    # no layer scale in dinat_small, unlike nat_small (official dinat.py)
    'dinat_small': dict(
        depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=2, drop_path_rate=0.3,
        dilations=_DILATIONS_224),
    'dinat_base': dict(
        depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), embed_dim=128, mlp_ratio=2, drop_path_rate=0.5,
        layer_scale=1e-5, dilations=_DILATIONS_224),
    'dinat_large': dict(
        depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=2, drop_path_rate=0.35,
        dilations=_DILATIONS_224),
    'dinat_large_384': dict(
        depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=2, drop_path_rate=0.35,
        dilations=_DILATIONS_384),
    # 11x11 kernel with the 224 dilations, at 384 px (as in the official dinat.py)
    'dinat_large_384_11x11': dict(
        depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=2, drop_path_rate=0.35,
        kernel_size=11, dilations=_DILATIONS_224),
    'dinat_large_21k': dict(
        depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=2, drop_path_rate=0.2,
        dilations=_DILATIONS_224),
    'dinat_large_21k_11x11': dict(
        depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=2, drop_path_rate=0.2,
        kernel_size=11, dilations=_DILATIONS_224),
}


def _create_variant(variant: str, pretrained: bool, kwargs: Dict[str, Any]) -> NAT:
    return build_nat(NAT, variant, pretrained, checkpoint_filter_fn, _VARIANT_ARGS[variant], **kwargs)


@register_model
def nat_mini(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Mini @ 224, ImageNet-1k."""
    return _create_variant('nat_mini', pretrained, kwargs)


@register_model
def nat_tiny(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Tiny @ 224, ImageNet-1k."""
    return _create_variant('nat_tiny', pretrained, kwargs)


@register_model
def nat_small(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Small @ 224, ImageNet-1k (layer scale 1e-5)."""
    return _create_variant('nat_small', pretrained, kwargs)


@register_model
def nat_base(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Base @ 224, ImageNet-1k (layer scale 1e-5)."""
    return _create_variant('nat_base', pretrained, kwargs)


@register_model
def dinat_mini(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Mini @ 224, ImageNet-1k."""
    return _create_variant('dinat_mini', pretrained, kwargs)


@register_model
def dinat_tiny(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Tiny @ 224, ImageNet-1k."""
    return _create_variant('dinat_tiny', pretrained, kwargs)


@register_model
def dinat_small(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Small @ 224, ImageNet-1k (no layer scale)."""
    return _create_variant('dinat_small', pretrained, kwargs)


@register_model
def dinat_base(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Base @ 224, ImageNet-1k (layer scale 1e-5)."""
    return _create_variant('dinat_base', pretrained, kwargs)


@register_model
def dinat_large(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large @ 224, ImageNet-22k pretrained, ImageNet-1k fine-tuned."""
    return _create_variant('dinat_large', pretrained, kwargs)


@register_model
def dinat_large_384(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large @ 384 (7x7, 384 dilations), ImageNet-22k pretrained, ImageNet-1k fine-tuned."""
    return _create_variant('dinat_large_384', pretrained, kwargs)


@register_model
def dinat_large_384_11x11(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large @ 384 (11x11, 224 dilations), ImageNet-22k pretrained, ImageNet-1k fine-tuned."""
    return _create_variant('dinat_large_384_11x11', pretrained, kwargs)


@register_model
def dinat_large_21k(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large @ 224, ImageNet-22k (21841 classes)."""
    return _create_variant('dinat_large_21k', pretrained, kwargs)


@register_model
def dinat_large_21k_11x11(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large @ 224 with 11x11 kernels (rpb resized from the 7x7 weights), ImageNet-22k (21841 classes)."""
    return _create_variant('dinat_large_21k_11x11', pretrained, kwargs)
