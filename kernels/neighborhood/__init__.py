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
`triton` (CUDA, or CPU tensors under `TRITON_INTERPRET=1`), `cpu` (fast CPU path), `reference` (gathers all
neighbours; accepts everything, the test oracle), and the peers `natten` / `flex` (NATTEN 0.21 itself, if installed:
no rpb; on CPU uncompiled FlexAttention, forward only; called directly, not through the custom op, so that NATTEN's
autograd works on CUDA). Auto order: triton on CUDA, cpu on CPU, then reference.

The op is registered as the torch custom ops `hiervit::neighborhood_attention_fwd` / `_bwd` with fake (meta)
kernels, autograd and FLOP formulas, so it works under `torch.compile`, on meta tensors and in `FlopCounterMode`.
The backend is resolved in Python before the op is called and passed to it as a string; that resolution is traced by
dynamo, so it must not import anything (an import is a graph break, and graph breaks inside every block of a model
turn into recompiles with dynamic shapes): package availability is probed once at import time, and the backend
modules are imported inside the op, which dynamo does not trace.

FLOP convention (as torch's SDPA counter: matmuls only, softmax and bias ignored; exact for NA because every query
sees prod(kernel) keys):
    forward  = 2 * B * heads * prod(spatial) * prod(kernel) * (d + dv)   (= 4 * ... * d when dv == d)
    backward = 2 * forward (dP, dV, dQ, dK; a recomputation of the scores some backends do is not counted).
"""
import importlib
import math
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .._dispatch import Backend, BackendError, Dispatcher, module_available
from . import peers

__all__ = [
    'neighborhood_attention', 'na_dispatcher', 'NAProblem', 'check_na_args', 'neighborhood_attention_flops',
]

_FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
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


# name -> (acceptance check, module, forward attr, backward attr). cpu comes before triton so that under
# TRITON_INTERPRET=1 (tests) CPU tensors still pick the cpu backend by default; triton refuses nothing on CUDA that
# cpu accepts, so auto = triton on CUDA, cpu on CPU, reference for anything else (e.g. meta tensors).
_PKG = __name__
_BACKENDS = {
    'cpu': (_check_cpu, f'{_PKG}.cpu', 'forward', 'backward'),
    'triton': (_check_triton, f'{_PKG}.triton', 'forward', 'backward'),
    'reference': (_check_reference, f'{_PKG}.reference', 'forward', 'backward'),
    'natten': (lambda p: _check_natten(p, flex=False), f'{_PKG}.peers', 'natten_forward', None),
    'flex': (lambda p: _check_natten(p, flex=True), f'{_PKG}.peers', 'flex_forward', None),
}
_BACKENDS = {n: v for n, v in _BACKENDS.items() if importlib.util.find_spec(v[1]) is not None}
_PEERS = {'natten': peers.natten_forward, 'flex': peers.flex_forward}

na_dispatcher = Dispatcher('neighborhood', [Backend(n, c) for n, (c, *_) in _BACKENDS.items()])


def _impl(name: str, which: int):
    if name not in _BACKENDS:
        raise BackendError(f'neighborhood: unknown backend {name!r}; choose one of {list(_BACKENDS)}.')
    entry = _BACKENDS[name]
    if entry[which] is None:
        raise BackendError(f'neighborhood: backend {name!r} runs outside the custom op (NATTEN\'s own autograd).')
    return getattr(importlib.import_module(entry[1]), entry[which])


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
    for name, t in (('q', q), ('k', k), ('v', v)):
        if not isinstance(t, Tensor):
            raise TypeError(f'neighborhood_attention: {name} must be a torch.Tensor, got {type(t).__name__}.')
        if t.dtype not in _FLOAT_TYPES:
            raise ValueError(f'neighborhood_attention: {name} must be a floating tensor, got {t.dtype}.')
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
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f'neighborhood_attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}.')
    if not (q.device == k.device == v.device):
        raise ValueError(f'neighborhood_attention: q, k, v must be on one device, got {q.device}, {k.device}, '
                         f'{v.device}.')
    if q.numel() == 0 or v.numel() == 0:
        raise ValueError(f'neighborhood_attention: empty inputs q {tuple(q.shape)}, v {tuple(v.shape)}.')
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
        if rpb.dtype not in _FLOAT_TYPES:
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
    tensors = (q, k, v) if rpb is None else (q, k, v, rpb)
    problem = NAProblem(
        device=q.device, dtype=q.dtype, batch=q.shape[0], spatial=tuple(q.shape[1:-2]), heads=q.shape[-2],
        dim=q.shape[-1], v_dim=v.shape[-1], kernel=kernel, dilation=dil, has_rpb=rpb is not None,
        needs_grad=torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    name = na_dispatcher.select(problem, backend)
    return _run(name, q, k, v, rpb, list(kernel), list(dil), float(scale))


def _run(name: str, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], kernel: List[int], dilation: List[int],
         scale: float) -> Tensor:
    """Run backend `name`: the peers directly, everything else through the custom op."""
    if name in _PEERS:
        # NATTEN's autograd records its own graph, which cannot happen inside a custom op: call it directly.
        return _PEERS[name](q, k, v, None, kernel, dilation, scale)[0]
    return neighborhood_attention_fwd(q, k, v, rpb, kernel, dilation, scale, name)[0]


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


@torch.library.custom_op('hiervit::neighborhood_attention_fwd', mutates_args=())
def neighborhood_attention_fwd(
        q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], kernel_size: List[int], dilation: List[int],
        scale: float, backend: str,
) -> Tuple[Tensor, Tensor]:
    """Output (shape of v) and fp32 log-sum-exp of the logits `[B, *spatial, heads]` (saved for the backward)."""
    out, lse = _impl(backend, 2)(q, k, v, rpb, kernel_size, dilation, scale)
    # Contiguous whatever the backend returns: the fake kernel below promises these strides to the compiler.
    return out.contiguous(), lse.contiguous()


@neighborhood_attention_fwd.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], kernel_size: List[int], dilation: List[int],
      scale: float, backend: str) -> Tuple[Tensor, Tensor]:
    # new_empty (contiguous), not empty_like: v is usually a strided view of the qkv projection.
    return v.new_empty(v.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op('hiervit::neighborhood_attention_bwd', mutates_args=())
def neighborhood_attention_bwd(
        dout: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], out: Tensor, lse: Tensor,
        kernel_size: List[int], dilation: List[int], scale: float, backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of q, k, v and rpb (an empty tensor when rpb is None)."""
    dq, dk, dv, drpb = _impl(backend, 3)(dout, q, k, v, rpb, out, lse, kernel_size, dilation, scale)
    if drpb is None:
        drpb = q.new_empty(0)
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), drpb.contiguous()


@neighborhood_attention_bwd.register_fake
def _(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], out: Tensor, lse: Tensor,
      kernel_size: List[int], dilation: List[int], scale: float, backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    drpb = rpb.new_empty(rpb.shape) if rpb is not None else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), drpb


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, rpb, kernel_size, dilation, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, rpb, out, lse)
    ctx.args = (kernel_size, dilation, scale, backend)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout: Tensor, dlse: Optional[Tensor]):
    q, k, v, rpb, out, lse = ctx.saved_tensors
    dq, dk, dv, drpb = neighborhood_attention_bwd(dout.contiguous(), q, k, v, rpb, out, lse, *ctx.args)
    return dq, dk, dv, (drpb if rpb is not None else None), None, None, None, None


neighborhood_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.hiervit.neighborhood_attention_fwd)
def _fwd_flops(q_shape, k_shape, v_shape, rpb_shape, kernel_size, *args, **kwargs) -> int:
    return neighborhood_attention_flops(q_shape, kernel_size, v_shape[-1])


@register_flop_formula(torch.ops.hiervit.neighborhood_attention_bwd)
def _bwd_flops(dout_shape, q_shape, k_shape, v_shape, rpb_shape, fwd_out_shape, lse_shape, kernel_size, *args,
               **kwargs) -> int:
    return neighborhood_attention_flops(q_shape, kernel_size, v_shape[-1], backward=True)
