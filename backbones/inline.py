""" InLine: injective linear attention with a local residual

A timm implementation of
    - `Bridging the Divide: Reconsidering Softmax and Linear Attention` (Han et al., NeurIPS 2024)
      - https://arxiv.org/abs/2412.06590

Model structure from https://github.com/LeapLabTHU/InLine (models/inline_swin.py, inline_cswin.py, inline_pvt.py).
The official code
has no license (no LICENSE file), and neither do its weights: hiervit re-implements the models from the paper, using
the repository only for facts (key names and shapes, hyperparameters, stage patterns), and its pretrained_cfgs point
at the released files without redistributing them.

The mixer (`InLineAttention`): qkv projection, a feature map phi on q and k (identity by default), the `injective`
normaliser of `hiervit.kernels.linear`,

    out_i = (s / N) phi(q_i) (phi(K)^T V) + (1 - (s / N) phi(q_i) . sum_j phi(k_j)) mean(V),   s = head_dim ** -0.5

(every query's weights sum to one and differ for different queries), plus the local residual: a 3x3 depthwise kernel
per sample and channel, predicted from the mean of the window's tokens by a grouped 1x1 conv, GELU, grouped 1x1 conv
(`residual.{0,2}`, groups = heads), applied to V with zero padding at the window border. InLine-CSwin adds CSWin's
LePE (a 3x3 depthwise conv of V) and takes the mean from the block input before its norm, as released.

Layouts (`hiervit.backbones.layers.skeleton`): `InLineSwin` is the Swin layout whose stages are `I` (InLine in
windows of `window_size`, 56 at 224 px: the whole map in every stage of a 224 px input) or `S` (Swin window attention,
window max(7, window_size // 8)); an `M<n>` stage has n InLine blocks, then Swin blocks (Swin-B: `IIMS2`).
`InLineCSWin` is the CSWin layout with InLine over the whole map in its `I` stages (the released la_split_size
56-28-14-7 / 96-48-24-12 equals every I stage's map at the trained size) and CSWin's stripes in its `S` stages.
`InLinePVT` is the PVT v1 layout (`hiervit.backbones.layers.pvt`) with whole-map InLine attention in every block (the
release's `IIII` with `la_sr_ratios` 1111: no spatial reduction) and PVT's separate `q` and `kv` projections.
InLine-DeiT (a plain ViT with timm's ViT contract) is `hiervit.backbones.inline_deit`.

Input sizes: the official models take only square inputs of their build size. Here any size works: InLine windows
follow the official rule per axis (an axis no longer than the window is one window; a longer axis is cut into
windows, shifted by half a window on odd blocks without a region mask, as released), and a map that does not divide
is padded at the bottom/right with tokens left out of every mean and sum (count, mean of V, the residual's pooled
input). At the trained size nothing is padded or shifted and the result is the official one. InLine has no
window-sized table; the Swin stages' bias tables are cropped for maps smaller than a window and resized by
`checkpoint_filter_fn` when a checkpoint's window differs from the model's.

State-dict layout: Swin `levels.{i}.blocks.{j}.{norm1, attn.{qkv, proj, residual.0, residual.2,
relative_position_bias_table}, norm2, mlp}`, `levels.{i}.downsample` (official `layers.*`), `head.fc` (official
`head`); CSwin as `hiervit.backbones.cswin` (official `stage{i}.{j}`, `attns.0.{get_v, residual}` -> `attn.{get_v.0,
residual}`); PVT as `hiervit.backbones.layers.pvt` (official `patch_embed{i}`, `pos_embed{i}`, `block{i}`, `head`).
`checkpoint_filter_fn` converts all three.
"""
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function, resize_rel_pos_bias_table
from timm.models import generate_default_cfgs, register_model

from hiervit.backbones import cswin as _cswin
from hiervit.backbones._pretrained import check_checkpoint_keys, model_description
from hiervit.backbones.layers.contract import build_hierarchical_model
from hiervit.backbones.layers.pvt import PVTLayout, pvt_official_key
from hiervit.backbones.layers.skeleton import CSWinLayout, SwinLayout, build_layout_model, level_mixers
from hiervit.backbones.layers.window import SwinWindowAttention
from hiervit.backbones.nat import convert_official_checkpoint
from hiervit.kernels.linear import linear_attention_op

__all__ = [
    'InLineAttention', 'InLineSwin', 'InLineCSWin', 'InLinePVT', 'inline_prepare', 'inline_finish', 'local_residual',
    'stage_attn_types',
]

KERNEL_FUNCS = ('identity', 'relu', 'leakyrelu', 'exp')


def _feature_map(x: torch.Tensor, kernel: str) -> torch.Tensor:
    if kernel == 'relu':
        return F.relu(x)
    if kernel == 'leakyrelu':
        return F.leaky_relu(x)
    if kernel == 'exp':
        return (x * 0.2).exp()  # the release's exp kernel, temperature 0.2
    return x


def _to_windows(x: torch.Tensor, window: List[int], pad: List[int], shift: List[int]) -> torch.Tensor:
    """`[B, H, W, C]` -> `[B * windows, wh * ww, C]`: zero-pad bottom/right, roll by -shift, partition."""
    if pad[0] > 0 or pad[1] > 0:
        x = F.pad(x, (0, 0, 0, pad[1], 0, pad[0]))
    if shift[0] > 0 or shift[1] > 0:
        x = torch.roll(x, (-shift[0], -shift[1]), (1, 2))
    B, Hp, Wp, C = x.shape
    wh, ww = window[0], window[1]
    # [B, Hp / wh, wh, Wp / ww, ww, C] -> [B, Hp / wh, Wp / ww, wh, ww, C]
    return x.reshape(B, Hp // wh, wh, Wp // ww, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, C)


def _from_windows(x: torch.Tensor, B: int, H: int, W: int, window: List[int], pad: List[int],
                  shift: List[int]) -> torch.Tensor:
    """Inverse of `_to_windows`, cropped to `[B, H, W, C]`."""
    wh, ww = window[0], window[1]
    Hp, Wp = H + pad[0], W + pad[1]
    C = x.shape[-1]
    x = x.reshape(B, Hp // wh, Wp // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
    if shift[0] > 0 or shift[1] > 0:
        x = torch.roll(x, (shift[0], shift[1]), (1, 2))
    if pad[0] > 0 or pad[1] > 0:
        x = x[:, :H, :W]
    return x


@register_notrace_function
def inline_prepare(
        qkv: torch.Tensor, num_heads: int, window_size: int, shift: bool, kernel: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str, float, List[int]]:
    """The linear-attention op's inputs for InLine on a channels-last qkv map `[B, H, W, 3C]`.

    Windows follow the official rule per axis (see the module docstring; `window_size` 0 = the whole map). Returns
    q, k, v `[B', heads, N, d]`, the term added to the op's output, the normaliser, the op's scale and the geometry
    `[wh, ww, pad_h, pad_w, shift_h, shift_w]`. Unpadded windows use the `injective` normaliser as released; windows
    with padding keep it out of every count and mean through the equivalent form `(s / n) q K^T (V - mean V) +
    mean V` over the n real tokens (n differs between windows, so the factor goes into q; normaliser `none`).
    An FX leaf: it decides on sizes.
    """
    B, H, W = qkv.shape[0], qkv.shape[1], qkv.shape[2]
    C = qkv.shape[3] // 3
    d = C // num_heads
    window: List[int] = [H, W] if window_size <= 0 else [min(window_size, H), min(window_size, W)]
    shifts: List[int] = [window[0] // 2 if shift and H > window[0] else 0,
                         window[1] // 2 if shift and W > window[1] else 0]
    pad: List[int] = [-H % window[0], -W % window[1]]
    t = _to_windows(qkv, window, pad, shifts)  # [B', N, 3C]
    Bw, N = t.shape[0], t.shape[1]
    q = _feature_map(t[..., :C], kernel)
    k = _feature_map(t[..., C:2 * C], kernel)
    # [B', N, C] -> [B', heads, N, d] (strided views; the op takes any strides)
    qh = q.reshape(Bw, N, num_heads, d).transpose(1, 2)
    kh = k.reshape(Bw, N, num_heads, d).transpose(1, 2)
    vh = t[..., 2 * C:].reshape(Bw, N, num_heads, d).transpose(1, 2)
    geometry = window + pad + shifts
    scale = d ** -0.5
    if pad[0] == 0 and pad[1] == 0:
        return qh, kh, vh, qkv.new_zeros(()), 'injective', scale, geometry
    m = _to_windows(qkv.new_ones(1, H, W, 1).expand(B, H, W, 1), window, pad, shifts)  # [B', N, 1]
    n = m.sum(1).reshape(Bw, 1, 1, 1)
    v_mean = vh.sum(2, keepdim=True) / n  # padding values are zeros
    return qh * (scale / n), kh * m.reshape(Bw, 1, N, 1), vh - v_mean, v_mean, 'none', 1., geometry


torch.fx.wrap('inline_prepare')  # a leaf for plain torch.fx.symbolic_trace too (timm's tracer knows it already)


def local_residual(v: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """InLine's local residual: a 3x3 depthwise cross-correlation of `v [B, h, w, C]` with one kernel per sample and
    channel, `weights [B, 1, 1, C, 9]` (row-major taps), zeros beyond the map; `[B, h, w, C]`. Nine shifted products
    instead of the release's conv with the batch in the groups, so that export and TorchScript see fixed ops."""
    h, w = v.shape[1], v.shape[2]
    vp = F.pad(v, (0, 0, 1, 1, 1, 1))
    res = vp[:, 0:h, 0:w] * weights[..., 0]
    for j in range(1, 9):
        dy, dx = j // 3, j % 3
        res = res + vp[:, dy:dy + h, dx:dx + w] * weights[..., j]
    return res


@register_notrace_function
def inline_finish(
        out: torch.Tensor,
        qkv: torch.Tensor,
        pool: torch.Tensor,
        res_w1: torch.Tensor,
        res_b1: Optional[torch.Tensor],
        res_w2: torch.Tensor,
        res_b2: Optional[torch.Tensor],
        lepe_w: Optional[torch.Tensor],
        lepe_b: Optional[torch.Tensor],
        num_heads: int,
        geometry: List[int],
) -> torch.Tensor:
    """The attention output `[B', heads, N, d]` plus the local residual (and LePE), back to `[B, H, W, C]`.

    The residual: per window and channel a 3x3 kernel predicted from the mean of `pool` over the window's real
    tokens by the grouped 1x1 convs `res_w1` `[C, C / heads, 1]`, GELU, `res_w2` `[9C, C / heads, 1]`, applied to V
    with zeros beyond the window. An FX leaf: it decides on sizes.
    """
    B, H, W = qkv.shape[0], qkv.shape[1], qkv.shape[2]
    C = qkv.shape[3] // 3
    window, pad, shifts = geometry[0:2], geometry[2:4], geometry[4:6]
    Bw, N = out.shape[0], out.shape[2]
    v = _to_windows(qkv[..., 2 * C:], window, pad, shifts)  # [B', N, C]
    p = _to_windows(pool, window, pad, shifts)
    if pad[0] > 0 or pad[1] > 0:
        n = _to_windows(qkv.new_ones(1, H, W, 1).expand(B, H, W, 1), window, pad, shifts).sum(1)
        mean = p.sum(1) / n
    else:
        mean = p.mean(1)
    x = out.transpose(1, 2).reshape(Bw, N, C)
    wts = F.conv1d(mean.unsqueeze(-1), res_w1, res_b1, groups=num_heads)
    wts = F.conv1d(F.gelu(wts), res_w2, res_b2, groups=num_heads).reshape(Bw, 1, 1, C, 9)
    vi = v.reshape(Bw, window[0], window[1], C)
    x = x + local_residual(vi, wts).reshape(Bw, N, C)
    if lepe_w is not None:
        lepe = F.conv2d(vi.permute(0, 3, 1, 2), lepe_w, lepe_b, padding=1, groups=C)  # NHWC -> NCHW
        x = x + lepe.flatten(2).transpose(1, 2)
    return _from_windows(x, B, H, W, window, pad, shifts)


torch.fx.wrap('inline_finish')


class InLineAttention(nn.Module):
    """InLine attention (the token mixer), channels-last `[B, H, W, C]` in and out, any H, W."""
    takes_block_input: torch.jit.Final[bool]

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: Optional[int] = None,
            shift: bool = False,
            qkv_bias: bool = True,
            kernel_func: str = 'identity',
            lepe: bool = False,
            pool_block_input: bool = False,
            split_qkv: bool = False,
            proj_drop: float = 0.,
            backend: Optional[str] = None,
    ):
        """
        Args:
            dim: Channels in and out.
            num_heads: Heads; must divide `dim`.
            window_size: Window side (None: the whole map).
            shift: Shift the windows by half a window on axes longer than the window (Swin's odd blocks).
            qkv_bias: Bias in the qkv projection.
            kernel_func: Feature map of q and k: `identity` (the released models), `relu`, `leakyrelu`, `exp`.
            lepe: Add CSWin's LePE, a 3x3 depthwise conv of V (`get_v.0`; InLine-CSwin).
            pool_block_input: Predict the residual kernels from the block input before its norm (InLine-CSwin)
                instead of from the mixer's input.
            split_qkv: Separate `q` and `kv` projections (the PVT layout's keys) instead of one `qkv`.
            proj_drop: Dropout after the output projection.
            backend: Force a linear-attention backend (None: the op's dispatcher chooses).
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'num_heads={num_heads} must divide dim={dim}.')
        if kernel_func not in KERNEL_FUNCS:
            raise ValueError(f'kernel_func must be one of {KERNEL_FUNCS}, got {kernel_func!r}.')
        if window_size is not None and window_size < 1:
            raise ValueError(f'window_size must be None (the whole map) or >= 1, got {window_size}.')
        self.num_heads = num_heads
        self.window_size = window_size or 0
        self.shift = shift
        self.kernel_func = kernel_func
        self.takes_block_input = pool_block_input
        self.backend = backend or 'auto'
        if split_qkv:
            self.qkv = None
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
            self.q = self.kv = None
        # one-entry list: the key `get_v.0` of CSWin's LePE (`hiervit.backbones.cswin`), which the release shares
        self.get_v = nn.ModuleList([nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)]) if lepe else None
        self.residual = nn.Sequential(
            nn.Conv1d(dim, dim, kernel_size=1, groups=num_heads),
            nn.GELU(),
            nn.Conv1d(dim, dim * 9, kernel_size=1, groups=num_heads),
        )
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, block_input: Optional[torch.Tensor] = None) -> torch.Tensor:
        pool = block_input if block_input is not None and self.takes_block_input else x
        lepe_w: Optional[torch.Tensor] = None
        lepe_b: Optional[torch.Tensor] = None
        if self.get_v is not None:
            for conv in self.get_v:
                lepe_w, lepe_b = conv.weight, conv.bias
        r0, r2 = self.residual[0], self.residual[2]
        if self.qkv is not None:
            qkv = self.qkv(x)
        else:
            qkv = torch.cat([self.q(x), self.kv(x)], dim=-1)  # [B, H, W, 3C]: q, then k and v as `kv` lays them out
        q, k, v, add, normalizer, scale, geometry = inline_prepare(
            qkv, self.num_heads, self.window_size, self.shift, self.kernel_func)
        out = linear_attention_op(q, k, v, None, normalizer, 1e-6, 100., scale, self.backend) + add
        x = inline_finish(
            out, qkv, pool, r0.weight, r0.bias, r2.weight, r2.bias, lepe_w, lepe_b, self.num_heads, geometry)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        window = self.window_size or 'map'
        return f'num_heads={self.num_heads}, window_size={window}, shift={self.shift}, kernel={self.kernel_func}'


def stage_attn_types(attn_type: str, depths: Sequence[int]) -> List[List[str]]:
    """Per level and block `I` (InLine) or `S` (softmax) from the release's pattern: one letter per level, `M` for a
    level of n InLine blocks then softmax blocks, n written after the level letters (`IIMS2`)."""
    num_levels = len(depths)
    letters, rest = attn_type[:num_levels], attn_type[num_levels:]
    if len(letters) != num_levels or any(c not in 'ISM' for c in letters) or ('M' in letters) != bool(rest) \
            or (rest and not rest.isdigit()):
        raise ValueError(
            f'attn_type={attn_type!r} needs one of I (InLine), S (softmax), M (mixed) per level of '
            f'depths={tuple(depths)}, plus the number of InLine blocks of the M levels (e.g. "IIMS2").')
    n = int(rest) if rest else 0
    return [[('I' if j < n else 'S') if c == 'M' else c for j in range(depth)] for c, depth in zip(letters, depths)]


class InLineSwin(SwinLayout):
    """InLine-Swin: the Swin layout with InLine attention in the `I` stages and Swin window attention in the `S`
    stages."""

    def __init__(
            self,
            embed_dim: int = 96,
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            window_size: int = 56,
            attn_type: str = 'IIIS',
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            kernel_func: str = 'identity',
            proj_drop_rate: float = 0.,
            attn_backend: Optional[str] = None,
            **kwargs,
    ):
        """
        Args:
            embed_dim: Channels of the first level; doubled at every level.
            depths: Blocks per level.
            num_heads: Heads per level.
            window_size: InLine window (56 at 224 px: the whole map); the Swin stages use max(7, window_size // 8).
            attn_type: Stage pattern, e.g. `IIIS` (T), `IISS` (S), `IIMS2` (B); see `stage_attn_types`.
            mlp_ratio: MLP hidden width / dim.
            qkv_bias: Bias in the qkv projections.
            qk_scale: Logit scale of the Swin stages (head_dim ** -0.5 when None; InLine always uses that).
            kernel_func: InLine's feature map of q and k.
            proj_drop_rate: Dropout after the attention projection and in the MLP (the official `drop_rate`).
            attn_backend: Force the backend of the attention ops (None: their dispatchers choose).
            **kwargs: Any other `HierarchicalTransformer` argument (`num_classes`, `drop_path_rate`, ...).
        """
        types = stage_attn_types(attn_type, depths)
        softmax_window = max(7, window_size // 8)

        def mixer(level: int, dim: int, heads: int, block: int) -> nn.Module:
            if types[level][block] == 'I':
                return InLineAttention(
                    dim, heads, window_size=window_size, shift=block % 2 == 1, qkv_bias=qkv_bias,
                    kernel_func=kernel_func, proj_drop=proj_drop_rate, backend=attn_backend)
            return SwinWindowAttention(
                dim, heads, window_size=softmax_window, shift=block % 2 == 1, qkv_bias=qkv_bias,
                qk_scale=qk_scale, proj_drop=proj_drop_rate, backend=attn_backend)

        super().__init__(
            level_mixers(mixer, len(depths)), embed_dim=embed_dim, depths=depths, num_heads=num_heads,
            mlp_ratio=mlp_ratio, proj_drop_rate=proj_drop_rate, **kwargs)
        self.window_size = window_size
        self.attn_type = attn_type


class InLineCSWin(CSWinLayout):
    """InLine-CSwin: the CSWin layout with whole-map InLine attention (plus LePE) in the `I` stages and CSWin's
    cross-shaped windows in the `S` stages."""

    def __init__(
            self,
            embed_dim: int = 64,
            depths: Sequence[int] = (2, 4, 18, 1),
            num_heads: Sequence[int] = (2, 4, 8, 16),
            split_size: Sequence[int] = (1, 2, 7, 7),
            attn_type: str = 'IISS',
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            kernel_func: str = 'identity',
            proj_drop_rate: float = 0.,
            attn_backend: Optional[str] = None,
            **kwargs,
    ):
        """
        Args:
            embed_dim: Channels of the first level; doubled at every level.
            depths: Blocks per level.
            num_heads: Heads per level (even in the stripe levels but the last).
            split_size: CSWin stripe width per level (for the `S` stages; the last level attends over the whole map).
            attn_type: Stage pattern (`IISS` for every released variant); see `stage_attn_types`.
            mlp_ratio: MLP hidden width / dim.
            qkv_bias: Bias in the qkv projections.
            qk_scale: Logit scale of the CSWin stages (head_dim ** -0.5 when None).
            kernel_func: InLine's feature map of q and k.
            proj_drop_rate: Dropout after the attention projection and in the MLP (the official `drop_rate`).
            attn_backend: Force the backend of the attention ops (None: their dispatchers choose).
            **kwargs: Any other `HierarchicalTransformer` argument (`num_classes`, `drop_path_rate`, ...).
        """
        if len(split_size) != len(depths):
            raise ValueError(f'split_size={tuple(split_size)} needs one stripe width per level of '
                             f'depths={tuple(depths)}.')
        types = stage_attn_types(attn_type, depths)
        last = len(depths) - 1

        def mixer(level: int, dim: int, heads: int, block: int) -> nn.Module:
            if types[level][block] == 'I':
                return InLineAttention(
                    dim, heads, window_size=None, qkv_bias=qkv_bias, kernel_func=kernel_func, lepe=True,
                    pool_block_input=True, proj_drop=proj_drop_rate, backend=attn_backend)
            return _cswin.CSWinAttention(
                dim, heads, split_size=split_size[level], full=level == last, qkv_bias=qkv_bias,
                qk_scale=qk_scale, proj_drop=proj_drop_rate, backend=attn_backend)

        super().__init__(
            level_mixers(mixer, len(depths)), embed_dim=embed_dim, depths=depths, num_heads=num_heads,
            mlp_ratio=mlp_ratio, proj_drop_rate=proj_drop_rate, **kwargs)
        self.split_size = tuple(split_size)
        self.attn_type = attn_type


class InLinePVT(PVTLayout):
    """InLine-PVT: the PVT v1 layout with whole-map InLine attention in every block (the release's pattern `IIII`
    with `la_sr_ratios` 1111, i.e. no spatial reduction)."""

    def __init__(
            self,
            embed_dims: Sequence[int] = (64, 128, 320, 512),
            depths: Sequence[int] = (2, 2, 2, 2),
            num_heads: Sequence[int] = (2, 4, 10, 16),
            mlp_ratios: Sequence[float] = (8., 8., 4., 4.),
            qkv_bias: bool = True,
            kernel_func: str = 'identity',
            proj_drop_rate: float = 0.,
            attn_backend: Optional[str] = None,
            **kwargs,
    ):
        """
        Args:
            embed_dims: Channels per stage.
            depths: Blocks per stage.
            num_heads: Heads per stage (the release doubles PVT's: 2-4-10-16).
            mlp_ratios: MLP hidden width / dim per stage.
            qkv_bias: Bias in the q and kv projections.
            kernel_func: InLine's feature map of q and k (the release's PVT has only the identity).
            proj_drop_rate: Dropout after the attention projection and in the MLP (the official `drop_rate`).
            attn_backend: Force a linear-attention backend (None: the op's dispatcher chooses).
            **kwargs: Any other `PVTLayout` argument (`img_size`, `num_classes`, `drop_path_rate`, ...).
        """
        def mixer(stage: int, dim: int, heads: int, block: int) -> nn.Module:
            return InLineAttention(
                dim, heads, window_size=None, qkv_bias=qkv_bias, kernel_func=kernel_func, split_qkv=True,
                proj_drop=proj_drop_rate, backend=attn_backend)

        super().__init__(
            level_mixers(mixer, len(depths)), embed_dims=embed_dims, depths=depths, num_heads=num_heads,
            mlp_ratios=mlp_ratios, proj_drop_rate=proj_drop_rate, **kwargs)


def _resize_tables(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Swin-stage bias tables of another window size, resized (bicubic, timm's rule) to the model's."""
    target = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        if k.endswith('relative_position_bias_table') and k in target and v.shape != target[k].shape:
            w_new = (int(round(target[k].shape[0] ** 0.5)) + 1) // 2
            v = resize_rel_pos_bias_table(v, new_window_size=(w_new, w_new), new_bias_shape=target[k].shape)
        out[k] = v
    return out


def _pvt_filter(state_dict: Dict[str, Any], model: InLinePVT) -> Dict[str, torch.Tensor]:
    for key in ('model', 'state_dict'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
    target = model.state_dict()
    if any(k.startswith('stages.') for k in state_dict):  # already in this layout
        out = dict(state_dict)
    else:
        out = {pvt_official_key(k): v for k, v in state_dict.items()}
    if 'head.fc.weight' not in target:
        out = {k: v for k, v in out.items() if not k.startswith('head.fc.')}
    check_checkpoint_keys(
        out, target, model_description(model, 'InLine-PVT'), reshapable=('patch_embed.proj.weight',),
        variants='The variants differ in depths (hiervit.backbones.inline._VARIANT_ARGS).')
    return out


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Convert a released InLine-Swin, InLine-CSwin or InLine-PVT checkpoint (`model`, or the EMA weights
    `state_dict_ema` of the CSwin files, which the release evaluates) to this model's layout, or raise a ValueError
    saying what does not fit. Swin-stage bias tables of another window are resized; the release's index and mask
    buffers are dropped."""
    if isinstance(model, InLinePVT):
        return _pvt_filter(state_dict, model)
    if isinstance(model, InLineCSWin):
        return _resize_tables(_cswin.checkpoint_filter_fn(state_dict, model), model)
    for key in ('model', 'state_dict'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
    state_dict = {k: v for k, v in state_dict.items() if not re.search(r'(relative_position_index|attn_mask)$', k)}
    if any(k.startswith('levels.') for k in state_dict):  # already in this layout
        return _resize_tables(state_dict, model)
    swin_variants = {k: v for k, v in _VARIANT_ARGS.items() if k.startswith('inline_swin')}  # for the error message
    out = convert_official_checkpoint(state_dict, model, 'layers.', swin_variants)
    return _resize_tables(out, model)


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    # the release's data pipeline (data/build.py, Swin and CSwin alike): bicubic, resize 256/224 then centre crop
    # (TEST.CROP), ImageNet mean/std
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': .875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head.fc', 'license': 'unknown',
        'origin_url': 'https://github.com/LeapLabTHU/InLine', 'paper_ids': 'arXiv:2412.06590',
        'notes': ('The official code and weights carry no license.',), **kwargs,
    }


_URL = 'https://cloud.tsinghua.edu.cn/f/{}/?dl=1'


_NO_WEIGHTS = ('The official code carries no license.', 'The release links no weights for this variant.')


def _url(key: str, name: str):
    # TsinghuaCloud links all end in `/?dl=1`: each file gets its own cache name
    return _URL.format(key), name


default_cfgs = generate_default_cfgs({
    'inline_swin_tiny.in1k': _cfg(url=_url('32810869fcc34410966b', 'inline_swin_tiny.pth')),
    'inline_swin_small.in1k': _cfg(url=_url('e9657fd247c04c7cb1a1', 'inline_swin_small.pth')),
    'inline_swin_base.in1k': _cfg(url=_url('bf23564bb64c420aafe1', 'inline_swin_base.pth')),
    # cfgs/inline_swin_b_384.yaml: TEST.CROP False
    'inline_swin_base_384': _cfg(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0, notes=_NO_WEIGHTS),
    'inline_cswin_tiny.in1k': _cfg(url=_url('49fa2ecc543647c4b970', 'inline_cswin_tiny.pth')),
    'inline_cswin_small.in1k': _cfg(url=_url('59f4e65f776f4052b93c', 'inline_cswin_small.pth')),
    'inline_cswin_base.in1k': _cfg(url=_url('91e17121df284ae38521', 'inline_cswin_base.pth')),
    'inline_cswin_base_384': _cfg(input_size=(3, 384, 384), pool_size=(12, 12), notes=_NO_WEIGHTS),
    'inline_pvt_tiny.in1k': _cfg(url=_url('90ac52b1555b401eb5e6', 'inline_pvt_tiny.pth')),
    'inline_pvt_small.in1k': _cfg(url=_url('1ab953b2479d433080a3', 'inline_pvt_small.pth')),
    'inline_pvt_medium.in1k': _cfg(url=_url('a72aec31e6084bc0a280', 'inline_pvt_medium.pth')),
    'inline_pvt_large.in1k': _cfg(url=_url('efd91318ba964f01b288', 'inline_pvt_large.pth')),
})

# Architecture arguments of every entrypoint (the release's cfgs/*.yaml and models/*.py) with its training drop path.
_VARIANT_ARGS: Dict[str, Dict[str, Any]] = {
    'inline_swin_tiny': dict(
        embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=56, attn_type='IIIS',
        drop_path_rate=0.2),
    'inline_swin_small': dict(
        embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=56, attn_type='IISS',
        drop_path_rate=0.3),
    'inline_swin_base': dict(
        embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=56, attn_type='IIMS2',
        drop_path_rate=0.5),
    'inline_swin_base_384': dict(
        embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=96, attn_type='IIMS2',
        drop_path_rate=0.5),
    'inline_cswin_tiny': dict(
        embed_dim=64, depths=(2, 4, 18, 1), num_heads=(2, 4, 8, 16), split_size=(1, 2, 7, 7), attn_type='IISS',
        drop_path_rate=0.2),
    'inline_cswin_small': dict(
        embed_dim=64, depths=(3, 6, 29, 2), num_heads=(2, 4, 8, 16), split_size=(1, 2, 7, 7), attn_type='IISS',
        drop_path_rate=0.4),
    'inline_cswin_base': dict(
        embed_dim=96, depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32), split_size=(1, 2, 7, 7), attn_type='IISS',
        drop_path_rate=0.5),
    'inline_cswin_base_384': dict(
        embed_dim=96, depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32), split_size=(1, 2, 12, 12), attn_type='IISS',
        drop_path_rate=0.7),
    # models/inline_pvt.py with cfgs/inline_pvt_{t,s,m,b}.yaml (the release's `large` is its config `b`)
    'inline_pvt_tiny': dict(depths=(2, 2, 2, 2), drop_path_rate=0.1),
    'inline_pvt_small': dict(depths=(3, 4, 6, 3), drop_path_rate=0.1),
    'inline_pvt_medium': dict(depths=(3, 4, 18, 3), drop_path_rate=0.3),
    'inline_pvt_large': dict(depths=(3, 8, 27, 3), drop_path_rate=0.3),
}


def _create_variant(variant: str, pretrained: bool, kwargs: Dict[str, Any]) -> nn.Module:
    if variant.startswith('inline_pvt'):
        # the PVT layout's stage outputs are the features (no per-output norms, as the official PVT backbones)
        return build_hierarchical_model(
            InLinePVT, variant, pretrained, checkpoint_filter_fn, dict(_VARIANT_ARGS[variant], **kwargs),
            channels_last=True)
    cls = InLineCSWin if variant.startswith('inline_cswin') else InLineSwin
    return build_layout_model(cls, variant, pretrained, checkpoint_filter_fn, _VARIANT_ARGS[variant], **kwargs)


@register_model
def inline_swin_tiny(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-T @ 224, ImageNet-1k (cfgs/inline_swin_t.yaml, pattern IIIS)."""
    return _create_variant('inline_swin_tiny', pretrained, kwargs)


@register_model
def inline_swin_small(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-S @ 224, ImageNet-1k (cfgs/inline_swin_s.yaml, pattern IISS)."""
    return _create_variant('inline_swin_small', pretrained, kwargs)


@register_model
def inline_swin_base(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-B @ 224, ImageNet-1k (cfgs/inline_swin_b.yaml, pattern IIMS2)."""
    return _create_variant('inline_swin_base', pretrained, kwargs)


@register_model
def inline_swin_base_384(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-B @ 384 (InLine window 96, Swin window 12; cfgs/inline_swin_b_384.yaml, no released weights)."""
    return _create_variant('inline_swin_base_384', pretrained, kwargs)


@register_model
def inline_cswin_tiny(pretrained: bool = False, **kwargs) -> InLineCSWin:
    """InLine-CSwin-T @ 224, ImageNet-1k (cfgs/inline_cswin_t.yaml, depths 2-4-18-1)."""
    return _create_variant('inline_cswin_tiny', pretrained, kwargs)


@register_model
def inline_cswin_small(pretrained: bool = False, **kwargs) -> InLineCSWin:
    """InLine-CSwin-S @ 224, ImageNet-1k (cfgs/inline_cswin_s.yaml, depths 3-6-29-2)."""
    return _create_variant('inline_cswin_small', pretrained, kwargs)


@register_model
def inline_cswin_base(pretrained: bool = False, **kwargs) -> InLineCSWin:
    """InLine-CSwin-B @ 224, ImageNet-1k (cfgs/inline_cswin_b.yaml, depths 3-6-29-2)."""
    return _create_variant('inline_cswin_base', pretrained, kwargs)


@register_model
def inline_cswin_base_384(pretrained: bool = False, **kwargs) -> InLineCSWin:
    """InLine-CSwin-B @ 384 (stripes 12; cfgs/inline_cswin_b_384.yaml, no released weights)."""
    return _create_variant('inline_cswin_base_384', pretrained, kwargs)


@register_model
def inline_pvt_tiny(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-T @ 224, ImageNet-1k (cfgs/inline_pvt_t.yaml, depths 2-2-2-2)."""
    return _create_variant('inline_pvt_tiny', pretrained, kwargs)


@register_model
def inline_pvt_small(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-S @ 224, ImageNet-1k (cfgs/inline_pvt_s.yaml, depths 3-4-6-3)."""
    return _create_variant('inline_pvt_small', pretrained, kwargs)


@register_model
def inline_pvt_medium(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-M @ 224, ImageNet-1k (cfgs/inline_pvt_m.yaml, depths 3-4-18-3)."""
    return _create_variant('inline_pvt_medium', pretrained, kwargs)


@register_model
def inline_pvt_large(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-L @ 224, ImageNet-1k (cfgs/inline_pvt_b.yaml, depths 3-8-27-3)."""
    return _create_variant('inline_pvt_large', pretrained, kwargs)
