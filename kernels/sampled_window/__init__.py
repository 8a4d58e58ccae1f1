"""Sampled-window attention (VSA, "varied-size window attention", Zhang et al., ECCV 2022, arXiv 2204.08446): the
queries of each default window attend to keys and values sampled bilinearly at a window that every head scales and
shifts on its own.

    out = sampled_window_attention(q, k, v, offsets, scales, window, rpb=None, scale=None, backend='auto')

Layout is heads-last like the other ops: q, k, v `[B, H, W, heads, d]` (one shape), H and W multiples of the window
`(wh, ww)` (the model pads, bottom/right as the official classification code; the op raises otherwise). `offsets` and
`scales` are `[B, heads, H // wh, W // ww, 2]`, last axis (x, y): one pair per default window and head, the raw
outputs of the VSR branches (AvgPool -> LeakyReLU -> 1x1 conv with 2 * heads channels, channel `2 * head + axis`).

Semantics (one definition for every backend; `reference.py` is it written out):

1. The sampling grid, in grid_sample's normalised coordinates (`align_corners=True`: -1 and 1 are the centres of the
   first and last pixel of an axis of length L). Along x (y likewise, with H, wh and the window row), the sample for
   in-window column `i` of window column `J` is
       gx = c_J + b_i * (1 + scale_x) + offset_x / (W // ww),
   with the window centre `c_J` (the mean of `linspace(-1, 1, W)` over the window's columns) and the centred base
   coordinate `b_i = (2 i - (ww - 1)) / (W - 1)`, so `c_J + b_i` is exactly pixel `J ww + i`. In pixels that is
   `x = J ww + i + (i - (ww - 1) / 2) * scale_x + offset_x * (W - 1) / (2 (W // ww))`. Scales = offsets = 0 is the
   default window: plain window attention. The official code divides offsets by the window count of the *unpadded*
   map (`w // ws`); that equals `W // ww` here whenever the input is a multiple of the window (every ViTAEv2 stage at
   224 px); a model that must reproduce it elsewhere rescales its offsets before the call.
2. K and V are sampled bilinearly at the grid, zeros outside the map (grid_sample's `padding_mode='zeros'`: each of
   the 4 taps outside contributes 0).
3. Per default window and head: logits `scale * q . k_s + rpb[idx(q, k), head]` with Swin's table
   `rpb: [(2wh - 1)(2ww - 1), heads]` indexed on the default window (query and sampled key by their in-window
   position, as `hiervit.kernels.window`), softmax over the window's wh * ww samples, weighted sum of the sampled V.

Axes of length 1 are refused (the normalised grid divides by L - 1), as are non-finite offsets or scales (they would
give NaN samples).

Bilinear sampling is not differentiable in the position where a sample sits exactly on a pixel row or column; there
every backend takes grid_sample's one-sided derivative (the taps of `floor`), up to the rounding of the position.

Backends (`sampled_window_dispatcher`; `backend=` argument, or env `HIERVIT_SAMPLED_WINDOW_BACKEND` /
`HIERVIT_BACKEND`): `cpu` (a fused C++ kernel that samples each window's K and V inside the attention, built once per
machine; deterministic backward), `triton` (CUDA, or CPU tensors under `TRITON_INTERPRET=1`; sampling fused in-kernel,
dK/dV scattered with fp32 atomics, see its docstring), `reference` (grid_sample, then window attention; accepts
everything, the test oracle). Auto order: cpu on CPU (also under the interpreter), triton on CUDA, then reference.
Declared on the shared scaffold (`hiervit.kernels._op.KernelOp`) as the custom ops
`hiervit::sampled_window_attention_fwd` / `_bwd` (fakes, autograd, FLOP formulas, the reference as export
decomposition).

FLOP convention: the attention's matmuls as the window op, `2 * B * heads * H * W * N * 2d` for N = wh * ww, plus the
bilinear sampling of K and V: 4 taps of one multiply-add (2 FLOPs) per sampled channel, `2 * 8 * B * H * W * heads * d`;
the per-sample tap weights (independent of d) are not counted. Backward: twice the forward.
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
    'sampled_window_attention', 'sampled_window_attention_op', 'sampled_window_dispatcher', 'SampledWindowProblem',
    'sampled_window_attention_flops', 'SAMPLED_WINDOW',
]

_OP = 'sampled_window_attention'
_HAS_TRITON = module_available('triton')  # probed once: find_spec inside a compiled region is a graph break
_TRITON_MAX_BLOCK = 64  # = triton.MAX_BLOCK (not imported here: that would import triton)


@dataclass(frozen=True)
class SampledWindowProblem:
    """What a backend needs to know to accept or refuse a call."""
    device: torch.device
    dtype: torch.dtype
    heads: int
    dim: int
    window: Tuple[int, int]
    has_rpb: bool


def _check_reference(p: SampledWindowProblem) -> Optional[str]:
    return None


def _check_cpu(p: SampledWindowProblem) -> Optional[str]:
    if p.device.type != 'cpu':
        return f'tensors are on {p.device.type}, the cpu backend runs on CPU tensors only'
    from .cpu import availability  # checks run inside the op, never while dynamo traces
    return availability()


def _check_triton(p: SampledWindowProblem) -> Optional[str]:
    if not _HAS_TRITON:
        return 'triton is not installed'
    if p.device.type == 'cpu':
        if os.environ.get('TRITON_INTERPRET', '0') != '1':
            return 'CPU tensors need TRITON_INTERPRET=1 (the Triton interpreter, slow, for tests only)'
    elif p.device.type != 'cuda':
        return f'tensors are on {p.device.type}; triton runs on CUDA (or on CPU under TRITON_INTERPRET=1)'
    if p.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f'dtype {p.dtype} is not supported (use float16, bfloat16 or float32)'
    if p.dim > _TRITON_MAX_BLOCK or math.prod(p.window) > _TRITON_MAX_BLOCK:
        return (f'head dim {p.dim} or window {p.window[0]}x{p.window[1]} exceeds {_TRITON_MAX_BLOCK} (one register '
                f'tile per window)')
    return None


def _window_pair(window: Union[int, Sequence[int]]) -> List[int]:
    if isinstance(window, bool) or not isinstance(window, (int, tuple, list)):
        raise TypeError(f'{_OP}: window must be an int or a pair of ints, got {window!r}.')
    win = [window] * 2 if isinstance(window, int) else list(window)
    if len(win) != 2 or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in win):
        raise ValueError(f'{_OP}: window must be an int >= 1 or a pair of them, got {window!r}.')
    return win


def _problem(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, scales: Tensor, rpb: Optional[Tensor],
             window: List[int], scale: float) -> SampledWindowProblem:
    check_tensors(_OP, q=q, k=k, v=v, offsets=offsets, scales=scales, rpb=rpb)
    if q.dim() != 5:
        raise ValueError(f'{_OP}: q must be [B, H, W, heads, head_dim] (5-D), got shape {tuple(q.shape)}.')
    for name, t in (('k', k), ('v', v)):
        if t.shape != q.shape:
            raise ValueError(f'{_OP}: {name} {tuple(t.shape)} must have the shape of q {tuple(q.shape)}.')
    if len(window) != 2 or min(window) < 1:
        raise ValueError(f'{_OP}: window must be [wh, ww] with both >= 1, got {list(window)}.')
    B, H, W, heads, d = q.shape
    if min(H, W, heads, d) == 0:
        raise ValueError(f'{_OP}: empty inputs q {tuple(q.shape)} (only the batch may be empty).')
    wh, ww = window
    if H % wh or W % ww:
        raise ValueError(
            f'{_OP}: the map {H}x{W} must be a multiple of the window {wh}x{ww}; pad q, k, v at the bottom/right to '
            f'{H + (-H % wh)}x{W + (-W % ww)} first (as the official VSA code does) and crop the output.')
    if H < 2 or W < 2:
        raise ValueError(f'{_OP}: the map {H}x{W} needs at least 2 rows and 2 columns (the normalised sampling grid '
                         f'divides by H - 1 and W - 1); pad it.')
    want = (B, heads, H // wh, W // ww, 2)
    for name, t in (('offsets', offsets), ('scales', scales)):
        if tuple(t.shape) != want:
            raise ValueError(
                f'{_OP}: {name} must be [B, heads, H // wh, W // ww, 2] = {list(want)} (one (x, y) pair per default '
                f'window and head), got {list(t.shape)}.')
    if rpb is not None:
        want_rpb = ((2 * wh - 1) * (2 * ww - 1), heads)
        if tuple(rpb.shape) != want_rpb:
            raise ValueError(
                f'{_OP}: rpb must be Swin\'s table [(2 * wh - 1) * (2 * ww - 1), heads] = {list(want_rpb)} for window '
                f'{list(window)}, got {list(rpb.shape)}.')
    return SampledWindowProblem(device=q.device, dtype=q.dtype, heads=heads, dim=d, window=(wh, ww),
                                has_rpb=rpb is not None)


def _check_values(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, scales: Tensor, rpb: Optional[Tensor],
                  window: List[int], scale: float) -> None:
    for name, t in (('offsets', offsets), ('scales', scales)):
        if t.numel() and not bool(torch.isfinite(t).all()):
            raise ValueError(f'{_OP}: {name} has non-finite values (NaN or inf); the sampling grid would be NaN.')


def sampled_window_attention(
        q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, scales: Tensor, window: Union[int, Sequence[int]],
        rpb: Optional[Tensor] = None, scale: Optional[float] = None, backend: Optional[str] = 'auto',
) -> Tensor:
    """Sampled-window attention (see the package docstring for the exact semantics).

    Args:
        q: Queries `[B, H, W, heads, d]` (any strides; e.g. views of a qkv projection), H, W multiples of the window.
        k: Keys, shape of q (the map the windows are sampled from).
        v: Values, shape of q.
        offsets: Window offsets `[B, heads, H // wh, W // ww, 2]`, (x, y), raw VSR outputs; differentiable.
        scales: Window scales, shape of offsets, (x, y); differentiable.
        window: Default window `(wh, ww)` or an int.
        rpb: Optional relative position bias in Swin's table layout `[(2wh - 1)(2ww - 1), heads]`, differentiable.
        scale: Logit scale; default `d ** -0.5`.
        backend: `cpu`, `triton`, `reference` or 'auto'/None (see `sampled_window_dispatcher`).

    Returns:
        Tensor `[B, H, W, heads, d]`.
    """
    if not isinstance(q, Tensor) or q.dim() != 5:
        raise ValueError(f'{_OP}: q must be a [B, H, W, heads, head_dim] tensor, got '
                         f'{tuple(q.shape) if isinstance(q, Tensor) else type(q).__name__}.')
    win = _window_pair(window)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f'{_OP}: scale must be a Python number or None, got {type(scale).__name__}.')
    return sampled_window_attention_op(q, k, v, offsets, scales, win, rpb, float(scale), backend or 'auto')


def sampled_window_attention_op(
        q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, scales: Tensor, window: List[int], rpb: Optional[Tensor],
        scale: float, backend: str = 'auto',
) -> Tensor:
    """`sampled_window_attention` as models call it, with `window = [wh, ww]` and a float scale: one op call,
    scriptable by TorchScript and a leaf for FX (all checks and the backend choice run inside the op)."""
    return torch.ops.hiervit.sampled_window_attention_fwd(q, k, v, offsets, scales, rpb, window, scale, backend)[0]


def sampled_window_attention_flops(q_shape: Sequence[int], window: Sequence[int], backward: bool = False) -> int:
    """FLOPs of one call for q `[B, H, W, heads, d]`: attention matmuls plus bilinear sampling of K and V (see the
    package docstring)."""
    B, H, W, heads, d = q_shape
    attention = 2 * B * heads * H * W * math.prod(window) * 2 * d
    sampling = 2 * 8 * B * H * W * heads * d
    fwd = attention + sampling
    return 2 * fwd if backward else fwd


def _fake(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, scales: Tensor, rpb: Optional[Tensor],
          window: List[int], scale: float) -> Tuple[Tensor, Tensor]:
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


_PKG = __name__
SAMPLED_WINDOW = KernelOp(
    _OP,
    inputs='Tensor q, Tensor k, Tensor v, Tensor offsets, Tensor scales, Tensor? rpb',
    attrs='int[] window, float scale',
    outputs=('out', 'lse'), differentiable_outputs=1, grads=('q', 'k', 'v', 'offsets', 'scales', 'rpb'),
    backends=[
        Backend('cpu', _check_cpu, f'{_PKG}.cpu'),
        Backend('triton', _check_triton, f'{_PKG}.triton'),
        Backend('reference', _check_reference, f'{_PKG}.reference'),
    ],
    problem=_problem, fake=_fake, check_values=_check_values,
    flops=lambda q, k, v, offsets, scales, rpb, window, scale: sampled_window_attention_flops(q, window),
    reference=f'{_PKG}.reference',
    dispatch_name='sampled_window',
)
sampled_window_dispatcher = SAMPLED_WINDOW.dispatcher
