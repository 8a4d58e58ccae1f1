""" FLatten Transformer: focused linear attention

A timm implementation of
    - `FLatten Transformer: Vision Transformer using Focused Linear Attention` (ICCV 2023)
      - https://arxiv.org/abs/2308.00442

Architecture facts (key names, shapes, hyperparameters, stage patterns) and the released weights are from
https://github.com/LeapLabTHU/FLatten-Transformer. **The official code has no license** (no LICENSE file): nothing
here is taken from its text, and the released weights carry no license either.

Focused linear attention (`FocusedLinearAttention`) on `hiervit.kernels.linear`: q, k, v projections; a learnable
additive position encoding on K (zero-initialised, one vector per token of the trained map); `ReLU + 1e-6`; division
by `softplus` of a learnable per-channel scale; the focusing function `f(x) = x^p * ||x|| / ||x^p||` (p = 3, over all
channels); then per head `phi(q) (phi(k)^T v / N) / (phi(q) . mean_N phi(k) + 1e-6)` (the op's `mean` normaliser:
the `sum` normaliser in the scaled form of the official code since its May 2024 numerical fix, which older
checkpoints load unchanged), plus the rank restoration: a depthwise k x k conv (k = 5) of each head's V map, one
kernel shared by all heads. The focusing power is applied to `x / max(x)` (the same value in exact arithmetic:
`f` is scale-invariant), so that `x^p` cannot overflow in half precision.

The variants plug this mixer into the shared layouts:

* FLatten-Swin (`flatten_swin_*`, Swin layout): pattern `LLSS`; `L` levels attend over the whole map (the official
  56-token window covers the 224 px map; 96 at 384 px), `S` levels are Swin's shifted-window attention (window 7).
* FLatten-CSWin (`flatten_cswin_*`, CSWin layout): `LLSS`; `L` levels attend over the whole map (`la_split_size`
  56-28-14-7 covers the map at 224 px) and keep CSWin's LePE (3x3 depthwise conv of V) beside the 5x5 one; `S` levels
  are CSWin attention (`hiervit.backbones.cswin.CSWinAttention`).

Any input size works: the position encodings are exact at the trained map size and bilinearly interpolated for other
sizes (also non-square maps; the official code assumes square windows).
"""
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function, to_2tuple
from timm.models import generate_default_cfgs, register_model
from torch.jit import Final

from hiervit.backbones._pretrained import build_with_official_layouts, check_checkpoint_keys, model_description
from hiervit.backbones.cswin import CSWinAttention
from hiervit.backbones.cswin import _official_key as _cswin_official_key
from hiervit.backbones.layers.pvt import PVTLayout, pvt_official_key, pvt_stage_sizes
from hiervit.backbones.layers.skeleton import CSWinLayout, MixerFactory, SwinLayout, build_layout_model
from hiervit.backbones.layers.window import SwinWindowAttention
from hiervit.kernels.linear import linear_attention_op

__all__ = [
    'FocusedLinearAttention', 'FLattenAttention', 'FLattenCSWinAttention', 'FLattenPVTAttention', 'FLattenSwin',
    'FLattenCSWin', 'FLattenPVT',
]


@register_notrace_function
def resize_pos_encoding(pe: torch.Tensor, size: List[int], H: int, W: int) -> torch.Tensor:
    """A per-token encoding `pe [1, h * w, C]` of an h x w map (`size`) for an H x W map: `pe` itself at its own size,
    else bilinearly interpolated. An FX leaf: it decides on sizes."""
    if size[0] == H and size[1] == W:
        return pe
    grid = pe.reshape(1, size[0], size[1], pe.shape[-1]).permute(0, 3, 1, 2)  # [1, h * w, C] -> [1, C, h, w]
    grid = F.interpolate(grid, size=(H, W), mode='bilinear', align_corners=False)
    return grid.flatten(2).transpose(1, 2)


torch.fx.wrap('resize_pos_encoding')  # a leaf for plain torch.fx.symbolic_trace too (timm's tracer knows it already)


def focus(x: torch.Tensor, power: float) -> torch.Tensor:
    """FLatten's focusing function on positive `x` over its last axis: `x^p * ||x|| / ||x^p||`, computed on
    `x / max(x)` (scale-invariant, so the same value) to keep `x^p` finite in half precision."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    y = (x / x.amax(dim=-1, keepdim=True)) ** power
    return y * (norm / torch.linalg.vector_norm(y, dim=-1, keepdim=True))


class FocusedLinearAttention(nn.Module):
    """What every FLatten mixer shares: the projections, the position encoding on K, kernel and focusing function,
    linear attention and the depthwise-conv rank restoration (official keys `qkv` or `q`/`kv`, `get_v`, `proj`,
    `dwc`, `scale`, `positional_encoding`). A subclass picks its projection layout with the class attributes
    `split_qkv` (PVT's separate `q` and `kv` instead of a fused `qkv`) and `lepe` (CSWin's 3x3 depthwise conv of V,
    `get_v`) and writes `forward`, channels-last `[B, H, W, C]` in and out."""

    num_heads: Final[int]
    focusing_factor: Final[float]
    backend: Final[str]
    split_qkv: bool = False
    lepe: bool = False

    def __init__(
            self,
            dim: int,
            num_heads: int,
            pe_size: Union[int, Sequence[int]],
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            focusing_factor: float = 3.,
            kernel_size: int = 5,
            backend: Optional[str] = None,
    ):
        """
        Args:
            dim: Channels in and out.
            num_heads: Attention heads (must divide dim).
            pe_size: The map size (h, w) the K position encoding is trained for (one vector per token).
            qkv_bias: Bias in the q, k, v projections.
            proj_drop: Dropout after the output projection.
            focusing_factor: Power p of the focusing function.
            kernel_size: Side of the depthwise rank-restoration conv (odd).
            backend: Force a linear-attention backend (None: the op's dispatcher chooses).
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'num_heads={num_heads} must divide dim={dim}.')
        if kernel_size % 2 != 1:
            raise ValueError(f'kernel_size must be odd (the conv keeps the map size), got {kernel_size}.')
        if focusing_factor <= 0:
            raise ValueError(f'focusing_factor must be > 0, got {focusing_factor}.')
        head_dim = dim // num_heads
        self.num_heads = num_heads
        self.focusing_factor = float(focusing_factor)
        self.backend = backend or 'auto'
        self.pe_size = list(to_2tuple(pe_size))
        self.dwc = nn.Conv2d(head_dim, head_dim, kernel_size, padding=kernel_size // 2, groups=head_dim)
        self.scale = nn.Parameter(torch.zeros(1, 1, dim))
        self.positional_encoding = nn.Parameter(torch.zeros(1, self.pe_size[0] * self.pe_size[1], dim))
        if self.split_qkv:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if self.lepe:
            self.get_v = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """q, k, v `[B, N, C]` of an H x W map (N = H * W, row-major) -> `[B, N, C]` before the output projection."""
        B, N, C = q.shape
        k = k + resize_pos_encoding(self.positional_encoding, self.pe_size, H, W)
        s = F.softplus(self.scale)
        q = focus((F.relu(q) + 1e-6) / s, self.focusing_factor)
        k = focus((F.relu(k) + 1e-6) / s, self.focusing_factor)
        d = C // self.num_heads
        # [B, N, C] -> [B, heads, N, head_dim]
        q = q.reshape(B, N, self.num_heads, d).transpose(1, 2)
        k = k.reshape(B, N, self.num_heads, d).transpose(1, 2)
        v = v.reshape(B, N, self.num_heads, d).transpose(1, 2)
        out = linear_attention_op(q, k, v, None, 'mean', 1e-6, 100., 1., self.backend)
        # rank restoration: each head's V as a map [B * heads, head_dim, H, W], one depthwise kernel for all heads
        v_map = v.reshape(B * self.num_heads, H, W, d).permute(0, 3, 1, 2)
        out = out + self.dwc(v_map).reshape(B, self.num_heads, d, N).transpose(-1, -2)
        return out.transpose(1, 2).reshape(B, N, C)  # [B, heads, N, d] -> [B, N, C]

    def extra_repr(self) -> str:
        return f'num_heads={self.num_heads}, pe_size={self.pe_size}, focusing_factor={self.focusing_factor}'


class FLattenAttention(FocusedLinearAttention):
    """Focused linear attention over the whole map with a fused qkv projection (FLatten-Swin's `L` mixer), NHWC
    `[B, H, W, C]` in and out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).reshape(B, H * W, 3, C).unbind(2)
        x = self.attend(q, k, v, H, W)
        return self.proj_drop(self.proj(x)).reshape(B, H, W, C)


class FLattenCSWinAttention(FocusedLinearAttention):
    """FLatten-CSWin's `L` mixer: focused linear attention over the whole map plus CSWin's LePE (a 3x3 depthwise conv
    of V over the map), NHWC in and out."""

    lepe = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).reshape(B, H * W, 3, C).unbind(2)
        lepe = self.get_v(v.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)  # [B, N, C]
        x = self.attend(q, k, v, H, W) + lepe
        return self.proj_drop(self.proj(x)).reshape(B, H, W, C)


class FLattenPVTAttention(FocusedLinearAttention):
    """FLatten-PVT's mixer (PVT and PVTv2 layouts): focused linear attention over the whole map with PVT's separate
    q and kv projections (the released `la_sr_ratios` 1111: no spatial reduction), NHWC in and out."""

    split_qkv = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = x.reshape(B, H * W, C)
        k, v = self.kv(x).reshape(B, H * W, 2, C).unbind(2)
        x = self.attend(self.q(x), k, v, H, W)
        return self.proj_drop(self.proj(x)).reshape(B, H, W, C)


def _check_pattern(attn_type: str, levels: int) -> None:
    if len(attn_type) != levels or set(attn_type) - {'L', 'S'}:
        raise ValueError(f"attn_type must have one 'L' (focused linear) or 'S' (softmax) per level ({levels}), got "
                         f'{attn_type!r}.')


class FLattenSwin(SwinLayout):
    """FLatten-Swin: the Swin layout with focused linear attention in the `L` levels and Swin's shifted-window
    attention in the `S` levels."""

    def __init__(
            self,
            img_size: Union[int, Sequence[int]] = 224,
            embed_dim: int = 96,
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            window_size: int = 56,
            attn_type: str = 'LLSS',
            focusing_factor: float = 3.,
            kernel_size: int = 5,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            proj_drop_rate: float = 0.,
            attn_backend: Optional[str] = None,
            **kwargs,
    ):
        """
        Args:
            img_size: Build (training) size: fixes the size of the `L` levels' position encodings.
            embed_dim: Channels of the first level; doubled at every level.
            depths: Blocks per level.
            num_heads: Attention heads per level.
            window_size: The official `WINDOW_SIZE` of the `L` levels (56 at 224 px, 96 at 384 px): their position
                encodings cover min(window_size, level map size) per axis; the `S` levels use window 7 (12 when
                window_size > 56), shifted in every second block.
            attn_type: One letter per level, 'L' (focused linear) or 'S' (Swin window attention).
            focusing_factor: Power of the focusing function.
            kernel_size: Depthwise rank-restoration conv size.
            mlp_ratio: MLP hidden width / dim.
            qkv_bias: Bias in the qkv projections.
            proj_drop_rate: Dropout after the attention projection and in the MLP (the official `drop_rate`).
            attn_backend: Force an attention backend of both ops (None: the dispatchers choose).
            **kwargs: Any other `HierarchicalTransformer` argument (`num_classes`, `drop_path_rate`, ...).
        """
        _check_pattern(attn_type, len(depths))
        sizes = pvt_stage_sizes(img_size, len(depths))
        swin_window = 7 if window_size <= 56 else 12

        def mixer(level: int) -> MixerFactory:
            def make(dim: int, heads: int, block: int) -> nn.Module:
                if attn_type[level] == 'L':
                    return FLattenAttention(
                        dim, heads, [min(s, window_size) for s in sizes[level]], qkv_bias=qkv_bias,
                        proj_drop=proj_drop_rate, focusing_factor=focusing_factor, kernel_size=kernel_size,
                        backend=attn_backend)
                return SwinWindowAttention(
                    dim, heads, window_size=swin_window, shift=block % 2 == 1, qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate, backend=attn_backend)
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
        self.attn_type = attn_type


class FLattenCSWin(CSWinLayout):
    """FLatten-CSWin: the CSWin layout with focused linear attention (plus LePE) in the `L` levels and CSWin's
    cross-shaped window attention in the `S` levels."""

    def __init__(
            self,
            img_size: Union[int, Sequence[int]] = 224,
            embed_dim: int = 64,
            depths: Sequence[int] = (2, 4, 18, 1),
            num_heads: Sequence[int] = (2, 4, 8, 16),
            split_size: Sequence[int] = (1, 2, 7, 7),
            la_split_size: Sequence[int] = (56, 28, 14, 7),
            attn_type: str = 'LLSS',
            focusing_factor: float = 3.,
            kernel_size: int = 5,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            proj_drop_rate: float = 0.,
            seg_padding: bool = False,
            attn_backend: Optional[str] = None,
            **kwargs,
    ):
        """
        Args:
            img_size: Build (training) size: fixes the size of the `L` levels' position encodings.
            embed_dim: Channels of the first level; doubled at every level.
            depths: Blocks per level.
            num_heads: Attention heads per level.
            split_size: CSWin stripe width of the `S` levels (the last level attends over the whole map).
            la_split_size: The official `CSWIN_LA_SPLIT_SIZE` of the `L` levels; it must cover the level's map at
                the build size (the released configs do: the official `L` attention is then one branch over the whole
                map, the only form its code runs).
            attn_type: One letter per level, 'L' (focused linear) or 'S' (CSWin attention).
            focusing_factor: Power of the focusing function.
            kernel_size: Depthwise rank-restoration conv size.
            mlp_ratio: MLP hidden width / dim.
            qkv_bias: Bias in the qkv projections.
            proj_drop_rate: Dropout after the attention projection and in the MLP (the official `drop_rate`).
            seg_padding: CSWin's segmentation padding rule in the `S` levels (set by `features_only=True`).
            attn_backend: Force an attention backend of both ops (None: the dispatchers choose).
            **kwargs: Any other `HierarchicalTransformer` argument (`num_classes`, `drop_path_rate`, ...).
        """
        n = len(depths)
        _check_pattern(attn_type, n)
        if len(split_size) != n or len(la_split_size) != n:
            raise ValueError(f'split_size={tuple(split_size)} and la_split_size={tuple(la_split_size)} need one '
                             f'entry per level of depths={tuple(depths)}.')
        sizes = pvt_stage_sizes(img_size, n)
        for i, kind in enumerate(attn_type):
            if kind == 'L' and la_split_size[i] < max(sizes[i]):
                raise ValueError(
                    f'la_split_size[{i}]={la_split_size[i]} is smaller than level {i}\'s map {sizes[i]} at '
                    f'img_size={img_size}: FLatten-CSWin\'s linear attention covers the whole map; use '
                    f'la_split_size >= {max(sizes[i])} (the official 56-28-14-7 at 224, 96-48-24-12 at 384).')

        def mixer(level: int) -> MixerFactory:
            def make(dim: int, heads: int, block: int) -> nn.Module:
                if attn_type[level] == 'L':
                    return FLattenCSWinAttention(
                        dim, heads, sizes[level], qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                        focusing_factor=focusing_factor, kernel_size=kernel_size, backend=attn_backend)
                return CSWinAttention(
                    dim, heads, split_size=split_size[level], full=level == n - 1, qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate, seg_padding=seg_padding, backend=attn_backend)
            return make

        super().__init__(
            [mixer(i) for i in range(n)],
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            proj_drop_rate=proj_drop_rate,
            **kwargs,
        )
        self.attn_type = attn_type
        self.seg_padding = seg_padding


class FLattenPVT(PVTLayout):
    """FLatten-PVT / FLatten-PVTv2: the PVT (`v2=False`) or PVTv2 layout with focused linear attention in every
    stage (the released pattern `LLLL`)."""

    def __init__(
            self,
            v2: bool = False,
            img_size: Union[int, Sequence[int]] = 224,
            embed_dims: Sequence[int] = (64, 128, 320, 512),
            depths: Sequence[int] = (2, 2, 2, 2),
            num_heads: Sequence[int] = (1, 2, 5, 8),
            mlp_ratios: Sequence[float] = (8., 8., 4., 4.),
            focusing_factor: float = 3.,
            kernel_size: int = 5,
            qkv_bias: bool = True,
            proj_drop_rate: float = 0.,
            attn_backend: Optional[str] = None,
            **kwargs,
    ):
        """
        Args:
            v2: The PVTv2 layout instead of PVT v1.
            img_size: Build (training) size: fixes the position-encoding sizes.
            embed_dims: Channels per stage.
            depths: Blocks per stage.
            num_heads: Attention heads per stage.
            mlp_ratios: MLP hidden width / dim per stage.
            focusing_factor: Power of the focusing function.
            kernel_size: Depthwise rank-restoration conv size.
            qkv_bias: Bias in the q and kv projections.
            proj_drop_rate: Dropout after the attention projection and in the MLP (the official `drop_rate`).
            attn_backend: Force a linear-attention backend (None: the dispatcher chooses).
            **kwargs: Any other `PVTLayout` argument (`num_classes`, `drop_path_rate`, ...).
        """
        sizes = pvt_stage_sizes(img_size, len(depths))

        def mixer(stage: int) -> MixerFactory:
            def make(dim: int, heads: int, block: int) -> nn.Module:
                return FLattenPVTAttention(
                    dim, heads, sizes[stage], qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                    focusing_factor=focusing_factor, kernel_size=kernel_size, backend=attn_backend)
            return make

        super().__init__(
            [mixer(i) for i in range(len(depths))],
            v2=v2,
            img_size=img_size,
            embed_dims=embed_dims,
            depths=depths,
            num_heads=num_heads,
            mlp_ratios=mlp_ratios,
            proj_drop_rate=proj_drop_rate,
            **kwargs,
        )


def _unwrap(state_dict: Dict[str, Any]) -> Dict[str, Any]:
    for key in ('state_dict_ema', 'model', 'state_dict'):
        if key in state_dict and isinstance(state_dict[key], dict):
            return state_dict[key]
    return state_dict


def _swin_key(k: str) -> str:
    """An official FLatten-Swin key in this layout (`layers.{i}` -> `levels.{i}`, `head` -> `head.fc`)."""
    if k.startswith('layers.'):
        return 'levels.' + k[len('layers.'):]
    if k.startswith('head.'):
        return 'head.fc.' + k[len('head.'):]
    return k


def _cswin_key(k: str, num_levels: int) -> str:
    """An official FLatten-CSWin key in this layout: CSWin's mapping, with the `L` levels' single branch
    (`attns.0.*`) directly under `attn`."""
    parts = k.split('.')
    if len(parts) > 4 and parts[0].startswith('stage') and parts[0][5:].isdigit() and parts[2] == 'attns' and \
            parts[4] in ('dwc', 'scale', 'positional_encoding'):
        return f'levels.{int(parts[0][5:]) - 1}.blocks.{parts[1]}.attn.{".".join(parts[4:])}'
    return _cswin_official_key(k, num_levels)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Convert an official FLatten checkpoint (Swin or CSWin layout) to this model's layout, or raise a ValueError
    saying what does not fit."""
    state_dict = _unwrap(state_dict)
    target = model.state_dict()
    if any(k.startswith(('levels.', 'stages.')) for k in state_dict):
        out = dict(state_dict)
    elif isinstance(model, PVTLayout):
        # the official PVT v1 models hold a final LayerNorm that their forward never applies: dropped unless the
        # model has one (final_norm=True)
        out = {pvt_official_key(k): v for k, v in state_dict.items()
               if not (k.startswith('norm.') and 'norm.weight' not in target)}
    elif isinstance(model, FLattenCSWin):
        out = {_cswin_key(k, model.num_levels): v for k, v in state_dict.items()}
        # the `L` levels' LePE conv is one module (`attn.get_v`), CSWin's branches are numbered (`attn.get_v.{b}`)
        out = {(k.replace('.attn.get_v.0.', '.attn.get_v.') if k not in target else k): v for k, v in out.items()}
    else:
        # Swin's non-persistent tables and masks (relative_position_index, attn_mask) are rebuilt by the op
        out = {_swin_key(k): v for k, v in state_dict.items()
               if not k.endswith(('relative_position_index', 'attn_mask'))}
    if 'head.fc.weight' not in target:
        out = {k: v for k, v in out.items() if not k.startswith('head.fc.')}
    if getattr(model, 'out_norms', None) is not None:
        # classification checkpoints carry no per-output norms: they start as identity LayerNorms
        for k, v in target.items():
            if k.startswith('out_norms.') and k not in out:
                out[k] = torch.ones_like(v) if k.endswith('weight') else torch.zeros_like(v)
    first_conv = (getattr(model, 'pretrained_cfg', None) or {}).get('first_conv', 'patch_embed.proj') + '.weight'
    check_checkpoint_keys(
        out, target, model_description(model, type(model).__name__), reshapable=(first_conv,),
        norms_arg=None if isinstance(model, PVTLayout) else 'output_norms',
        variants='The variants differ in widths, depths and the build size (img_size fixes the position-encoding '
                 'sizes); see hiervit.backbones.flatten._VARIANT_ARGS.')
    return out


def _cfg(url: Any = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': .9, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head.fc',
        'license': 'unknown (the official code and weights carry no license)',
        'origin_url': 'https://github.com/LeapLabTHU/FLatten-Transformer', 'paper_ids': 'arXiv:2308.00442',
        'paper_name': 'FLatten Transformer: Vision Transformer using Focused Linear Attention',
        'notes': ('The released weights carry no license (the official repository has no LICENSE file).',),
        **kwargs,
    }


def _released(key: str, name: str, **kwargs) -> Dict[str, Any]:
    # TsinghuaCloud links end alike (`/?dl=1`): `(url, file_name)` gives each its own cache file
    return _cfg(url=(f'https://cloud.tsinghua.edu.cn/f/{key}/?dl=1', f'{name}.pth'), **kwargs)


def _unreleased(**kwargs) -> Dict[str, Any]:
    return _cfg(notes=('No weights released for this variant (the official README links only some of them).',
                       'The official code carries no license.'), **kwargs)


_384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0)

default_cfgs = generate_default_cfgs({
    'flatten_swin_tiny.in1k': _released('e1518e76703e4e57a7f2', 'flatten_swin_tiny'),
    'flatten_swin_small.in1k': _released('94188e52af354bf4a88b', 'flatten_swin_small'),
    'flatten_swin_base.in1k': _released('7a9e5186bad04e7fb3a9', 'flatten_swin_base'),
    'flatten_swin_base_384.in1k': _released('0d0330cf2e5249f1abb6', 'flatten_swin_base_384', **_384),
    'flatten_pvt_tiny.in1k': _released('3ab1d773f19d45648690', 'flatten_pvt_tiny', first_conv='patch_embed.proj'),
    'flatten_pvt_small.untrained': _unreleased(),
    'flatten_pvt_medium.untrained': _unreleased(),
    'flatten_pvt_large.untrained': _unreleased(),
    'flatten_pvt_v2_b0.in1k': _released('5d1f01532b104da28e7b', 'flatten_pvt_v2_b0'),
    'flatten_pvt_v2_b1.untrained': _unreleased(),
    'flatten_pvt_v2_b2.untrained': _unreleased(),
    'flatten_pvt_v2_b3.untrained': _unreleased(),
    'flatten_pvt_v2_b4.untrained': _unreleased(),
    'flatten_pvt_v2_b5.untrained': _unreleased(),
    'flatten_cswin_tiny.in1k': _released('48ba765ba8b0451d9d5a', 'flatten_cswin_tiny'),
    'flatten_cswin_small.untrained': _unreleased(),
    'flatten_cswin_base.untrained': _unreleased(),
    'flatten_cswin_base_384.untrained': _unreleased(**_384),
})

# Architecture arguments (official models/flatten_*.py and cfgs/*.yaml) and the official training drop path.
_VARIANT_ARGS: Dict[str, Dict[str, Any]] = {
    'flatten_swin_tiny': dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    'flatten_swin_small': dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
    'flatten_swin_base': dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
    'flatten_swin_base_384': dict(img_size=384, window_size=96, embed_dim=128, depths=(2, 2, 18, 2),
                                  num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
    'flatten_pvt_tiny': dict(depths=(2, 2, 2, 2), drop_path_rate=0.1),
    'flatten_pvt_small': dict(depths=(3, 4, 6, 3), drop_path_rate=0.1),
    'flatten_pvt_medium': dict(depths=(3, 4, 18, 3), drop_path_rate=0.3),
    'flatten_pvt_large': dict(depths=(3, 8, 27, 3), drop_path_rate=0.3),
    'flatten_pvt_v2_b0': dict(v2=True, embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), drop_path_rate=0.1),
    'flatten_pvt_v2_b1': dict(v2=True, depths=(2, 2, 2, 2), drop_path_rate=0.1),
    'flatten_pvt_v2_b2': dict(v2=True, depths=(3, 4, 6, 3), drop_path_rate=0.1),
    'flatten_pvt_v2_b3': dict(v2=True, depths=(3, 4, 18, 3), drop_path_rate=0.3),
    'flatten_pvt_v2_b4': dict(v2=True, depths=(3, 8, 27, 3), drop_path_rate=0.3),
    # b5: no official config; drop path 0.3 (b3/b4's) is an assumption
    'flatten_pvt_v2_b5': dict(v2=True, depths=(3, 6, 40, 3), mlp_ratios=(4., 4., 4., 4.), drop_path_rate=0.3),
    'flatten_cswin_tiny': dict(embed_dim=64, depths=(2, 4, 18, 1), num_heads=(2, 4, 8, 16), drop_path_rate=0.2),
    'flatten_cswin_small': dict(embed_dim=64, depths=(2, 4, 32, 2), num_heads=(2, 4, 8, 16), drop_path_rate=0.4),
    'flatten_cswin_base': dict(embed_dim=96, depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
    'flatten_cswin_base_384': dict(img_size=384, embed_dim=96, depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32),
                                   split_size=(1, 2, 12, 12), la_split_size=(96, 48, 24, 12), drop_path_rate=0.7),
}


def _create_variant(cls: type, variant: str, pretrained: bool, kwargs: Dict[str, Any]) -> nn.Module:
    if cls is FLattenCSWin and kwargs.get('features_only', False):
        kwargs.setdefault('seg_padding', True)  # CSWin's segmentation padding rule in the `S` levels
    if cls is not FLattenPVT:
        return build_layout_model(cls, variant, pretrained, checkpoint_filter_fn, _VARIANT_ARGS[variant], **kwargs)
    # the PVT layouts' stage outputs are the official dense-task features (v2: after each stage's norm)
    kwargs = dict(_VARIANT_ARGS[variant], **kwargs)
    feature_cfg = dict(out_indices=kwargs.pop('out_indices', (0, 1, 2, 3)),
                       feature_cls=kwargs.pop('feature_cls', 'getter'))
    if feature_cfg['feature_cls'] == 'fx':
        feature_cfg['output_fmt'] = 'NHWC'
    return build_with_official_layouts(
        cls, variant, pretrained, checkpoint_filter_fn, feature_cfg=feature_cfg, **kwargs)


@register_model
def flatten_swin_tiny(pretrained: bool = False, **kwargs) -> FLattenSwin:
    """FLatten-Swin-T @ 224, LLSS (official cfgs/flatten_swin_t.yaml; 82.1 top-1)."""
    return _create_variant(FLattenSwin, 'flatten_swin_tiny', pretrained, kwargs)


@register_model
def flatten_swin_small(pretrained: bool = False, **kwargs) -> FLattenSwin:
    """FLatten-Swin-S @ 224, LLSS (official cfgs/flatten_swin_s.yaml; 83.5 top-1)."""
    return _create_variant(FLattenSwin, 'flatten_swin_small', pretrained, kwargs)


@register_model
def flatten_swin_base(pretrained: bool = False, **kwargs) -> FLattenSwin:
    """FLatten-Swin-B @ 224, LLSS (official cfgs/flatten_swin_b.yaml; 83.8 top-1)."""
    return _create_variant(FLattenSwin, 'flatten_swin_base', pretrained, kwargs)


@register_model
def flatten_swin_base_384(pretrained: bool = False, **kwargs) -> FLattenSwin:
    """FLatten-Swin-B @ 384, LLSS, window 96 (official cfgs/flatten_swin_b_384.yaml; 85.0 top-1)."""
    return _create_variant(FLattenSwin, 'flatten_swin_base_384', pretrained, kwargs)


@register_model
def flatten_pvt_tiny(pretrained: bool = False, **kwargs) -> FLattenPVT:
    """FLatten-PVT-T @ 224, LLLL, depths 2-2-2-2, 77.8 top-1."""
    return _create_variant(FLattenPVT, 'flatten_pvt_tiny', pretrained, kwargs)


@register_model
def flatten_pvt_small(pretrained: bool = False, **kwargs) -> FLattenPVT:
    """FLatten-PVT-S @ 224, LLLL, depths 3-4-6-3."""
    return _create_variant(FLattenPVT, 'flatten_pvt_small', pretrained, kwargs)


@register_model
def flatten_pvt_medium(pretrained: bool = False, **kwargs) -> FLattenPVT:
    """FLatten-PVT-M @ 224, LLLL, depths 3-4-18-3."""
    return _create_variant(FLattenPVT, 'flatten_pvt_medium', pretrained, kwargs)


@register_model
def flatten_pvt_large(pretrained: bool = False, **kwargs) -> FLattenPVT:
    """FLatten-PVT-L @ 224, LLLL, depths 3-8-27-3 (official cfgs/flatten_pvt_b.yaml)."""
    return _create_variant(FLattenPVT, 'flatten_pvt_large', pretrained, kwargs)


@register_model
def flatten_pvt_v2_b0(pretrained: bool = False, **kwargs) -> FLattenPVT:
    """FLatten-PVTv2-B0 @ 224, LLLL (32-64-160-256, 71.1 top-1)."""
    return _create_variant(FLattenPVT, 'flatten_pvt_v2_b0', pretrained, kwargs)


@register_model
def flatten_pvt_v2_b1(pretrained: bool = False, **kwargs) -> FLattenPVT:
    """FLatten-PVTv2-B1 @ 224, LLLL (2-2-2-2)."""
    return _create_variant(FLattenPVT, 'flatten_pvt_v2_b1', pretrained, kwargs)


@register_model
def flatten_pvt_v2_b2(pretrained: bool = False, **kwargs) -> FLattenPVT:
    """FLatten-PVTv2-B2 @ 224, LLLL (3-4-6-3)."""
    return _create_variant(FLattenPVT, 'flatten_pvt_v2_b2', pretrained, kwargs)


@register_model
def flatten_pvt_v2_b3(pretrained: bool = False, **kwargs) -> FLattenPVT:
    """FLatten-PVTv2-B3 @ 224, LLLL (3-4-18-3)."""
    return _create_variant(FLattenPVT, 'flatten_pvt_v2_b3', pretrained, kwargs)


@register_model
def flatten_pvt_v2_b4(pretrained: bool = False, **kwargs) -> FLattenPVT:
    """FLatten-PVTv2-B4 @ 224, LLLL (3-8-27-3)."""
    return _create_variant(FLattenPVT, 'flatten_pvt_v2_b4', pretrained, kwargs)


@register_model
def flatten_pvt_v2_b5(pretrained: bool = False, **kwargs) -> FLattenPVT:
    """FLatten-PVTv2-B5 @ 224, LLLL (3-6-40-3, mlp ratio 4 (no official config))."""
    return _create_variant(FLattenPVT, 'flatten_pvt_v2_b5', pretrained, kwargs)


@register_model
def flatten_cswin_tiny(pretrained: bool = False, **kwargs) -> FLattenCSWin:
    """FLatten-CSWin-T @ 224, LLSS, depths 2-4-18-1 (official FLatten_CSWin_64_24181_tiny_224; 83.1 top-1)."""
    return _create_variant(FLattenCSWin, 'flatten_cswin_tiny', pretrained, kwargs)


@register_model
def flatten_cswin_small(pretrained: bool = False, **kwargs) -> FLattenCSWin:
    """FLatten-CSWin-S @ 224, LLSS (official FLatten_CSWin_64_24322_small_224)."""
    return _create_variant(FLattenCSWin, 'flatten_cswin_small', pretrained, kwargs)


@register_model
def flatten_cswin_base(pretrained: bool = False, **kwargs) -> FLattenCSWin:
    """FLatten-CSWin-B @ 224, LLSS, depths 3-6-29-2 (official FLatten_CSWin_96_36292_base_224)."""
    return _create_variant(FLattenCSWin, 'flatten_cswin_base', pretrained, kwargs)


@register_model
def flatten_cswin_base_384(pretrained: bool = False, **kwargs) -> FLattenCSWin:
    """FLatten-CSWin-B @ 384, LLSS, la_split 96-48-24-12 (official FLatten_CSWin_96_36292_base_384)."""
    return _create_variant(FLattenCSWin, 'flatten_cswin_base_384', pretrained, kwargs)
