"""VWFormer's decode heads (`hiervit.VWHead`, `hiervit.VWCityHead`) for mmseg 1.x, on the window op's context mode.

"Multi-Scale Representations by Varying Window Attention for Semantic Segmentation" (Yan et al., ICLR 2024,
arXiv 2404.16573; official code yan-hao-tian/VW, MIT, `mmsegmentation-custom/mmseg/models/decode_heads/vw_head.py`,
written for mmseg 0.x). The structure and the released checkpoints' head keys are the official head's:

1. SegFormer-style MLP fusion: `linear_c4/c3/c2` (per-pixel linear to `channels`), bilinear to the 1/8 map,
   `linear_fuse` (1x1 conv, BN, ReLU over the concatenation).
2. Multi-scale block on the 1/8 map x (H, W multiples of 8: a fixed 8 x 8 grid of p x p query windows): a short path
   (1x1 conv), image pooling, and one varying-window branch per ratio R in (2, 4, 8). A branch pre-scales the map
   (`ds`: zero padding (R/2 - 1, R/2), R x R conv to channels / R^2, BN, ReLU), so each query window's R p x R p
   context (copy-shift padded at the border) becomes p x p key tokens of R x R pixels each (the official
   `varying_context_window` + space-to-depth), projected by `phi` / `g`, and attended by `theta(x)` with
   `nheads` heads (`attn.{j}`, mmcv NonLocal2d-style, scaled embedded Gaussian, no residual inside; `conv_out` 1x1
   conv + BN). With `short_cut` x is added to each branch. `cat`: 1x1 conv over the five maps.
3. Low-level fusion: bilinear to the 1/4 map, concatenated with `linear_c1` (48 channels), `low_level_fuse`.

How it runs here: the copy-shift padding is one gather of the pre-scaled map, and `phi` / `g` (linear maps of each
token's R x R pixels) are R x R convolutions over that extended map at stride s = gcd(p, R); query window i then
attends to p key tokens at stride R / s starting at token i p / s, i.e. `context_window_attention` with context p,
stride p / s and dilation R / s on a key map (much) smaller than the official unfolded contexts (the overlap of
neighbouring windows' contexts is computed once). The released 1x1 `phi` / `g` weights `[C, R^2 C / R^2, 1, 1]` are
the same numbers as these R x R kernels in space-to-depth order (row, column, channel): `convert_vw_head_checkpoint`
(also a `load_state_dict` pre-hook, so `load_from=` a released checkpoint works) reshapes them. Parameter count and
outputs equal the official head's (tests/test_vw_head.py re-states it). The official head hard-codes SyncBN in most
ConvModules; here every norm is `norm_cfg` (the configs pass SyncBN, as the official configs do). Initialisation as
the official: theta N(0, 0.01), conv_out's BN zero (NonLocal2d), phi / g / other convs kaiming (ConvModule).

`VWCityHead` is the official Cityscapes variant (same file): conv + BN + ReLU projections, no image pooling, and
`nn.MultiheadAttention`'s parameters for the attention of each branch, run the same way (see its docstring).

Needs mmseg (the `seg` extra); on CPU installs with mmcv-lite importing this module installs the torchvision ops
stand-in first (`install_tv_ops`), which mmseg's import needs.
"""
import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from hiervit.kernels.window import context_window_attention_op, shift_coords
from hiervit.registry import MODELS

from .tv_ops import install_tv_ops

install_tv_ops()  # mmseg imports mmcv.ops at module level; a no-op with a full mmcv build

from mmcv.cnn import ConvModule  # noqa: E402
from mmseg.models.decode_heads.decode_head import BaseDecodeHead  # noqa: E402
from mmseg.models.utils import resize  # noqa: E402

__all__ = ['VWHead', 'VWCityHead', 'convert_vw_head_checkpoint']

WINDOWS = 8  # query windows per axis of the 1/8 map, fixed in the official head


class _Linear(nn.Module):
    """Per-pixel linear layer on an NCHW map (SegFormer's MLP; key `proj`)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.proj.weight[:, :, None, None], self.proj.bias)


class _VaryingWindowAttention(nn.Module):
    """One varying-window branch's attention: queries theta(x) in p x p windows, keys phi / values g of the
    pre-scaled, copy-shift padded context (R x R pixels per token), `conv_out` (1x1 conv + norm) after."""

    def __init__(self, channels: int, ratio: int, num_heads: int, norm_cfg: dict):
        super().__init__()
        if channels % (ratio * ratio) or channels % num_heads:
            raise ValueError(f'VWHead: channels={channels} must be divisible by every ratio squared ({ratio}^2) and '
                             f'by nheads={num_heads}.')
        self.ratio, self.num_heads = ratio, num_heads
        reduced = channels // (ratio * ratio)
        self.theta = ConvModule(channels, channels, 1, act_cfg=None)
        self.phi = ConvModule(reduced, channels, ratio, act_cfg=None)
        self.g = ConvModule(reduced, channels, ratio, act_cfg=None)
        self.conv_out = ConvModule(channels, channels, 1, norm_cfg=norm_cfg, act_cfg=None)
        # The official module's initialisation: NonLocal2d's (theta N(0, 0.01), conv_out's norm zero) and, for phi / g,
        # the kaiming init of a 1x1 ConvModule with `channels` outputs (fan-out C, not C R^2 as these kernels have).
        nn.init.normal_(self.theta.conv.weight, 0., 0.01)
        nn.init.zeros_(self.theta.conv.bias)
        for m in (self.phi, self.g):
            nn.init.normal_(m.conv.weight, 0., math.sqrt(2. / channels))
            nn.init.zeros_(m.conv.bias)
        for p in (self.conv_out.norm.parameters() if self.conv_out.with_norm else self.conv_out.conv.parameters()):
            nn.init.zeros_(p)

    def forward(self, x: Tensor, context: Tensor, window: Tuple[int, int]) -> Tensor:
        out = _varying_window_attention(self.theta(x), context, window, self.ratio, self.num_heads,
                                        self.phi.conv.weight, self.phi.conv.bias, self.g.conv.weight, self.g.conv.bias)
        return self.conv_out(out)


class _WindowMultiheadAttention(nn.Module):
    """VWCityHead's varying-window attention: `nn.MultiheadAttention`'s parameters (`in_proj_weight` [3C, C],
    `in_proj_bias`, `out_proj`; its keys and initialisation) on p x p query windows of the map and the pre-scaled,
    copy-shift padded context (one key token of C = R^2 c channels per R x R pixels, as in `VWHead`): the query
    projection is a 1x1 conv of the map, the key/value projections are the R x R kernels those linear maps are."""

    def __init__(self, channels: int, ratio: int, num_heads: int):
        super().__init__()
        if channels % (ratio * ratio) or channels % num_heads:
            raise ValueError(f'VWCityHead: channels={channels} must be divisible by every ratio squared ({ratio}^2) '
                             f'and by nheads={num_heads}.')
        self.ratio, self.num_heads = ratio, num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * channels, channels))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * channels))
        self.out_proj = nn.Linear(channels, channels)
        # nn.MultiheadAttention's initialisation (out_proj's weight keeps nn.Linear's)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, context: Tensor, window: Tuple[int, int]) -> Tensor:
        C, r = x.shape[1], self.ratio
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        # [C, R^2 c] over (row, column, channel) space-to-depth channels -> the [C, c, R, R] kernel it is
        wk, wv = (w.view(C, r, r, C // (r * r)).permute(0, 3, 1, 2) for w in (wk, wv))
        out = _varying_window_attention(F.conv2d(x, wq[:, :, None, None], bq), context, window, r, self.num_heads,
                                        wk, bk, wv, bv)
        return F.conv2d(out, self.out_proj.weight[:, :, None, None], self.out_proj.bias)


def _varying_window_attention(q: Tensor, context: Tensor, window: Tuple[int, int], ratio: int, heads: int,
                              k_weight: Tensor, k_bias: Tensor, v_weight: Tensor, v_bias: Tensor) -> Tensor:
    """Projected queries q [B, C, H, W] in p x p windows attend to their R p x R p context of the pre-scaled map
    `context` [B, c, H, W] (copy-shift padded here), whose R x R pixel tokens the R x R kernels `k_weight` /
    `v_weight` [C, c, R, R] project; returns [B, C, H, W] (channels split head-major, scale (C / heads)^-0.5)."""
    B, C, H, W = q.shape
    r = ratio
    # copy-shift padding: (R p - (R + 1) p // 2) pixels each side, copied from R p further in
    pads = [r * p - (r + 1) * p // 2 for p in window]
    ys, xs = (shift_coords(torch.arange(L + 2 * pad, device=q.device) - pad, L, r * p)
              for L, pad, p in zip((H, W), pads, window))
    context = context.index_select(2, ys).index_select(3, xs)
    step = [math.gcd(p, r) for p in window]
    k = F.conv2d(context, k_weight, k_bias, stride=step)
    v = F.conv2d(context, v_weight, v_bias, stride=step)
    # [B, C, H, W] -> heads-last [B, H, W, heads, C / heads] (channels split head-major, as the official)
    q, k, v = (t.reshape(B, heads, C // heads, *t.shape[2:]).permute(0, 3, 4, 1, 2) for t in (q, k, v))
    out = context_window_attention_op(
        q, k, v, list(window), list(window), [p // s for p, s in zip(window, step)], [0, 0],
        [r // s for s in step], 'zeros', (C // heads) ** -0.5)
    return out.permute(0, 3, 4, 1, 2).reshape(B, C, H, W)


def _window(head: str, H: int, W: int) -> Tuple[int, int]:
    """The query window (p_h, p_w) of the fixed 8 x 8 grid on the 1/8 map, or an error saying how to size inputs."""
    if H % WINDOWS or W % WINDOWS:
        raise ValueError(
            f'{head}: the 1/8-scale map is {H}x{W}; it must be divisible by {WINDOWS} on both sides (its fixed '
            f'{WINDOWS}x{WINDOWS} window grid), i.e. the input a multiple of 64 px (pad it: size_divisor=64 in '
            f'the data preprocessor, or crop/test sizes such as 512 or 640).')
    return H // WINDOWS, W // WINDOWS


def _prescale_pad(x: Tensor, r: int) -> Tensor:
    """The official padding before the R x R pre-scaling conv: (R/2 - 1, R/2) for even R, R // 2 both sides for odd
    R, so the conv keeps the map's size."""
    before, after = (r // 2 - 1, r // 2) if r % 2 == 0 else (r // 2, r // 2)
    return F.pad(x, [before, after, before, after])


@MODELS.register_module()
class VWHead(BaseDecodeHead):
    """VWFormer's decode head (see the module docstring). Takes the four backbone levels (strides 4, 8, 16, 32).

    Args:
        short_cut: Add the 1/8 map to each varying-window branch (the official ADE20K configs: True).
        nheads: Attention heads of the varying-window attention (official ADE20K configs: 1).
        ratios: Context enlargement ratios R, one branch each (official: 2, 4, 8).
        **kwargs: `BaseDecodeHead` arguments (`in_channels` four widths, `channels`, `num_classes`, `norm_cfg`, ...).
    """

    def __init__(self, short_cut: bool = True, nheads: int = 1, ratios: Sequence[int] = (2, 4, 8), **kwargs):
        if kwargs.get('input_transform', 'multiple_select') != 'multiple_select':
            raise ValueError('VWHead reads all four levels: input_transform must be multiple_select (the default).')
        kwargs['input_transform'] = 'multiple_select'
        super().__init__(**kwargs)
        if len(self.in_channels) != 4:
            raise ValueError(f'VWHead needs four input levels (strides 4, 8, 16, 32), got in_channels='
                             f'{self.in_channels}.')
        C = self.channels
        self.short_cut, self.ratios = short_cut, tuple(ratios)
        self.linear_c4 = _Linear(self.in_channels[3], C)
        self.linear_c3 = _Linear(self.in_channels[2], C)
        self.linear_c2 = _Linear(self.in_channels[1], C)
        self.linear_fuse = ConvModule(3 * C, C, 1, norm_cfg=self.norm_cfg)
        self.attn = nn.ModuleList([_VaryingWindowAttention(C, r, nheads, self.norm_cfg) for r in self.ratios])
        self.ds = nn.ModuleList([ConvModule(C, C // (r * r), r, norm_cfg=self.norm_cfg) for r in self.ratios])
        self.short_path = ConvModule(C, C, 1, norm_cfg=self.norm_cfg)
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            ConvModule(C, C, 1, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg))
        self.cat = ConvModule((2 + len(self.ratios)) * C, C, 1, norm_cfg=self.norm_cfg)
        self.linear_c1 = _Linear(self.in_channels[0], 48)
        self.low_level_fuse = ConvModule(C + 48, C, 1, norm_cfg=self.norm_cfg)
        self._register_load_state_dict_pre_hook(self._convert_on_load)

    def _multi_scale(self, x: Tensor) -> Tensor:
        H, W = x.shape[2:]
        window = _window(type(self).__name__, H, W)
        outs = [self.short_path(x), resize(self.image_pool(x), size=(H, W), mode='bilinear',
                                           align_corners=self.align_corners)]
        for r, ds, attn in zip(self.ratios, self.ds, self.attn):
            y = attn(x, ds(_prescale_pad(x, r)), window)
            outs.append(y + x if self.short_cut else y)
        return self.cat(torch.cat(outs, 1))

    def forward(self, inputs: List[Tensor]) -> Tensor:
        c1, c2, c3, c4 = self._transform_inputs(inputs)
        size = c2.shape[2:]
        c4 = resize(self.linear_c4(c4), size=size, mode='bilinear', align_corners=False)
        c3 = resize(self.linear_c3(c3), size=size, mode='bilinear', align_corners=False)
        x = self._multi_scale(self.linear_fuse(torch.cat([c4, c3, self.linear_c2(c2)], 1)))
        x = resize(x, size=c1.shape[2:], mode='bilinear', align_corners=False)
        return self.cls_seg(self.low_level_fuse(torch.cat([x, self.linear_c1(c1)], 1)))

    def _convert_on_load(self, state_dict, prefix, *args) -> None:
        converted = convert_vw_head_checkpoint(
            {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}, self.ratios)
        for k, v in converted.items():
            state_dict[prefix + k] = v


@MODELS.register_module()
class VWCityHead(BaseDecodeHead):
    """VWFormer's Cityscapes decode head (the official `VWCityHead` of the same `vw_head.py`, used by every official
    Cityscapes config). It differs from `VWHead`: every projection (`linear_c1..c4`, `linear_fuse`, `short_path`,
    `cat`, `low_level_fuse`, `ds`) is a 1x1 (`ds`: R x R) conv + norm + activation, levels 3-4 are resized to the 1/8
    map by nearest neighbour, there is no image pooling (`cat` reads four maps), and the attention of each branch is
    `nn.MultiheadAttention` (`attn.{j}.in_proj_weight`, `.in_proj_bias`, `.out_proj`; the query is the fused map,
    projected by the in-projection) over the same pre-scaled, copy-shift padded contexts. Its keys are the released
    checkpoints' as they are (no conversion: the in-projection's key/value rows are reshaped at run time).

    Args:
        short_cut: Add the 1/8 map to each varying-window branch (the official Cityscapes configs: False).
        nheads: Attention heads (official: 1 in `vw_cityscapes_convnext.py`, 16 in the ConvNeXt-T/S/B files).
        ratios: Context enlargement ratios R, one branch each (official: 2, 4, 8).
        **kwargs: `BaseDecodeHead` arguments (`in_channels` four widths, `channels`, `num_classes`, `norm_cfg`, ...).
    """

    def __init__(self, short_cut: bool = False, nheads: int = 1, ratios: Sequence[int] = (2, 4, 8), **kwargs):
        if kwargs.get('input_transform', 'multiple_select') != 'multiple_select':
            raise ValueError('VWCityHead reads all four levels: input_transform must be multiple_select (the '
                             'default).')
        kwargs['input_transform'] = 'multiple_select'
        super().__init__(**kwargs)
        if len(self.in_channels) != 4:
            raise ValueError(f'VWCityHead needs four input levels (strides 4, 8, 16, 32), got in_channels='
                             f'{self.in_channels}.')
        C = self.channels
        self.short_cut, self.ratios = short_cut, tuple(ratios)
        conv = lambda i, o, k=1: ConvModule(i, o, k, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)  # noqa: E731
        self.linear_c4 = conv(self.in_channels[3], C)
        self.linear_c3 = conv(self.in_channels[2], C)
        self.linear_c2 = conv(self.in_channels[1], C)
        self.linear_c1 = conv(self.in_channels[0], 48)
        self.linear_fuse = conv(3 * C, C)
        self.short_path = conv(C, C)
        self.cat = conv((1 + len(self.ratios)) * C, C)
        self.low_level_fuse = conv(C + 48, C)
        self.attn = nn.ModuleList([_WindowMultiheadAttention(C, r, nheads) for r in self.ratios])
        self.ds = nn.ModuleList([conv(C, C // (r * r), r) for r in self.ratios])

    def forward(self, inputs: List[Tensor]) -> Tensor:
        c1, c2, c3, c4 = self._transform_inputs(inputs)
        size = c2.shape[2:]
        c4 = F.interpolate(self.linear_c4(c4), size=size, mode='nearest')
        c3 = F.interpolate(self.linear_c3(c3), size=size, mode='nearest')
        x = self.linear_fuse(torch.cat([c4, c3, self.linear_c2(c2)], 1))
        window = _window(type(self).__name__, *x.shape[2:])
        outs = [self.short_path(x)]
        for r, ds, attn in zip(self.ratios, self.ds, self.attn):
            y = attn(x, ds(_prescale_pad(x, r)), window)
            outs.append(y + x if self.short_cut else y)
        x = F.interpolate(self.cat(torch.cat(outs, 1)), size=c1.shape[2:], mode='bilinear', align_corners=False)
        return self.cls_seg(self.low_level_fuse(torch.cat([x, self.linear_c1(c1)], 1)))


def convert_vw_head_checkpoint(state_dict: Dict[str, Tensor], ratios: Sequence[int] = (2, 4, 8)
                               ) -> Dict[str, Tensor]:
    """The released VWFormer head keys (`decode_head.` stripped or not) in hiervit's layout: `attn.{j}.phi` / `.g`
    1x1 weights over space-to-depth channels `[C, R^2 c, 1, 1]` (c = C / R^2, order row, column, channel) become the
    R x R kernels `[C, c, R, R]` they are. Every other key (and already converted ones) is returned unchanged."""
    out = dict(state_dict)
    for key, w in state_dict.items():
        parts = key.split('.')
        if (len(parts) >= 5 and parts[-5] == 'attn' and parts[-3] in ('phi', 'g') and parts[-1] == 'weight'
                and w.dim() == 4 and w.shape[2:] == (1, 1)):
            r = ratios[int(parts[-4])]
            C, cin = w.shape[:2]
            if cin % (r * r):
                raise ValueError(f'convert_vw_head_checkpoint: {key} {tuple(w.shape)} has {cin} input channels, not '
                                 f'a multiple of R^2 = {r * r} for ratio {r}.')
            out[key] = w.reshape(C, r, r, cin // (r * r)).permute(0, 3, 1, 2).contiguous()
    return out
