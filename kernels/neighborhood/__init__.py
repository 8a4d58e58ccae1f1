"""Neighborhood attention (NA / dilated NA), NATTEN semantics, with relative position bias.

    out = neighborhood_attention(q, k, v, kernel_size, dilation=1, rpb=None, scale=None, backend=None)

Layout is heads-last as NATTEN >= 0.17: q, k `[B, *spatial, heads, d]`, v `[B, *spatial, heads, dv]` with 1, 2 or 3
spatial axes (rank = q.dim() - 3); the output has the shape of v.

Semantics, per spatial axis of length L with kernel k and dilation d (an n-D neighbourhood is the Cartesian product):

* Dilation splits the axis into d independent sub-grids: query i (group g = i % d) only sees keys of its own group,
  which has ceil((L - g) / d) tokens (groups may differ in length by one).
* Inside its group a query attends to k consecutive group tokens centred on it (even k = 2r: r before, r - 1 after).
  At the borders the window is shifted inwards, never padded or truncated, so every query sees exactly k keys per
  axis. This needs k * d <= L on every axis.
* Logits are `(q * scale) . k + rpb[h, (ky - qy) / d + k - 1, (kx - qx) / d + k - 1]` (the Swin-style relative table,
  also at the shifted borders); scale defaults to d ** -0.5. Softmax over the window, then the weighted sum of v.

Backends (`na_dispatcher`; `backend=` argument, or env `HIERVIT_NEIGHBORHOOD_BACKEND` / `HIERVIT_BACKEND`):
`cpp` (the fused C++ CPU kernel, `cpp.py`; built once per machine on first use, refused with the reason where no
compiler or ninja exists), `triton` (CUDA, or CPU tensors under `TRITON_INTERPRET=1`), `cpu` (the pure-PyTorch CPU
path), `reference` (gathers all neighbours; accepts everything, the test oracle), and the peers `natten` / `flex`
(NATTEN 0.21 itself, if installed: no rpb; on CPU uncompiled FlexAttention, forward only; called directly, not
through the custom op, so that NATTEN's autograd works on CUDA). Auto order: triton on CUDA; cpp, else cpu, on CPU;
then reference.

The op is declared on the shared scaffold (`hiervit.kernels._op.KernelOp`) as the torch custom ops
`hiervit::neighborhood_attention_fwd` / `_bwd` (fake kernels, autograd, FLOP formulas, the reference as the
export/ONNX decomposition), so it works under `torch.compile`, FX, TorchScript, `torch.export`, on meta tensors and in
`FlopCounterMode`. The backend request (`'auto'` or a name) is the op's last argument and is resolved inside the op;
models call `neighborhood_attention_op`, one op call whatever backend runs. Package availability is probed once at
import time, and the backend modules are imported inside the op, which dynamo does not trace.

FLOP convention (as torch's SDPA counter: matmuls only, softmax and bias ignored; exact for NA because every query
sees prod(kernel) keys):
    forward  = 2 * B * heads * prod(spatial) * prod(kernel) * (d + dv)   (= 4 * ... * d when dv == d)
    backward = 2 * forward (dP, dV, dQ, dK; a recomputation of the scores some backends do is not counted).
"""
import math
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._dispatch import Backend, module_available
from .._op import FLOAT_TYPES, KernelOp, check_tensors
from . import peers

__all__ = [
    'neighborhood_attention', 'neighborhood_attention_op', 'na_dispatcher', 'NAProblem', 'check_na_args',
    'neighborhood_attention_flops', 'NEIGHBORHOOD',
]

# Probed once: `importlib.util.find_spec` inside a compiled region is a graph break.
_HAS_TRITON = module_available('triton')
_HAS_NATTEN = module_available('natten')
IntOrTuple = Union[int, Sequence[int]]


@dataclass(frozen=True)
class NAProblem:
    """What a backend needs to know to accept or refuse a call."""
    device: torch.device
    dtype: torch.dtype
    batch: int
    spatial: Tuple[int, ...]
    heads: int
    dim: int
    v_dim: int
    kernel: Tuple[int, ...]
    dilation: Tuple[int, ...]
    has_rpb: bool
    needs_grad: bool


def _check_reference(p: NAProblem) -> Optional[str]:
    return None


def _check_cpp(p: NAProblem) -> Optional[str]:
    if p.device.type != 'cpu':
        return f'tensors are on {p.device.type}, the cpp backend runs on CPU tensors only'
    from .cpp import availability  # checks run inside the op, never while dynamo traces
    return availability()


def _check_cpu(p: NAProblem) -> Optional[str]:
    if p.device.type != 'cpu':
        return f'tensors are on {p.device.type}, the cpu backend runs on CPU tensors only'
    return None


def _check_triton(p: NAProblem) -> Optional[str]:
    if not _HAS_TRITON:
        return 'triton is not installed'
    if p.device.type == 'cpu':
        if os.environ.get('TRITON_INTERPRET', '0') != '1':
            return 'CPU tensors need TRITON_INTERPRET=1 (the Triton interpreter, slow, for tests only)'
    elif p.device.type != 'cuda':
        return f'tensors are on {p.device.type}; triton runs on CUDA (or on CPU under TRITON_INTERPRET=1)'
    if p.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f'dtype {p.dtype} is not supported (use float16, bfloat16 or float32)'
    if len(p.spatial) > 2:
        return f'{len(p.spatial)}-D neighbourhoods are not implemented (1-D and 2-D only)'
    if max(p.dim, p.v_dim) > 256:
        return f'head dims d={p.dim}, dv={p.v_dim} exceed 256 (one register tile per block)'
    return None


def _check_natten(p: NAProblem, flex: bool) -> Optional[str]:
    if not _HAS_NATTEN:
        return 'natten is not installed'
    if p.has_rpb:
        return 'NATTEN >= 0.20 has no relative position bias (rpb); use cpu, triton or reference'
    if min(p.kernel) < 2:
        return f'NATTEN needs kernel_size >= 2, got {p.kernel}'
    if p.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f'dtype {p.dtype} is not supported by NATTEN (use float16, bfloat16 or float32)'
    if p.device.type == 'cpu' and p.needs_grad:
        return 'on CPU NATTEN runs FlexAttention, which has no backward on CPU; call under torch.no_grad()'
    if p.device.type == 'cpu' or flex:
        if not 8 <= p.dim <= 512 or p.dim & (p.dim - 1) or p.v_dim != p.dim:
            return f'FlexAttention (uncompiled) needs d == dv, a power of two in [8, 512]; got d={p.dim}, dv={p.v_dim}'
    elif p.device.type != 'cuda':
        return f'tensors are on {p.device.type}; NATTEN runs on CUDA (or CPU through FlexAttention)'
    return None


_PEERS = {'natten': peers.natten_forward, 'flex': peers.flex_forward}


def _per_axis(value: IntOrTuple, rank: int, name: str) -> Tuple[int, ...]:
    if isinstance(value, bool) or not isinstance(value, (int, tuple, list)):
        raise TypeError(f'neighborhood_attention: {name} must be an int or a tuple of {rank} ints, got {value!r}.')
    values = (value,) * rank if isinstance(value, int) else tuple(value)
    if len(values) != rank or not all(isinstance(x, int) and not isinstance(x, bool) for x in values):
        raise ValueError(
            f'neighborhood_attention: {name} must be an int or a tuple of {rank} ints (one per spatial axis of the '
            f'{rank}-D input), got {value!r}.')
    if min(values) < 1:
        raise ValueError(f'neighborhood_attention: {name} must be >= 1 on every axis, got {value!r}.')
    return values


def check_na_args(
        q: Tensor, k: Tensor, v: Tensor, kernel_size: IntOrTuple, dilation: IntOrTuple, rpb: Optional[Tensor],
) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Validate a call; returns per-axis (kernel_size, dilation)."""
    check_tensors('neighborhood_attention', q=q, k=k, v=v)
    if not 4 <= q.dim() <= 6:
        raise ValueError(
            f'neighborhood_attention: q must be [B, *spatial, heads, head_dim] with 1 to 3 spatial axes (4-D to 6-D), '
            f'got shape {tuple(q.shape)}.')
    if k.shape != q.shape:
        raise ValueError(
            f'neighborhood_attention: k {tuple(k.shape)} must have the shape of q {tuple(q.shape)} '
            f'[B, *spatial, heads, head_dim].')
    if v.dim() != q.dim() or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(
            f'neighborhood_attention: v {tuple(v.shape)} must match q {tuple(q.shape)} in all but the last '
            f'(head_dim) axis.')
    if min(q.shape[1:]) == 0 or v.shape[-1] == 0:
        raise ValueError(
            f'neighborhood_attention: empty inputs q {tuple(q.shape)}, v {tuple(v.shape)} (only the batch may be '
            f'empty).')
    rank = q.dim() - 3
    spatial = tuple(q.shape[1:-2])
    kernel = _per_axis(kernel_size, rank, 'kernel_size')
    dil = _per_axis(dilation, rank, 'dilation')
    for axis, (length, kk, dd) in enumerate(zip(spatial, kernel, dil)):
        if kk * dd > length:
            raise ValueError(
                f'neighborhood_attention: kernel_size * dilation = {kk} * {dd} = {kk * dd} exceeds the length {length} '
                f'of spatial axis {axis}; that axis needs at least {kk * dd} tokens (pad the input, or lower '
                f'kernel_size/dilation).')
    if rpb is not None:
        if not isinstance(rpb, Tensor):
            raise TypeError(f'neighborhood_attention: rpb must be a torch.Tensor or None, got {type(rpb).__name__}.')
        want = (q.shape[-2],) + tuple(2 * kk - 1 for kk in kernel)
        if tuple(rpb.shape) != want:
            raise ValueError(
                f'neighborhood_attention: rpb must have shape [heads, *(2 * kernel_size - 1)] = {list(want)}, got '
                f'{list(rpb.shape)}.')
        if rpb.dtype not in FLOAT_TYPES:
            raise ValueError(f'neighborhood_attention: rpb must be a floating tensor, got {rpb.dtype}.')
        if rpb.device != q.device:
            raise ValueError(f'neighborhood_attention: rpb is on {rpb.device} but q is on {q.device}.')
    return kernel, dil


def neighborhood_attention(
        q: Tensor, k: Tensor, v: Tensor, kernel_size: IntOrTuple, dilation: IntOrTuple = 1,
        rpb: Optional[Tensor] = None, scale: Optional[float] = None, backend: Optional[str] = None,
) -> Tensor:
    """Neighborhood attention with NATTEN's semantics (see the package docstring).

    Args:
        q: Queries `[B, *spatial, heads, d]` (1 to 3 spatial axes).
        k: Keys, shape of q.
        v: Values `[B, *spatial, heads, dv]`.
        kernel_size: Window size, int or one int per spatial axis, >= 1; kernel_size * dilation <= axis length.
        dilation: Dilation, int or one int per spatial axis, >= 1.
        rpb: Optional relative position bias `[heads, *(2 * kernel_size - 1)]`, differentiable.
        scale: Logit scale; default `d ** -0.5`.
        backend: `cpu`, `triton`, `reference`, `natten`, `flex` or None/'auto' (see `na_dispatcher`).

    Returns:
        Tensor of the shape of v.
    """
    kernel, dil = check_na_args(q, k, v, kernel_size, dilation, rpb)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f'neighborhood_attention: scale must be a Python number or None, got {type(scale).__name__}.')
    requested, _ = na_dispatcher.requested(backend)
    if requested in _PEERS:
        # NATTEN's autograd records its own graph, which cannot happen inside a custom op: call it directly.
        tensors = (q, k, v) if rpb is None else (q, k, v, rpb)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        name = na_dispatcher.select(_problem(q, k, v, rpb, kernel, dil, scale, needs_grad), backend)
        return _PEERS[name](q, k, v, None, list(kernel), list(dil), float(scale))[0]
    return torch.ops.hiervit.neighborhood_attention_fwd(q, k, v, rpb, list(kernel), list(dil), float(scale),
                                                        backend or 'auto')[0]


def neighborhood_attention_op(
        q: Tensor, k: Tensor, v: Tensor, kernel_size: List[int], dilation: List[int], rpb: Optional[Tensor],
        scale: float, backend: str = 'auto',
) -> Tensor:
    """`neighborhood_attention` as models call it: one op call, scriptable by TorchScript and a leaf for FX (all
    checks and the backend choice run inside the op). kernel_size/dilation: one int per spatial axis."""
    return torch.ops.hiervit.neighborhood_attention_fwd(q, k, v, rpb, kernel_size, dilation, scale, backend)[0]


def neighborhood_attention_flops(
        q_shape: Sequence[int], kernel_size: IntOrTuple, v_dim: Optional[int] = None, backward: bool = False,
) -> int:
    """FLOPs of one call for q of shape `[B, *spatial, heads, d]`: forward 2 * B * heads * N * K * (d + dv), backward
    twice that (see the package docstring for the convention)."""
    B, *spatial, heads, d = q_shape
    rank = len(spatial)
    kernel = (kernel_size,) * rank if isinstance(kernel_size, int) else tuple(kernel_size)
    dv = d if v_dim is None else v_dim
    fwd = 2 * B * heads * math.prod(spatial) * math.prod(kernel) * (d + dv)
    return 2 * fwd if backward else fwd


def _problem(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], kernel_size: Sequence[int],
             dilation: Sequence[int], scale: float, needs_grad: bool = False) -> NAProblem:
    # Inside the op autograd is the op's own (needs_grad=False); only the peers outside it care.
    kernel, dil = check_na_args(q, k, v, kernel_size, dilation, rpb)
    return NAProblem(
        device=q.device, dtype=q.dtype, batch=q.shape[0], spatial=tuple(q.shape[1:-2]), heads=q.shape[-2],
        dim=q.shape[-1], v_dim=v.shape[-1], kernel=kernel, dilation=dil, has_rpb=rpb is not None,
        needs_grad=needs_grad)


def _fake(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], kernel_size: List[int], dilation: List[int],
          scale: float) -> Tuple[Tensor, Tensor]:
    # new_empty (contiguous), not empty_like: v is usually a strided view of the qkv projection.
    return v.new_empty(v.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


_PKG = __name__
# cpp and cpu come before triton so that under TRITON_INTERPRET=1 (tests) CPU tensors still pick a CPU backend by
# default (cpp where its library builds, else cpu); triton refuses nothing on CUDA that cpu accepts, so auto = triton
# on CUDA, cpp/cpu on CPU, reference for anything else (e.g. meta tensors). The NATTEN peers come last (reference
# accepts every call, so auto never reaches them).
NEIGHBORHOOD = KernelOp(
    'neighborhood_attention',
    inputs='Tensor q, Tensor k, Tensor v, Tensor? rpb', attrs='int[] kernel_size, int[] dilation, float scale',
    outputs=('out', 'lse'), differentiable_outputs=1, grads=('q', 'k', 'v', 'rpb'),
    backends=[
        Backend('cpp', _check_cpp, f'{_PKG}.cpp'),
        Backend('cpu', _check_cpu, f'{_PKG}.cpu'),
        Backend('triton', _check_triton, f'{_PKG}.triton'),
        Backend('reference', _check_reference, f'{_PKG}.reference'),
        Backend('natten', lambda p: _check_natten(p, flex=False), f'{_PKG}.peers', 'natten_forward', None, False),
        Backend('flex', lambda p: _check_natten(p, flex=True), f'{_PKG}.peers', 'flex_forward', None, False),
    ],
    problem=_problem, fake=_fake,
    flops=lambda q, k, v, rpb, kernel_size, *attrs: neighborhood_attention_flops(q, kernel_size, v[-1]),
    reference=f'{_PKG}.reference',
)
na_dispatcher = NEIGHBORHOOD.dispatcher
