"""Window attention: attention inside non-overlapping rectangular windows of a 2-D map (Swin windows, CSWin stripes,
bias-free local windows), with Swin's cyclic shift and relative position bias.

    out = window_attention(q, k, v, window_size, shift_size=0, rpb=None, scale=None, padding='mask',
                           pad_position='end', backend=None)

Layout is heads-last like the other ops: q, k `[B, H, W, heads, d]`, v `[B, H, W, heads, dv]`; the output has the
shape of v. `window_size` is `(wh, ww)` (an int for square windows); `None` on an axis means the whole axis, so CSWin's
vertical stripes of width sw are `(None, sw)` and its horizontal ones `(sw, None)`.

Semantics (one definition for every backend; `reference.py` is it written out):

1. Padding: an axis of length L not divisible by its window w is padded to the next multiple with p = -L mod w zero
   tokens, all at the end (`pad_position='end'`, bottom/right) or split `p // 2` before and the rest after
   (`'center'`, as CSWin's segmentation backbone). With `padding='mask'` real queries never attend to padding keys;
   with `padding='zeros'` the padding tokens take part as zero tokens (key logit = bias only, value 0), which
   reproduces models trained with unmasked zero padding of q, k, v. Padding rows are cropped from the output.
2. Shift: the padded map is cyclically shifted by (-sy, -sx) (`torch.roll`), so window (i, j) of the rolled map
   covers padded rows `[i wh + sy, (i + 1) wh + sy)` mod Hp; Swin's region mask applies: on each axis of the rolled
   map the slices `[0, Hp - wh)`, `[Hp - wh, Hp - sy)`, `[Hp - sy, Hp)` are separate regions (when sy > 0), and a
   query never attends to a key of another region. 0 <= shift < window on each axis.
3. Logits `scale * q . k + rpb[idx(q, k), head]` with Swin's table `rpb: [(2wh - 1)(2ww - 1), heads]` and index
   `(yq - yk + wh - 1)(2ww - 1) + (xq - xk + ww - 1)` over in-window coordinates (timm's / Swin's
   `relative_position_index`, so Swin-layout checkpoints load as they are). Softmax per query over its window.

The region mask and the padding mask are exact masks (-inf), where Swin adds -100: the results agree to fp32
precision (e^-100 relative to a real logit).

Context mode (`context_window_attention`): each query window attends to its own key/value window, which may be
larger than the query window, overlap its neighbours', reach past the map border and come from another map (keys at
another resolution, e.g. pre-scaled):

    out = context_window_attention(q, k, v, window, context, stride=None, offset=None, dilation=1, border='zeros',
                                   scale=None, backend=None)

q `[B, H, W, heads, d]` is tiled into `(wh, ww)` query windows (H, W multiples of the window); k `[B, Hk, Wk, heads,
d]`, v `[B, Hk, Wk, heads, dv]`. Query window (i, j) attends to the `kh x kw` keys at rows
`i * sy + oy + t * dy` (t < kh) and columns `j * sx + ox + u * dx` (u < kw) of the key map: `context` (kh, kw),
`stride` (sy, sx, default the window: maps of one resolution), `offset` (oy, ox, default centred:
`-(((kh - 1) * dy + 1 - sy) // 2)`), `dilation` (dy, dx). A key coordinate outside the map follows `border`:
'zeros' (a zero token: logit 0, value 0; HaloNet's zero-padded halo), 'mask' (excluded; every window must keep at
least one key) or 'shift' (VWFormer's copy-shift padding: moved by the context extent `kh * dy`, i.e. y + kh * dy
below the map and y - kh * dy above it; the moved coordinate must lie in the map). HaloNet's blocked attention with
block b and halo h is `window=b, context=b + 2h, offset=-h, border='zeros'`; VWFormer's varying window with ratio R
on a map of p x p windows is `context=R * p, stride=p, offset=-(R * p - (R + 1) * p // 2), border='shift'` (its
pre-scaled form is in `hiervit.mm.VWHead`). No relative position bias in this mode. Custom ops
`hiervit::window_context_fwd` / `_bwd`; FLOPs `2 * B * heads * windows * (wh * ww) * (kh * kw) * (d + dv)`, backward
twice that.

Backends (`window_dispatcher`; `backend=` argument, or env `HIERVIT_WINDOW_BACKEND` / `HIERVIT_BACKEND`):
`cpp` (the fused C++ CPU kernel, `cpp.py`: windows read in place from the heads-last maps, shift, padding and bias
fused, backward from the saved log-sum-exp; built once per machine on first use, refused with the reason where no
compiler or ninja exists), `triton` (CUDA, or CPU tensors under `TRITON_INTERPRET=1`; partition, shift, padding and
bias fused in-kernel), `cpu` (PyTorch's fused CPU attention with one additive bias/mask term and one gather each way;
it runs where `cpp` is refused), `reference` (explicit pad, roll, partition; accepts everything, the test oracle).
Auto order: cpp, else cpu, on CPU; triton on CUDA; then reference. Context mode has no `cpp` backend (auto: cpu).
The op is declared on the shared scaffold (`hiervit.kernels._op.KernelOp`) as the custom ops
`hiervit::window_attention_fwd` / `_bwd` (fakes, autograd, FLOP formulas, the reference as export decomposition).
Models call `window_attention_op` with the resolved window, shift and padding (see `resolve_window`).

FLOP convention (matmuls only, as torch's SDPA counter): every query of the padded map against the N = wh * ww keys
of its window, forward `2 * B * heads * Hp * Wp * N * (d + dv)`, backward twice that.
"""
import math
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._dispatch import Backend, module_available
from .._op import KernelOp, check_tensors

__all__ = [
    'window_attention', 'window_attention_op', 'window_dispatcher', 'WindowProblem', 'resolve_window',
    'window_attention_flops', 'WINDOW', 'context_window_attention', 'context_window_attention_op',
    'resolve_context', 'context_window_attention_flops', 'WINDOW_CONTEXT', 'BORDERS', 'context_coords', 'shift_coords',
]

_HAS_TRITON = module_available('triton')  # probed once: find_spec inside a compiled region is a graph break
WindowSize = Union[int, Sequence[Optional[int]]]
_PADDING = ('mask', 'zeros')
_PAD_POSITION = ('end', 'center')
BORDERS = ('zeros', 'mask', 'shift')


@dataclass(frozen=True)
class WindowProblem:
    """What a backend needs to know to accept or refuse a call."""
    device: torch.device
    dtype: torch.dtype
    heads: int
    dim: int
    v_dim: int
    window: Tuple[int, int]
    has_rpb: bool


def _check_reference(p: WindowProblem) -> Optional[str]:
    return None


def _check_cpp(p: WindowProblem) -> Optional[str]:
    if p.device.type != 'cpu':
        return f'tensors are on {p.device.type}, the cpp backend runs on CPU tensors only'
    from .cpp import availability  # checks run inside the op, never while dynamo traces
    return availability()


def _check_cpu(p: WindowProblem) -> Optional[str]:
    if p.device.type != 'cpu':
        return f'tensors are on {p.device.type}, the cpu backend runs on CPU tensors only'
    return None


def _check_triton(p: WindowProblem) -> Optional[str]:
    if not _HAS_TRITON:
        return 'triton is not installed'
    if p.device.type == 'cpu':
        if os.environ.get('TRITON_INTERPRET', '0') != '1':
            return 'CPU tensors need TRITON_INTERPRET=1 (the Triton interpreter, slow, for tests only)'
    elif p.device.type != 'cuda':
        return f'tensors are on {p.device.type}; triton runs on CUDA (or on CPU under TRITON_INTERPRET=1)'
    if p.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f'dtype {p.dtype} is not supported (use float16, bfloat16 or float32)'
    if max(p.dim, p.v_dim) > 256:
        return f'head dims d={p.dim}, dv={p.v_dim} exceed 256 (one register tile per block)'
    return None


def resolve_window(
        H: int, W: int, window_size: WindowSize, shift_size: Union[int, Sequence[int]] = 0,
        pad_position: str = 'end',
) -> Tuple[List[int], List[int], List[int]]:
    """Per-axis window `[wh, ww]`, shift `[sy, sx]` and padding `[top, bottom, left, right]` of a call on an H x W
    map (`None` window axes become the whole axis). Raises a ValueError naming the bad argument."""
    if isinstance(window_size, bool) or not isinstance(window_size, (int, tuple, list)):
        raise TypeError(f'window_attention: window_size must be an int or a pair (int or None each), got '
                        f'{window_size!r}.')
    win = [window_size] * 2 if isinstance(window_size, int) else list(window_size)
    if len(win) != 2 or not all(w is None or (isinstance(w, int) and not isinstance(w, bool)) for w in win):
        raise ValueError(f'window_attention: window_size must be an int or a pair (int or None each), got '
                         f'{window_size!r}.')
    win = [L if w is None else w for w, L in zip(win, (H, W))]
    if min(win) < 1:
        raise ValueError(f'window_attention: window_size must be >= 1 on both axes, got {window_size!r}.')
    if isinstance(shift_size, bool) or not isinstance(shift_size, (int, tuple, list)):
        raise TypeError(f'window_attention: shift_size must be an int or a pair of ints, got {shift_size!r}.')
    shift = [shift_size] * 2 if isinstance(shift_size, int) else list(shift_size)
    if len(shift) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in shift):
        raise ValueError(f'window_attention: shift_size must be an int or a pair of ints, got {shift_size!r}.')
    for s, w in zip(shift, win):
        if not 0 <= s < w:
            raise ValueError(
                f'window_attention: shift_size must satisfy 0 <= shift < window on each axis, got shift {shift} for '
                f'window {win}.')
    if pad_position not in _PAD_POSITION:
        raise ValueError(f'window_attention: pad_position must be one of {_PAD_POSITION}, got {pad_position!r}.')
    pad = []
    for L, w in zip((H, W), win):
        p = -L % w
        before = p // 2 if pad_position == 'center' else 0
        pad += [before, p - before]
    return win, shift, pad


def _problem(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], window: List[int], shift: List[int],
             pad: List[int], mask_pad: bool, scale: float) -> WindowProblem:
    check_tensors('window_attention', q=q, k=k, v=v, rpb=rpb)
    if q.dim() != 5:
        raise ValueError(f'window_attention: q must be [B, H, W, heads, head_dim] (5-D), got shape {tuple(q.shape)}.')
    if k.shape != q.shape:
        raise ValueError(f'window_attention: k {tuple(k.shape)} must have the shape of q {tuple(q.shape)}.')
    if v.dim() != 5 or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f'window_attention: v {tuple(v.shape)} must match q {tuple(q.shape)} in all but the last '
                         f'(head_dim) axis.')
    if min(q.shape[1:]) == 0 or v.shape[-1] == 0:
        raise ValueError(f'window_attention: empty inputs q {tuple(q.shape)}, v {tuple(v.shape)} (only the batch may '
                         f'be empty).')
    if len(window) != 2 or len(shift) != 2 or len(pad) != 4:
        raise ValueError(f'window_attention: window {window} and shift {shift} need 2 entries and pad {pad} 4 '
                         f'(top, bottom, left, right); see resolve_window.')
    _, H, W, heads, _ = q.shape
    for axis, (L, w, s, before, after) in enumerate(zip((H, W), window, shift, pad[0::2], pad[1::2])):
        if w < 1 or not 0 <= s < w or before < 0 or after < 0 or before + after >= w or (L + before + after) % w:
            raise ValueError(
                f'window_attention: axis {axis} of length {L} with window {w}, shift {s}, padding ({before}, {after}) '
                f'is invalid: need 0 <= shift < window and padding < window that makes the axis a multiple of the '
                f'window (resolve_window computes it).')
    if rpb is not None:
        want = ((2 * window[0] - 1) * (2 * window[1] - 1), heads)
        if tuple(rpb.shape) != want:
            raise ValueError(
                f'window_attention: rpb must be Swin\'s table [(2 * wh - 1) * (2 * ww - 1), heads] = {list(want)} for '
                f'window {window}, got {list(rpb.shape)}.')
    return WindowProblem(device=q.device, dtype=q.dtype, heads=heads, dim=q.shape[-1], v_dim=v.shape[-1],
                         window=(window[0], window[1]), has_rpb=rpb is not None)


def window_attention(
        q: Tensor, k: Tensor, v: Tensor, window_size: WindowSize, shift_size: Union[int, Sequence[int]] = 0,
        rpb: Optional[Tensor] = None, scale: Optional[float] = None, padding: str = 'mask',
        pad_position: str = 'end', backend: Optional[str] = None,
) -> Tensor:
    """Window attention (see the package docstring for the exact semantics).

    Args:
        q: Queries `[B, H, W, heads, d]` (any strides; e.g. views of a qkv projection).
        k: Keys, shape of q.
        v: Values `[B, H, W, heads, dv]`.
        window_size: `(wh, ww)` or an int; None on an axis = the whole axis (CSWin stripes).
        shift_size: Cyclic shift `(sy, sx)` or an int, 0 <= shift < window (Swin's shifted windows).
        rpb: Optional relative position bias in Swin's table layout `[(2wh - 1)(2ww - 1), heads]`, differentiable.
        scale: Logit scale; default `d ** -0.5`.
        padding: 'mask' (padding keys masked) or 'zeros' (unmasked zero tokens, as some released checkpoints).
        pad_position: 'end' (bottom/right) or 'center' (CSWin's segmentation backbone).
        backend: `cpu`, `triton`, `reference` or None/'auto' (see `window_dispatcher`).

    Returns:
        Tensor of the shape of v.
    """
    if not isinstance(q, Tensor) or q.dim() != 5:
        raise ValueError(f'window_attention: q must be a [B, H, W, heads, head_dim] tensor, got '
                         f'{tuple(q.shape) if isinstance(q, Tensor) else type(q).__name__}.')
    if padding not in _PADDING:
        raise ValueError(f'window_attention: padding must be one of {_PADDING}, got {padding!r}.')
    window, shift, pad = resolve_window(q.shape[1], q.shape[2], window_size, shift_size, pad_position)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f'window_attention: scale must be a Python number or None, got {type(scale).__name__}.')
    return window_attention_op(q, k, v, window, shift, pad, padding == 'mask', rpb, float(scale), backend or 'auto')


def window_attention_op(
        q: Tensor, k: Tensor, v: Tensor, window: List[int], shift: List[int], pad: List[int], mask_pad: bool,
        rpb: Optional[Tensor], scale: float, backend: str = 'auto',
) -> Tensor:
    """`window_attention` as models call it, with the resolved `window`, `shift`, `pad` of `resolve_window`: one op
    call, scriptable by TorchScript and a leaf for FX (all checks and the backend choice run inside the op)."""
    return torch.ops.hiervit.window_attention_fwd(q, k, v, rpb, window, shift, pad, mask_pad, scale, backend)[0]


def window_attention_flops(
        q_shape: Sequence[int], window: Sequence[int], pad: Sequence[int] = (0, 0, 0, 0),
        v_dim: Optional[int] = None, backward: bool = False,
) -> int:
    """FLOPs of one call for q `[B, H, W, heads, d]` with resolved window and padding (see the package docstring)."""
    B, H, W, heads, d = q_shape
    Hp, Wp = H + pad[0] + pad[1], W + pad[2] + pad[3]
    dv = d if v_dim is None else v_dim
    fwd = 2 * B * heads * Hp * Wp * math.prod(window) * (d + dv)
    return 2 * fwd if backward else fwd


def _fake(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], window: List[int], shift: List[int],
          pad: List[int], mask_pad: bool, scale: float) -> Tuple[Tensor, Tensor]:
    return v.new_empty(v.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


_PKG = __name__
# cpp and cpu before triton: under TRITON_INTERPRET=1 (tests) CPU tensors still get a CPU backend by default (cpp
# where its library builds, else cpu).
WINDOW = KernelOp(
    'window_attention',
    inputs='Tensor q, Tensor k, Tensor v, Tensor? rpb',
    attrs='int[] window, int[] shift, int[] pad, bool mask_pad, float scale',
    outputs=('out', 'lse'), differentiable_outputs=1, grads=('q', 'k', 'v', 'rpb'),
    backends=[
        Backend('cpp', _check_cpp, f'{_PKG}.cpp'),
        Backend('cpu', _check_cpu, f'{_PKG}.cpu'),
        Backend('triton', _check_triton, f'{_PKG}.triton'),
        Backend('reference', _check_reference, f'{_PKG}.reference'),
    ],
    problem=_problem, fake=_fake,
    flops=lambda q, k, v, rpb, window, shift, pad, *attrs: window_attention_flops(q, window, pad, v[-1]),
    reference=f'{_PKG}.reference',
)
window_dispatcher = WINDOW.dispatcher


# --- context mode --------------------------------------------------------------------------------------------------


def _pair(name: str, value: Union[int, Sequence[int]]) -> List[int]:
    if isinstance(value, bool) or not isinstance(value, (int, tuple, list)):
        raise TypeError(f'context_window_attention: {name} must be an int or a pair of ints, got {value!r}.')
    pair = [value] * 2 if isinstance(value, int) else list(value)
    if len(pair) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) for p in pair):
        raise ValueError(f'context_window_attention: {name} must be an int or a pair of ints, got {value!r}.')
    return pair


def resolve_context(
        window: Union[int, Sequence[int]], context: Union[int, Sequence[int]],
        stride: Optional[Union[int, Sequence[int]]] = None, offset: Optional[Union[int, Sequence[int]]] = None,
        dilation: Union[int, Sequence[int]] = 1,
) -> Tuple[List[int], List[int], List[int], List[int], List[int]]:
    """Per-axis window, context, stride, offset and dilation of a context-mode call, defaults filled in (stride: the
    window; offset: the context centred on the window's stride). Raises an error naming the bad argument."""
    win, ctx, dil = _pair('window', window), _pair('context', context), _pair('dilation', dilation)
    st = list(win) if stride is None else _pair('stride', stride)
    for name, vals in (('window', win), ('context', ctx), ('stride', st), ('dilation', dil)):
        if min(vals) < 1:
            raise ValueError(f'context_window_attention: {name} must be >= 1 on both axes, got {vals}.')
    off = ([-(((c - 1) * d + 1 - s) // 2) for c, d, s in zip(ctx, dil, st)] if offset is None
           else _pair('offset', offset))
    return win, ctx, st, off, dil


def context_coords(length: int, windows: int, context: int, stride: int, offset: int, dilation: int,
                   border: str, device: Optional[torch.device] = None) -> Tensor:
    """Key coordinate `[windows, context]` of each context slot on one axis of a key map of `length` (-1: outside the
    map, for the 'zeros' and 'mask' borders; 'shift' moves it by the context extent `context * dilation`)."""
    y = (torch.arange(windows, device=device)[:, None] * stride + offset
         + torch.arange(context, device=device)[None, :] * dilation)
    if border == 'shift':
        return shift_coords(y, length, context * dilation)
    return torch.where((y < 0) | (y >= length), torch.full_like(y, -1), y)


def shift_coords(y: Tensor, length: int, extent: int) -> Tensor:
    """VWFormer's copy-shift rule for coordinates of an axis of `length`: below 0 moved up by `extent`, past the end
    moved down by it (`extent` <= length; the results must land in the axis, which the op's checks ensure)."""
    return torch.where(y < 0, y + extent, torch.where(y >= length, y - extent, y))


def _context_problem(q: Tensor, k: Tensor, v: Tensor, window: List[int], context: List[int], stride: List[int],
                     offset: List[int], dilation: List[int], border: str, scale: float) -> WindowProblem:
    check_tensors('context_window_attention', q=q, k=k, v=v)
    for name, t in (('q', q), ('k', k), ('v', v)):
        if t.dim() != 5:
            raise ValueError(f'context_window_attention: {name} must be [B, H, W, heads, head_dim] (5-D), got shape '
                             f'{tuple(t.shape)}.')
    if k.shape[0] != q.shape[0] or k.shape[3:] != q.shape[3:]:
        raise ValueError(f'context_window_attention: k {tuple(k.shape)} must match q {tuple(q.shape)} in batch, heads '
                         f'and head_dim (its map may differ).')
    if v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f'context_window_attention: v {tuple(v.shape)} must match k {tuple(k.shape)} in all but the '
                         f'last (head_dim) axis.')
    if min(q.shape[1:]) == 0 or min(k.shape[1:]) == 0 or v.shape[-1] == 0:
        raise ValueError(f'context_window_attention: empty inputs q {tuple(q.shape)}, k {tuple(k.shape)}, v '
                         f'{tuple(v.shape)} (only the batch may be empty).')
    if border not in BORDERS:
        raise ValueError(f'context_window_attention: border must be one of {BORDERS}, got {border!r}.')
    if not all(len(a) == 2 for a in (window, context, stride, offset, dilation)):
        raise ValueError('context_window_attention: window, context, stride, offset and dilation need 2 entries each '
                         '(see resolve_context).')
    for axis in range(2):
        L, Lk = q.shape[1 + axis], k.shape[1 + axis]
        w, c, s, o, d = window[axis], context[axis], stride[axis], offset[axis], dilation[axis]
        if min(w, c, s, d) < 1:
            raise ValueError(f'context_window_attention: window, context, stride and dilation must be >= 1, got '
                             f'{window}, {context}, {stride}, {dilation}.')
        if L % w:
            raise ValueError(f'context_window_attention: axis {axis} of q has length {L}, not a multiple of the query '
                             f'window {w}; pad the map to a multiple first.')
        n = L // w
        first, last = o, (n - 1) * s + o + (c - 1) * d  # lowest and highest key coordinate
        if border == 'shift':
            extent = c * d
            if extent > Lk or first + extent < 0 or last - extent >= Lk:
                raise ValueError(
                    f'context_window_attention: border=\'shift\' on axis {axis} moves keys by the context extent '
                    f'{extent}, which must fit the key map (length {Lk}) and bring every coordinate in '
                    f'[{first}, {last}] into it.')
        elif border == 'mask':
            for i in range(n):
                lo = i * s + o
                if not any(0 <= lo + t * d < Lk for t in range(c)):
                    raise ValueError(
                        f'context_window_attention: with border=\'mask\' query window {i} on axis {axis} has no key '
                        f'inside the key map (length {Lk}); use border=\'zeros\' or another offset.')
    return WindowProblem(device=q.device, dtype=q.dtype, heads=q.shape[3], dim=q.shape[-1], v_dim=v.shape[-1],
                         window=(context[0], context[1]), has_rpb=False)


def context_window_attention(
        q: Tensor, k: Tensor, v: Tensor, window: Union[int, Sequence[int]], context: Union[int, Sequence[int]],
        stride: Optional[Union[int, Sequence[int]]] = None, offset: Optional[Union[int, Sequence[int]]] = None,
        dilation: Union[int, Sequence[int]] = 1, border: str = 'zeros', scale: Optional[float] = None,
        backend: Optional[str] = None,
) -> Tensor:
    """Window attention with a per-window key/value context (see the package docstring's context mode).

    Args:
        q: Queries `[B, H, W, heads, d]`, H and W multiples of the window (any strides).
        k: Keys `[B, Hk, Wk, heads, d]`, any map size.
        v: Values `[B, Hk, Wk, heads, dv]`.
        window: Query window `(wh, ww)` or an int.
        context: Keys per query window and axis `(kh, kw)` or an int.
        stride: Key-map step between neighbouring query windows; default the window.
        offset: Key coordinate of the first window's first key; default centred (a halo before and after).
        dilation: Key-map step between the keys of one window.
        border: 'zeros', 'mask' or 'shift' (VWFormer's copy-shift padding) for keys outside the map.
        scale: Logit scale; default `d ** -0.5`.
        backend: `cpu`, `triton`, `reference` or None/'auto'.

    Returns:
        Tensor `[B, H, W, heads, dv]`.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f'context_window_attention: scale must be a Python number or None, got '
                        f'{type(scale).__name__}.')
    win, ctx, st, off, dil = resolve_context(window, context, stride, offset, dilation)
    return context_window_attention_op(q, k, v, win, ctx, st, off, dil, border, float(scale), backend or 'auto')


def context_window_attention_op(
        q: Tensor, k: Tensor, v: Tensor, window: List[int], context: List[int], stride: List[int],
        offset: List[int], dilation: List[int], border: str, scale: float, backend: str = 'auto',
) -> Tensor:
    """`context_window_attention` with resolved arguments (`resolve_context`): one op call, as models call it."""
    return torch.ops.hiervit.window_context_fwd(q, k, v, window, context, stride, offset, dilation, border, scale,
                                                backend)[0]


def context_window_attention_flops(
        q_shape: Sequence[int], window: Sequence[int], context: Sequence[int], v_dim: Optional[int] = None,
        backward: bool = False,
) -> int:
    """FLOPs of one context-mode call for q `[B, H, W, heads, d]` (matmuls only, as torch's SDPA counter)."""
    B, H, W, heads, d = q_shape
    dv = d if v_dim is None else v_dim
    fwd = 2 * B * heads * H * W * math.prod(context) * (d + dv)
    return 2 * fwd if backward else fwd


def _context_fake(q: Tensor, k: Tensor, v: Tensor, *attrs) -> Tuple[Tensor, Tensor]:
    return v.new_empty(q.shape[:-1] + v.shape[-1:]), q.new_empty(q.shape[:-1], dtype=torch.float32)


WINDOW_CONTEXT = KernelOp(
    'window_context',
    inputs='Tensor q, Tensor k, Tensor v',
    attrs='int[] window, int[] context, int[] stride, int[] offset, int[] dilation, str border, float scale',
    outputs=('out', 'lse'), differentiable_outputs=1, grads=('q', 'k', 'v'),
    backends=[
        Backend('cpu', _check_cpu, f'{_PKG}.cpu', 'context_forward', 'context_backward'),
        Backend('triton', _check_triton, f'{_PKG}.triton', 'context_forward', 'context_backward'),
        Backend('reference', _check_reference, f'{_PKG}.reference', 'context_forward', 'context_backward'),
    ],
    problem=_context_problem, fake=_context_fake,
    flops=lambda q, k, v, window, context, *attrs: context_window_attention_flops(q, window, context, v[-1]),
    reference=f'{_PKG}.reference:context_forward',
)
