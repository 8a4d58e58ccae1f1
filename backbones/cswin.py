""" CSWin Transformer: cross-shaped window self-attention

A timm implementation of
    - `CSWin Transformer: A General Vision Transformer Backbone with Cross-Shaped Windows` (CVPR 2022)
      - https://arxiv.org/abs/2107.00652

Model structure and weights from https://github.com/microsoft/CSWin-Transformer (models/cswin.py and
segmentation/backbone/cswin_transformer.py; MIT License, Copyright (c) Microsoft Corporation).

CSWin is the CSWin layout (`hiervit.backbones.layers.skeleton.CSWinLayout`: 7x7 stride-4 conv stem with padding 2,
3x3 stride-2 conv merges, pre-norm blocks with mlp_ratio 4) with `CSWinAttention` as the token mixer: one qkv
projection per block, half of the heads attend inside vertical stripes (full height, width sw), the other half
inside horizontal stripes (height sw, full width), the last level attends over the whole map; LePE adds a 3x3
depthwise conv of V computed inside each stripe (zero padding at the stripe borders). Attention runs on
`hiervit.kernels.window`.

Input sizes: the official classification model accepts only square inputs of its build size, whose maps divide by
the stripe widths. Here any size from 1 px and any aspect ratio works: maps that do not divide are padded at the
bottom/right with masked keys (at 224 px, and at 384 px for the 384 variants, nothing is padded and the result is
the official one). Dense-task models (`features_only=True`, or `seg_padding=True`) use the official segmentation
backbone's rule instead: q, k, v zero-padded symmetrically (centred) to the stripe multiple, padding not masked,
which the released UperNet checkpoints were trained with.

State-dict layout: `patch_embed.{proj,norm}` (official `stage1_conv_embed.{0,2}`), `levels.{i}.blocks.{j}` with
`attn.{qkv,proj,get_v.{b}}` (official `stage{i+1}.{j}.{qkv,proj,attns.{b}.get_v}`), `levels.{i}.downsample`
(official `merge{i+1}`), `norm`, `head.fc` (official `head`); the segmentation backbone's `norm1..norm4` become
`out_norms.0..2` and `norm`. `checkpoint_filter_fn` maps all of them.
"""
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function
from timm.models import generate_default_cfgs, register_model

from hiervit.backbones._pretrained import check_checkpoint_keys, model_description
from hiervit.backbones.layers.skeleton import CSWinLayout, MixerFactory, build_layout_model
from hiervit.kernels.window import window_attention_op

__all__ = ['CSWin', 'CSWinAttention']


def _stripe_pad(length: int, window: int, center: bool) -> List[int]:
    """[before, after] padding of an axis to a multiple of the window: all after, or centred (before = p // 2)."""
    p = (window - length % window) % window
    before = p // 2 if center else 0
    return [before, p - before]


@register_notrace_function
def stripe_lepe(v: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], window: List[int],
                pad: List[int]) -> torch.Tensor:
    """LePE: 3x3 depthwise conv (`weight [C, 1, 3, 3]`) of `v [B, H, W, heads, d]` inside each window (zeros beyond
    its borders and in the padding), as `[B, H, W, heads * d]`. An FX leaf: it decides on sizes."""
    B, H, W = v.shape[0], v.shape[1], v.shape[2]
    v = v.flatten(3)
    C = v.shape[-1]
    if pad[0] + pad[1] + pad[2] + pad[3] > 0:
        v = F.pad(v, (0, 0, pad[2], pad[3], pad[0], pad[1]))
    Hp, Wp = v.shape[1], v.shape[2]
    wh, ww = window[0], window[1]
    # [B, Hp, Wp, C] -> [B * windows, C, wh, ww]
    t = v.reshape(B, Hp // wh, wh, Wp // ww, ww, C).permute(0, 1, 3, 5, 2, 4).reshape(-1, C, wh, ww)
    t = F.conv2d(t, weight, bias, padding=1, groups=C)
    t = t.reshape(B, Hp // wh, Wp // ww, C, wh, ww).permute(0, 1, 4, 2, 5, 3).reshape(B, Hp, Wp, C)
    if Hp != H or Wp != W:
        t = t[:, pad[0]:pad[0] + H, pad[2]:pad[2] + W]
    return t


torch.fx.wrap('stripe_lepe')  # a leaf for plain torch.fx.symbolic_trace too (timm's tracer knows it already)


class CSWinAttention(nn.Module):
    """Cross-shaped window attention with LePE (the CSWin token mixer), channels-last `[B, H, W, C]` in and out.

    Heads `[0, heads / 2)` attend within vertical stripes `(H, split_size)`, heads `[heads / 2, heads)` within
    horizontal stripes `(split_size, W)`; with `full=True` all heads attend over the whole map (the last level).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            split_size: int = 7,
            full: bool = False,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            proj_drop: float = 0.,
            seg_padding: bool = False,
            backend: Optional[str] = None,
    ):
        """
        Args:
            dim: Channels in and out.
            num_heads: Attention heads; must divide `dim`, and be even unless `full`.
            split_size: Stripe width sw.
            full: Attention over the whole map (one branch with all heads), as the official last level.
            qkv_bias: Bias in the qkv projection.
            qk_scale: Logit scale; head_dim ** -0.5 when None.
            proj_drop: Dropout after the output projection.
            seg_padding: The official segmentation backbone's padding (centred zeros, unmasked) instead of masked
                bottom/right padding for maps that are not stripe multiples.
            backend: Force a backend of the window op (None: the op's dispatcher chooses).
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'num_heads={num_heads} must divide dim={dim}.')
        if not full and num_heads % 2:
            raise ValueError(f'CSWin splits the heads between vertical and horizontal stripes: num_heads={num_heads} '
                             f'must be even (or full=True for whole-map attention).')
        if split_size < 1:
            raise ValueError(f'split_size must be >= 1, got {split_size}.')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.split_size = split_size
        self.full = full
        self.seg_padding = seg_padding
        self.backend = backend or 'auto'
        branches = 1 if full else 2
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        # LePE: one depthwise 3x3 conv on V per branch (the official `attns.{b}.get_v`)
        self.get_v = nn.ModuleList([
            nn.Conv2d(dim // branches, dim // branches, kernel_size=3, padding=1, groups=dim // branches)
            for _ in range(branches)])
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _window(self, branch: int, H: int, W: int) -> List[int]:
        if self.full:
            return [H, W]
        return [H, self.split_size] if branch == 0 else [self.split_size, W]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        # [B, H, W, 3C] -> 3 x [B, H, W, heads, head_dim]: heads-last views, the op's layout (no permute)
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(3)
        heads = self.num_heads // len(self.get_v)
        outs: List[torch.Tensor] = []
        for i, conv in enumerate(self.get_v):
            window = self._window(i, H, W)
            pad = _stripe_pad(H, window[0], self.seg_padding) + _stripe_pad(W, window[1], self.seg_padding)
            q = qkv[0][:, :, :, i * heads:(i + 1) * heads]
            k = qkv[1][:, :, :, i * heads:(i + 1) * heads]
            v = qkv[2][:, :, :, i * heads:(i + 1) * heads]
            out = window_attention_op(q, k, v, window, [0, 0], pad, not self.seg_padding, None, self.scale,
                                      self.backend)
            outs.append(out.flatten(3) + stripe_lepe(v, conv.weight, conv.bias, window, pad))
        x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        x = self.proj(x)
        return self.proj_drop(x)

    def extra_repr(self) -> str:
        return f'num_heads={self.num_heads}, split_size={self.split_size}, full={self.full}'


class CSWin(CSWinLayout):
    """CSWin Transformer: the CSWin layout with cross-shaped window attention."""

    def __init__(
            self,
            embed_dim: int = 64,
            depths: Sequence[int] = (1, 2, 21, 1),
            num_heads: Sequence[int] = (2, 4, 8, 16),
            split_size: Sequence[int] = (1, 2, 7, 7),
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            proj_drop_rate: float = 0.,
            seg_padding: bool = False,
            attn_backend: Optional[str] = None,
            **kwargs,
    ):
        """
        Args:
            embed_dim: Channels of the first level; doubled at every level.
            depths: Blocks per level.
            num_heads: Attention heads per level (even, except in the last level).
            split_size: Stripe width per level (the last level attends over the whole map).
            mlp_ratio: MLP hidden width / dim.
            qkv_bias: Bias in the qkv projections.
            qk_scale: Attention logit scale override (head_dim ** -0.5 when None).
            proj_drop_rate: Dropout after the attention projection and in the MLP (the official `drop_rate`).
            seg_padding: The official segmentation backbone's padding rule (set by `features_only=True`).
            attn_backend: Force a window-attention backend (None: the op's dispatcher chooses).
            **kwargs: Any other `HierarchicalTransformer` argument (`num_classes`, `drop_path_rate`, ...).
        """
        if len(split_size) != len(depths):
            raise ValueError(f'split_size={tuple(split_size)} needs one stripe width per level of '
                             f'depths={tuple(depths)}.')
        last = len(depths) - 1

        def mixer(level: int) -> MixerFactory:
            def make(dim: int, heads: int, block: int) -> nn.Module:
                return CSWinAttention(
                    dim, heads,
                    split_size=split_size[level],
                    full=level == last,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    proj_drop=proj_drop_rate,
                    seg_padding=seg_padding,
                    backend=attn_backend,
                )
            return make

        super().__init__(
            [mixer(i) for i in range(len(depths))],
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            proj_drop_rate=proj_drop_rate,
            **kwargs,
        )
        self.split_size = tuple(split_size)
        self.seg_padding = seg_padding


def _official_key(k: str, num_levels: int) -> str:
    """An official (classification or segmentation-backbone) key in this model's layout."""
    head, _, rest = k.partition('.')
    if head == 'stage1_conv_embed':
        index, _, param = rest.partition('.')
        return f'patch_embed.{"proj" if index == "0" else "norm"}.{param}'
    if head.startswith('stage') and head[5:].isdigit():
        level = int(head[5:]) - 1
        block, _, sub = rest.partition('.')
        if sub.startswith('attns.'):
            branch, _, param = sub[len('attns.'):].partition('.')
            sub = f'attn.{param.replace("get_v", f"get_v.{branch}", 1)}'
        elif sub.startswith(('qkv.', 'proj.')):
            sub = 'attn.' + sub
        return f'levels.{level}.blocks.{block}.{sub}'
    if head.startswith('merge') and head[5:].isdigit():
        return f'levels.{int(head[5:]) - 1}.downsample.{rest}'
    if head.startswith('norm') and head[4:].isdigit():  # segmentation backbone: norm1..norm4, one per output
        level = int(head[4:]) - 1
        return f'norm.{rest}' if level == num_levels - 1 else f'out_norms.{level}.{rest}'
    if head == 'head':
        return f'head.fc.{rest}'
    return k


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: CSWin) -> Dict[str, torch.Tensor]:
    """Convert an official CSWin checkpoint (classification release, or the backbone of a UperNet release) to this
    model's layout, or raise a ValueError saying what does not fit."""
    for key in ('state_dict_ema', 'model', 'state_dict'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    if any(k.startswith('levels.') for k in state_dict):  # already in this layout
        out = dict(state_dict)
    else:
        out = {_official_key(k, model.num_levels): v for k, v in state_dict.items()}
    target = model.state_dict()
    if any(k.startswith('out_norms.') for k in out) and model.out_norms is None:
        raise ValueError(
            'This checkpoint is a dense-task backbone with per-output norms (norm1..norm4, mmseg); create the model '
            'with output_norms=True (features_only=True does this) to load them.')
    if 'head.fc.weight' not in target:
        out = {k: v for k, v in out.items() if not k.startswith('head.fc.')}
    elif 'head.fc.weight' not in out:
        raise ValueError('This checkpoint has no classifier (a dense-task backbone?); create the model with '
                         'num_classes=0 or features_only=True to load it.')
    if model.out_norms is not None:
        # classification checkpoints carry no per-output norms: they start as identity LayerNorms (non-strict in the
        # official dense-task code)
        for k, v in target.items():
            if k.startswith('out_norms.') and k not in out:
                out[k] = torch.ones_like(v) if k.endswith('weight') else torch.zeros_like(v)
    first_conv = (getattr(model, 'pretrained_cfg', None) or {}).get('first_conv', 'patch_embed.proj') + '.weight'
    check_checkpoint_keys(
        out, target, model_description(model, 'CSWin'), reshapable=(first_conv,), norms_arg='output_norms',
        variants='The variants differ in embed_dim (64/96/144), depths and num_heads; see '
                 'hiervit.backbones.cswin._VARIANT_ARGS.')
    return out


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    # official models/cswin.py `_cfg`: crop 0.9, bicubic, ImageNet mean/std
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': .9, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head.fc', 'license': 'mit',
        'origin_url': 'https://github.com/microsoft/CSWin-Transformer', 'paper_ids': 'arXiv:2107.00652', **kwargs,
    }


_URL = 'https://github.com/microsoft/CSWin-Transformer/releases/download/v0.1.0/'

default_cfgs = generate_default_cfgs({
    'cswin_tiny.ms_in1k': _cfg(url=_URL + 'cswin_tiny_224.pth'),
    'cswin_small.ms_in1k': _cfg(url=_URL + 'cswin_small_224.pth'),
    'cswin_base.ms_in1k': _cfg(url=_URL + 'cswin_base_224.pth'),
    'cswin_large.ms_in22k_ft_in1k': _cfg(url=_URL + 'cswin_large_224.pth'),
    'cswin_large.ms_in22k': _cfg(
        url=_URL + 'cswin_large_22k_224.pth', num_classes=21841,
        notes=('num_classes 21841 (ImageNet-21k) is assumed: the official repository does not state the 22k head',)),
    'cswin_base_384.ms_in1k': _cfg(
        url=_URL + 'cswin_base_384.pth', input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
    'cswin_large_384.ms_in22k_ft_in1k': _cfg(
        url=_URL + 'cswin_large_384.pth', input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
})

# Architecture arguments of every entrypoint (official models/cswin.py) and the official training drop path
# (README: T 0.2, S 0.4, B 0.5, B-384 fine-tune 0.7, L 22k->1k fine-tune 0.2; L-384: not published, 0.2 assumed).
_VARIANT_ARGS: Dict[str, Dict[str, Any]] = {
    'cswin_tiny': dict(embed_dim=64, depths=(1, 2, 21, 1), num_heads=(2, 4, 8, 16), split_size=(1, 2, 7, 7),
                       drop_path_rate=0.2),
    'cswin_small': dict(embed_dim=64, depths=(2, 4, 32, 2), num_heads=(2, 4, 8, 16), split_size=(1, 2, 7, 7),
                        drop_path_rate=0.4),
    'cswin_base': dict(embed_dim=96, depths=(2, 4, 32, 2), num_heads=(4, 8, 16, 32), split_size=(1, 2, 7, 7),
                       drop_path_rate=0.5),
    'cswin_large': dict(embed_dim=144, depths=(2, 4, 32, 2), num_heads=(6, 12, 24, 24), split_size=(1, 2, 7, 7),
                        drop_path_rate=0.2),
    'cswin_base_384': dict(embed_dim=96, depths=(2, 4, 32, 2), num_heads=(4, 8, 16, 32), split_size=(1, 2, 12, 12),
                           drop_path_rate=0.7),
    'cswin_large_384': dict(embed_dim=144, depths=(2, 4, 32, 2), num_heads=(6, 12, 24, 24),
                            split_size=(1, 2, 12, 12), drop_path_rate=0.2),
}


def _create_variant(variant: str, pretrained: bool, kwargs: Dict[str, Any]) -> CSWin:
    if kwargs.get('features_only', False):
        # dense tasks: the official segmentation backbone's padding rule (what the UperNet checkpoints saw)
        kwargs.setdefault('seg_padding', True)
    return build_layout_model(CSWin, variant, pretrained, checkpoint_filter_fn, _VARIANT_ARGS[variant], **kwargs)


@register_model
def cswin_tiny(pretrained: bool = False, **kwargs) -> CSWin:
    """CSWin-T @ 224, ImageNet-1k (official CSWin_64_12211_tiny_224)."""
    return _create_variant('cswin_tiny', pretrained, kwargs)


@register_model
def cswin_small(pretrained: bool = False, **kwargs) -> CSWin:
    """CSWin-S @ 224, ImageNet-1k (official CSWin_64_24322_small_224)."""
    return _create_variant('cswin_small', pretrained, kwargs)


@register_model
def cswin_base(pretrained: bool = False, **kwargs) -> CSWin:
    """CSWin-B @ 224, ImageNet-1k (official CSWin_96_24322_base_224)."""
    return _create_variant('cswin_base', pretrained, kwargs)


@register_model
def cswin_large(pretrained: bool = False, **kwargs) -> CSWin:
    """CSWin-L @ 224, ImageNet-22k pretrained (and 1k fine-tuned) (official CSWin_144_24322_large_224)."""
    return _create_variant('cswin_large', pretrained, kwargs)


@register_model
def cswin_base_384(pretrained: bool = False, **kwargs) -> CSWin:
    """CSWin-B @ 384 (stripes 12), ImageNet-1k (official CSWin_96_24322_base_384)."""
    return _create_variant('cswin_base_384', pretrained, kwargs)


@register_model
def cswin_large_384(pretrained: bool = False, **kwargs) -> CSWin:
    """CSWin-L @ 384 (stripes 12), ImageNet-22k pretrained, 1k fine-tuned (official CSWin_144_24322_large_384)."""
    return _create_variant('cswin_large_384', pretrained, kwargs)
