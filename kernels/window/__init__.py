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

Backends (`window_dispatcher`; `backend=` argument, or env `HIERVIT_WINDOW_BACKEND` / `HIERVIT_BACKEND`):
`triton` (CUDA, or CPU tensors under `TRITON_INTERPRET=1`; partition, shift, padding and bias fused in-kernel),
`cpu` (PyTorch's fused CPU attention with one additive bias/mask term and one gather each way), `reference`
(explicit pad, roll, partition; accepts everything, the test oracle). Auto order: cpu on CPU, triton on CUDA, then
reference. The op is declared on the shared scaffold (`hiervit.kernels._op.KernelOp`) as the custom ops
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
    'window_attention_flops', 'WINDOW',
]

_HAS_TRITON = module_available('triton')  # probed once: find_spec inside a compiled region is a graph break
WindowSize = Union[int, Sequence[Optional[int]]]
_PADDING = ('mask', 'zeros')
_PAD_POSITION = ('end', 'center')


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
# cpu before triton: under TRITON_INTERPRET=1 (tests) CPU tensors still get the cpu backend by default.
WINDOW = KernelOp(
    'window_attention',
    inputs='Tensor q, Tensor k, Tensor v, Tensor? rpb',
    attrs='int[] window, int[] shift, int[] pad, bool mask_pad, float scale',
    outputs=('out', 'lse'), differentiable_outputs=1, grads=('q', 'k', 'v', 'rpb'),
    backends=[
        Backend('cpu', _check_cpu, f'{_PKG}.cpu'),
        Backend('triton', _check_triton, f'{_PKG}.triton'),
        Backend('reference', _check_reference, f'{_PKG}.reference'),
    ],
    problem=_problem, fake=_fake,
    flops=lambda q, k, v, rpb, window, shift, pad, *attrs: window_attention_flops(q, window, pad, v[-1]),
    reference=f'{_PKG}.reference',
)
window_dispatcher = WINDOW.dispatcher
