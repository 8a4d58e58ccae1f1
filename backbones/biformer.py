""" BiFormer: Vision Transformer with Bi-Level Routing Attention

A timm-compatible implementation of:
    BiFormer: Vision Transformer with Bi-Level Routing Attention (CVPR 2023)
    - https://arxiv.org/abs/2303.08810

Architecture and released weights from https://github.com/rayleizhu/BiFormer (models/biformer.py,
ops/bra_legacy.py, models/_common.py). Original code: Copyright (c) Meta Platforms, Inc. and affiliates,
released under the MIT license.

The model computes what the released ("legacy") BiFormer computes, so the released classification weights and the
backbone part of the released mmdet/mmseg weights load through `checkpoint_filter_fn`:
  * bi-level routing attention (BRA) in stages 1-3: region means of q/k (detached) route every query region to the
    top-k key regions, shared across heads; token attention runs through `hiervit.kernels.routed`;
    the softmax scale is qk_dim ** -0.5 over the full channel width (not head_dim), as the checkpoints expect;
  * sizes not divisible by `n_win` are zero-padded bottom/right *before* the qkv projection and cropped after, as the
    released `auto_pad=True` does (padded tokens take part in routing and attention, unmasked);
  * stage 4 (`topk=-2`) is global attention with 8 heads whatever the stage width, LePE on the block input.
"""
from typing import Any, Dict, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    ClassifierHead, ConvNormAct, DropPath, LayerNorm2d, Mlp, calculate_drop_path_rates, trunc_normal_,
)
from timm.models import generate_default_cfgs, register_model

from hiervit.backbones._pretrained import build_with_official_layouts, check_checkpoint_keys, model_description
from hiervit.backbones.layers.contract import ContractStage, HierarchicalContract
from hiervit.backbones.layers.shape import check_image_input, crop_nhwc, pad_nchw, pad_nhwc
from hiervit.kernels.routed import routed_attention_op

__all__ = ['BiFormer']

# FX leaves for plain torch.fx.symbolic_trace (they decide on sizes); timm's tracer knows them already.
torch.fx.wrap('check_image_input')
torch.fx.wrap('crop_nhwc')
torch.fx.wrap('pad_nchw')
torch.fx.wrap('pad_nhwc')


class BiLevelRoutingAttention(nn.Module):
    """Bi-level routing attention over an `n_win x n_win` grid of regions (released legacy semantics).

    Each query region attends jointly to the tokens of the `topk` key regions whose (detached) mean key best matches
    its mean query; a 5x5 depthwise conv of V over the whole map (LePE) is added before the output projection.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            n_win: int = 7,
            topk: int = 4,
            side_dwconv: int = 5,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if dim % num_heads:
            raise ValueError(f'dim={dim} must be divisible by num_heads={num_heads}.')
        if not 0 < topk <= n_win * n_win:
            raise ValueError(f'topk={topk} must be in [1, n_win ** 2 = {n_win * n_win}]; lower topks or raise n_win.')
        self.dim = dim
        self.num_heads = num_heads
        self.n_win = n_win
        self.topk = topk
        # The released models scale by the full qk width (qk_dim == dim), not by the head dim.
        self.scale = dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, **dd)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim, **dd)
        self.proj = nn.Linear(dim, dim, **dd)

    def _to_regions(self, t: torch.Tensor, rh: int, rw: int) -> torch.Tensor:
        # [B, Hp, Wp, C] -> [B, heads, n_win * n_win, rh * rw, C // heads], regions row-major, heads channel-major
        B, C = t.shape[0], t.shape[-1]
        n, h = self.n_win, self.num_heads
        t = t.reshape(B, n, rh, n, rw, h, C // h).permute(0, 5, 1, 3, 2, 4, 6)
        return t.reshape(B, h, n * n, rh * rw, C // h)

    def route(self, q: torch.Tensor, k: torch.Tensor, rh: int, rw: int) -> torch.Tensor:
        """Top-k key regions per query region, [B, n_win**2, topk] int64; no gradient flows through routing."""
        B, C = q.shape[0], q.shape[-1]
        n = self.n_win
        # region descriptors: mean of each region's tokens, [B, n*n, C]
        q_r = q.detach().reshape(B, n, rh, n, rw, C).mean((2, 4)).reshape(B, n * n, C)
        k_r = k.detach().reshape(B, n, rh, n, rw, C).mean((2, 4)).reshape(B, n * n, C)
        logits = (q_r * self.scale) @ k_r.transpose(-2, -1)  # [B, n*n (query region), n*n (key region)]
        return logits.topk(self.topk, dim=-1).indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, W, C] (NHWC) -> [B, H, W, C]."""
        B, H, W, C = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        n = self.n_win
        # Zero-pad before the projection (released `auto_pad`): padded tokens carry the qkv bias.
        x = pad_nhwc(x, multiple=n)
        rh, rw = x.shape[1] // n, x.shape[2] // n

        qkv = self.qkv(x).split([C, C, C], dim=-1)  # each [B, Hp, Wp, C]
        q, k, v = qkv[0], qkv[1], qkv[2]
        idx = self.route(q, k, rh, rw)
        out = routed_attention_op(
            self._to_regions(q, rh, rw), self._to_regions(k, rh, rw), self._to_regions(v, rh, rw), idx, self.scale,
        )  # [B, heads, n*n, rh*rw, C // heads]
        out = out.reshape(B, self.num_heads, n, n, rh, rw, C // self.num_heads)
        out = out.permute(0, 2, 4, 3, 5, 1, 6).reshape(B, n * rh, n * rw, C)
        out = out + self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj(crop_nhwc(out, H, W))


class AttentionLePE(nn.Module):
    """Global multi-head attention with a depthwise-conv LePE of the *input* added before the projection."""

    def __init__(self, dim: int, num_heads: int = 8, side_dwconv: int = 5, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if dim % num_heads:
            raise ValueError(f'dim={dim} must be divisible by num_heads={num_heads}.')
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False, **dd)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim, **dd)
        self.proj = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, W, C] (NHWC) -> [B, H, W, C]."""
        B, H, W, C = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        # [B, H*W, 3, heads, hd] -> 3 x [B, heads, H*W, hd]
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # scale head_dim ** -0.5, as released
        out = out.transpose(1, 2).reshape(B, H, W, C)
        out = out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj(out)


class BiFormerBlock(nn.Module):
    """3x3 depthwise conv position encoding (none in BiFormer-STL), then pre-norm attention and MLP residuals. NCHW in
    and out."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            topk: int,
            n_win: int = 7,
            mlp_ratio: float = 3.,
            side_dwconv: int = 5,
            global_attn_heads: int = 8,
            pos_embed: bool = True,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd) if pos_embed else None
        # eps 1e-6: the released code notes it avoids attention collapse
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **dd)
        if topk > 0:
            self.attn = BiLevelRoutingAttention(dim, num_heads, n_win=n_win, topk=topk, side_dwconv=side_dwconv, **dd)
        elif topk == -2:
            self.attn = AttentionLePE(dim, num_heads=global_attn_heads, side_dwconv=side_dwconv, **dd)
        else:
            raise ValueError(f'topk={topk} is not supported: use a positive region count, or -2 for global attention.')
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None:
            x = x + self.pos_embed(x)
        x = x.permute(0, 2, 3, 1)  # NCHW -> NHWC
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.permute(0, 3, 1, 2)  # NHWC -> NCHW


class NormConvDownsample(nn.Module):
    """BiFormer-STL patch merging: BatchNorm, zero-pad bottom/right to even, 2x2 stride-2 conv. NCHW in and out.

    The release has no padding (it rejects sizes its regions do not divide); with even maps, as at 224 px, this is its
    computation.
    """

    def __init__(self, in_dim: int, dim: int, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm = nn.BatchNorm2d(in_dim, **dd)
        self.conv = nn.Conv2d(in_dim, dim, 2, stride=2, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(pad_nchw(self.norm(x), 2))


class BiFormerStage(ContractStage):
    """Optional downsample (placed before the blocks, as released), then the blocks.

    The downsample is Conv3x3-s2 + BN (`layout='biformer'`) or BN + Conv2x2-s2 (`layout='stl'`).
    """

    def __init__(
            self,
            in_dim: int,
            dim: int,
            depth: int,
            num_heads: int,
            topk: int,
            downsample: bool = True,
            layout: str = 'biformer',
            n_win: int = 7,
            mlp_ratio: float = 3.,
            side_dwconv: int = 5,
            global_attn_heads: int = 8,
            pos_embed: bool = True,
            drop_path: Union[float, Sequence[float]] = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__(downsample_first=True)
        dd = {'device': device, 'dtype': dtype}
        if downsample and layout == 'stl':
            self.downsample = NormConvDownsample(in_dim, dim, **dd)
        elif downsample:
            self.downsample = ConvNormAct(in_dim, dim, 3, stride=2, padding=1, bias=True, apply_act=False, **dd)
        else:
            self.downsample = nn.Identity()
        dpr = drop_path if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.Sequential(*[
            BiFormerBlock(
                dim,
                num_heads,
                topk,
                n_win=n_win,
                mlp_ratio=mlp_ratio,
                side_dwconv=side_dwconv,
                global_attn_heads=global_attn_heads,
                pos_embed=pos_embed,
                drop_path=dpr[i],
                **dd,
            )
            for i in range(depth)
        ])


class BiFormer(HierarchicalContract, nn.Module):
    """BiFormer: conv stem, four stages of BRA (global attention in the last), BatchNorm, classifier head.

    `layout='stl'` is the release's BiFormer-STL (Swin-Tiny layout, `models/biformer_stl.py`): a 4x4 stride-4 conv +
    BN stem, BN + 2x2 stride-2 conv downsampling, and (with `pos_embed=False`) no conv position encoding.

    Feature maps are NCHW with strides 4/8/16/32. `out_norms=True` adds the per-stage LayerNorm2d that the released
    mmdet/mmseg backbone (`BiFormer_mm.extra_norms`) applies to every dense output; `forward_intermediates(norm=True)`
    then applies them to each intermediate. Without them, `norm=True` applies the final BatchNorm to the last stage
    output only, as in timm.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Tuple[int, ...] = (2, 2, 8, 2),
            embed_dims: Tuple[int, ...] = (64, 128, 256, 512),
            head_dim: int = 32,
            topks: Tuple[int, ...] = (1, 4, 16, -2),
            mlp_ratios: Union[float, Tuple[float, ...]] = 3.,
            n_win: int = 7,
            side_dwconv: int = 5,
            global_attn_heads: int = 8,
            layout: str = 'biformer',
            pos_embed: bool = True,
            out_norms: bool = False,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chans: Input image channels.
            num_classes: Classifier classes (0 for no classifier).
            global_pool: Head pooling type.
            depths: Blocks per stage.
            embed_dims: Channels per stage.
            head_dim: Channels per head in the BRA stages (heads = dim // head_dim).
            topks: Routed key regions per stage; -2 selects global attention (released stage 4).
            mlp_ratios: MLP expansion per stage (or one value for all).
            n_win: Regions per side for BRA (7 classification, 16 detection, 8 segmentation in the release).
            side_dwconv: LePE depthwise kernel size.
            global_attn_heads: Heads of the global-attention stages (fixed at 8 in the release).
            layout: 'biformer' (Conv3x3-BN-GELU-Conv3x3-BN stem, Conv3x3-s2 + BN downsampling) or 'stl' (Conv4x4-s4 +
                BN stem, BN + Conv2x2-s2 downsampling; inputs zero-padded bottom/right to multiples of 4 and 2).
            pos_embed: Add the 3x3 depthwise conv position encoding before every block.
            out_norms: Add the dense-task per-stage LayerNorm2d output norms.
            drop_rate: Head dropout rate.
            drop_path_rate: Stochastic depth rate, linear over all blocks.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        num_stages = len(depths)
        if not (len(embed_dims) == len(topks) == num_stages):
            raise ValueError(
                f'depths, embed_dims and topks need one entry per stage, got {len(depths)}, {len(embed_dims)}, '
                f'{len(topks)}.')
        if layout not in ('biformer', 'stl'):
            raise ValueError(f"layout={layout!r} is not supported; use 'biformer' or 'stl' (BiFormer-STL).")
        if isinstance(mlp_ratios, (int, float)):
            mlp_ratios = (mlp_ratios,) * num_stages
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.n_win = n_win
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.drop_rate = drop_rate

        self.layout = layout
        if layout == 'stl':
            self.stem_multiple = 4  # the 4x4 stride-4 conv sees every pixel
            self.stem = nn.Sequential(
                ConvNormAct(in_chans, embed_dims[0], 4, stride=4, padding=0, bias=True, apply_act=False, **dd))
        else:
            self.stem_multiple = 1
            self.stem = nn.Sequential(
                ConvNormAct(in_chans, embed_dims[0] // 2, 3, stride=2, padding=1, bias=True, act_layer=nn.GELU, **dd),
                ConvNormAct(
                    embed_dims[0] // 2, embed_dims[0], 3, stride=2, padding=1, bias=True, apply_act=False, **dd),
            )
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages = []
        self.feature_info = []
        for i in range(num_stages):
            dim = embed_dims[i]
            stages.append(BiFormerStage(
                embed_dims[i - 1] if i > 0 else dim,
                dim,
                depths[i],
                num_heads=dim // head_dim,
                topk=topks[i],
                downsample=i > 0,
                layout=layout,
                n_win=n_win,
                mlp_ratio=mlp_ratios[i],
                side_dwconv=side_dwconv,
                global_attn_heads=global_attn_heads,
                pos_embed=pos_embed,
                drop_path=dpr[i],
                **dd,
            ))
            self.feature_info += [dict(num_chs=dim, reduction=2 ** (i + 2), module=f'stages.{i}')]
        self.stages = nn.Sequential(*stages)
        self.out_norms = nn.ModuleList([LayerNorm2d(d, **dd) for d in embed_dims]) if out_norms else None
        self.norm = nn.BatchNorm2d(self.num_features, **dd)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Released init: truncated-normal Linear weights, zero Linear bias; convs keep PyTorch defaults.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        # The release excludes only names it does not have ('pos_embed', 'cls_token'): every weight matrix and conv
        # kernel decays; timm's optimizer factory already exempts 1-d parameters (norms, biases).
        return set()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_input(x, self.in_chans, 'BiFormer')
        return self.stem(pad_nchw(x, self.stem_multiple))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.forward_stem(x))
        return self.norm(x)


def _convert_key(k: str, stl: bool) -> str:
    """Map one released key (legacy BiFormer / BiFormer_mm backbone, or BiFormer-STL if `stl`) to this module's
    names."""
    parts = k.split('.')
    if parts[0] == 'downsample_layers' and stl:
        # released STL: stem Conv4x4, BN; downsampling BN, Conv2x2
        i, j, rest = int(parts[1]), int(parts[2]), parts[3:]
        if i == 0:
            return '.'.join(['stem', '0', {0: 'conv', 1: 'bn'}[j]] + rest)
        return '.'.join(['stages', str(i), 'downsample', {0: 'norm', 1: 'conv'}[j]] + rest)
    if parts[0] == 'stages' and stl:
        # released STL: stages.{i}.blocks.{j}.*, MLP Linear, GELU, Linear
        rest = '.'.join(parts[4:])
        rest = rest.replace('attn.qkv.qkv.', 'attn.qkv.').replace('attn.wo.', 'attn.proj.')
        rest = rest.replace('mlp.0.', 'mlp.fc1.').replace('mlp.2.', 'mlp.fc2.')
        return f'stages.{parts[1]}.blocks.{parts[3]}.{rest}'
    if parts[0] == 'downsample_layers':
        i, j, rest = int(parts[1]), int(parts[2]), parts[3:]
        if i == 0:
            # released stem: Conv, BN, GELU, Conv, BN
            conv_idx, sub = {0: (0, 'conv'), 1: (0, 'bn'), 3: (1, 'conv'), 4: (1, 'bn')}[j]
            return '.'.join(['stem', str(conv_idx), sub] + rest)
        return '.'.join(['stages', str(i), 'downsample', {0: 'conv', 1: 'bn'}[j]] + rest)
    if parts[0] == 'stages':
        rest = '.'.join(parts[3:])
        rest = rest.replace('attn.qkv.qkv.', 'attn.qkv.').replace('attn.wo.', 'attn.proj.')
        rest = rest.replace('mlp.0.', 'mlp.fc1.').replace('mlp.3.', 'mlp.fc2.')
        return f'stages.{parts[1]}.blocks.{parts[2]}.{rest}'
    if parts[0] == 'extra_norms':
        return '.'.join(['out_norms'] + parts[1:])
    if parts[0] == 'head':
        return '.'.join(['head', 'fc'] + parts[1:])
    return k


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: BiFormer) -> Dict[str, torch.Tensor]:
    """Convert released BiFormer weights to this model's names and check them against `model`.

    Accepts the classification checkpoints (`{'model': ...}`; BiFormer and BiFormer-STL), the mmdet/mmseg checkpoints
    (`{'state_dict': ...}` with a `backbone.` prefix; neck and heads are dropped, `extra_norms` become `out_norms`) and
    already-converted state dicts. Modules a source does not have keep the model's initial values: the classifier and
    final norm for dense-task checkpoints (the release deletes them there), the output norms for classification
    checkpoints (the release loads those non-strictly). Any other missing, unexpected or mis-shaped key raises a
    ValueError.
    """
    for wrapper in ('model', 'state_dict'):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
    state_dict = dict(state_dict)
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    if any(k.startswith('downsample_layers.') for k in state_dict):
        stl = any(k.startswith('stages.0.blocks.') for k in state_dict)  # BiFormer-STL's BasicLayer keeps `blocks`
        state_dict = {_convert_key(k, stl): v for k, v in state_dict.items()}

    target = model.state_dict()
    for prefix in ('norm.', 'head.', 'out_norms.'):
        if not any(k.startswith(prefix) for k in state_dict):
            state_dict.update({k: v for k, v in target.items() if k.startswith(prefix)})

    # The classifier and the first conv may legitimately differ (num_classes / in_chans adaptation happens later in
    # timm's load_pretrained); everything else must match exactly.
    check_checkpoint_keys(state_dict, target, model_description(model, 'BiFormer'), reshapable=('stem.0.conv.weight',),
                          norms_arg='out_norms')
    return state_dict


def _create_biformer(variant: str, pretrained: bool = False, **kwargs) -> BiFormer:
    out_indices = kwargs.pop('out_indices', tuple(range(len(kwargs.get('depths', (2, 2, 8, 2))))))
    feature_cfg = dict(out_indices=out_indices, feature_cls='getter', **kwargs.pop('feature_cfg', {}))
    # resolve a top-level `feature_cls` here (timm would only apply it after this check): the per-output norms and
    # `norm=True` are for the getter wrapper alone, the FX/hook extractors take neither
    feature_cfg['feature_cls'] = kwargs.pop('feature_cls', feature_cfg['feature_cls'])
    if kwargs.get('features_only', False) and feature_cfg['feature_cls'] == 'getter':
        # dense-task backbones: one LayerNorm2d per output, as the released mmdet/mmseg `BiFormer_mm` (`extra_norms`);
        # the getter wrapper runs forward_intermediates(norm=True)
        kwargs.setdefault('out_norms', True)
        feature_cfg.setdefault('norm', True)
    return build_with_official_layouts(BiFormer, variant, pretrained, checkpoint_filter_fn, feature_cfg=feature_cfg,
                                       **kwargs)


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': 0.875,
        'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0.conv',
        'classifier': 'head.fc',
        'license': 'mit',
        'origin_url': 'https://github.com/rayleizhu/BiFormer',
        'paper_ids': 'arXiv:2303.08810',
        'paper_name': 'BiFormer: Vision Transformer with Bi-Level Routing Attention',
        **kwargs,
    }


# The released OneDrive links all end in `/content`; `(url, file_name)` gives each its own cache file (the names the
# release's own loader uses, `torch.hub.load_state_dict_from_url(..., file_name=f'{model_key}.pth')`).
_URL = 'https://api.onedrive.com/v1.0/shares/s!{}/root/content'

default_cfgs = generate_default_cfgs({
    'biformer_tiny.in1k': _cfg(url=(_URL.format('AkBbczdRlZvChHEOoGkgwgQzEDlM'), 'biformer_tiny_in1k.pth')),
    'biformer_small.in1k': _cfg(url=(_URL.format('AkBbczdRlZvChHDyM-x9KWRBZ832'), 'biformer_small_in1k.pth')),
    'biformer_base.in1k': _cfg(url=(_URL.format('AkBbczdRlZvChHI_XPhoadjaNxtO'), 'biformer_base_in1k.pth')),
    # models/biformer_stl.py `model_urls['biformer_stl_in1k']` (the README row's link); trained by the same main.py
    'biformer_stl.in1k': _cfg(url=(_URL.format('AkBbczdRlZvChSf-m7ujkvx9lIQ1'), 'biformer_stl_in1k.pth')),
})


@register_model
def biformer_tiny(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-T @ 224x224, ImageNet-1k (81.4 top-1, 13.1M params, 2.2 GMACs)."""
    model_args = dict(depths=(2, 2, 8, 2), embed_dims=(64, 128, 256, 512))
    return _create_biformer('biformer_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def biformer_small(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-S @ 224x224, ImageNet-1k (83.8 top-1, 25.5M params, 4.5 GMACs)."""
    model_args = dict(depths=(4, 4, 18, 4), embed_dims=(64, 128, 256, 512))
    return _create_biformer('biformer_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def biformer_base(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-B @ 224x224, ImageNet-1k (84.3 top-1, 56.8M params, 9.8 GMACs)."""
    model_args = dict(depths=(4, 4, 18, 4), embed_dims=(96, 192, 384, 768))
    return _create_biformer('biformer_base', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def biformer_stl(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-STL (Swin-Tiny layout, the paper's ablation model) @ 224x224, ImageNet-1k (82.7 top-1, 28.4M params,
    4.6 GMACs)."""
    model_args = dict(
        depths=(2, 2, 6, 2), embed_dims=(96, 192, 384, 768), mlp_ratios=4., layout='stl', pos_embed=False)
    return _create_biformer('biformer_stl', pretrained=pretrained, **dict(model_args, **kwargs))
