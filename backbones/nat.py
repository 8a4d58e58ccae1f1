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
from typing import Any, Callable, Dict, List, Optional, Sequence, Type

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model

from hiervit.backbones._pretrained import check_checkpoint_keys, model_description
from hiervit.backbones.layers.neighborhood import NeighborhoodAttention2d
from hiervit.backbones.layers.skeleton import HierarchicalTransformer, MixerFactory, build_layout_model, level_mixers
from hiervit.backbones.layers.shape import check_image_input

__all__ = ['NAT', 'na_mixers']

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


def na_mixers(
        kernel_size: int,
        dilations: Sequence[Sequence[int]],
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        proj_drop: float = 0.,
        backend: Optional[str] = None,
) -> List[MixerFactory]:
    """The layouts' per-level mixer factories of (D)NA: `NeighborhoodAttention2d` with each block's dilation (NAT,
    DiNAT and DiNAT_s)."""

    def mixer(level: int, dim: int, heads: int, block: int) -> nn.Module:
        return NeighborhoodAttention2d(
            dim,
            num_heads=heads,
            kernel_size=kernel_size,
            dilation=dilations[level][block],
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            proj_drop=proj_drop,
            backend=backend,
        )
    return level_mixers(mixer, len(dilations))


class NAT(HierarchicalTransformer):
    """Neighborhood Attention Transformer; with `dilations` it is DiNAT (the official `DiNAT` class is NAT itself).

    The layouts' skeleton (`hiervit.backbones.layers.skeleton.HierarchicalTransformer`, which has the official NAT
    block, level and key layout) with NAT's overlapping conv stem and downsampler and (D)NA as the token mixer; the
    timm contract (`forward_intermediates`, pruning, `group_matcher`, ...) comes from `HierarchicalContract`.
    """

    def __init__(
            self,
            embed_dim: int = 64,
            depths: Sequence[int] = (3, 4, 6, 5),
            num_heads: Sequence[int] = (2, 4, 8, 16),
            kernel_size: int = 7,
            dilations: Optional[Sequence[Sequence[int]]] = None,
            mlp_ratio: float = 3.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.2,
            stem_layer: Callable[..., nn.Module] = ConvTokenizer,
            downsample_layer: Callable[..., nn.Module] = ConvDownsampler,
            attn_backend: Optional[str] = None,
            **kwargs,
    ):
        """
        Args:
            embed_dim: Channels of the first level; doubled at every level.
            depths: Blocks per level.
            num_heads: Attention heads per level.
            kernel_size: Neighbourhood size (odd) in every level.
            dilations: Per level, per block dilation (DiNAT); None = 1 everywhere (NAT).
            mlp_ratio: MLP hidden width / dim.
            qkv_bias: Bias in the qkv projections.
            qk_scale: Attention logit scale override (head_dim ** -0.5 when None).
            proj_drop_rate: Dropout after the attention projection and in the MLP (the official `drop_rate`).
            drop_path_rate: Stochastic depth rate, increased linearly over all blocks.
            stem_layer: Stride-4 stem `(in_chans, embed_dim, norm_layer)`, NCHW in, NHWC out.
            downsample_layer: Level-closing downsampler `(dim, norm_layer)` to 2 * dim channels, NHWC.
            attn_backend: Force a neighborhood-attention backend (None: the op's dispatcher chooses).
            **kwargs: Any other `HierarchicalTransformer` argument (`in_chans`, `num_classes`, `layer_scale`,
                `output_norms`, ...).
        """
        dilations = _check_dilations(dilations, depths)
        super().__init__(
            na_mixers(kernel_size, dilations, qkv_bias, qk_scale, proj_drop_rate, attn_backend),
            stem_layer=stem_layer, downsample_layer=downsample_layer, embed_dim=embed_dim, depths=depths,
            num_heads=num_heads, mlp_ratio=mlp_ratio, proj_drop_rate=proj_drop_rate, drop_path_rate=drop_path_rate,
            **kwargs)
        self.kernel_size = kernel_size
        self.dilations = dilations


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
    """`build_layout_model` (the layouts' feature defaults: NCHW dense-task maps with per-output norms) after checking
    that overridden depths come with their dilations (NAT, DiNAT and DiNAT_s)."""
    if 'depths' in kwargs and 'dilations' not in kwargs and 'dilations' in variant_args:
        raise ValueError(
            f'{variant} has per-block dilations for depths={variant_args["depths"]}; when overriding depths, pass '
            f'dilations= too (one list per level, one value per block).')
    return build_layout_model(model_cls, variant, pretrained, filter_fn, variant_args, **kwargs)


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
