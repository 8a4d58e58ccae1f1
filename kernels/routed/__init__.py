"""Routed (gathered-block) attention: query block i attends to the key/value blocks listed in `idx[..., i, :]`.

This is BiFormer's bi-level routing attention core (and the shape of VSA's sampled windows): tokens are grouped into
blocks (regions), a routing step picks `topk` key blocks per query block, and every query of block i attends jointly
(one softmax) to the `topk * Tk` keys of its selected blocks.

Public API: `routed_attention(q, k, v, idx, scale=None, backend=None)` and `routed_dispatcher`.

The op is registered as the torch custom ops `hiervit::routed_attention_fwd` / `hiervit::routed_attention_bwd`
(fake kernels for meta/fake tensors, autograd, FLOP formulas for `FlopCounterMode`), so it can be traced by
`torch.compile` and counted by FLOP tools. The backend is chosen in Python before the op call and passed as a string.

FLOP convention (as torch's SDPA counter: matmuls only, softmax ignored):
    forward  = 2 * B * heads * Nq * Tq * topk * Tk * (d + dv)
    backward = 2 * forward (dq, dk, dv and the probability gradient; the recomputation of the scores some backends
    do is not counted).
"""
import importlib
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .._dispatch import Backend, BackendError, Dispatcher, module_available

__all__ = ['routed_attention', 'routed_dispatcher', 'routed_problem', 'RoutedProblem', 'check_routed_args',
           'routed_flops']

_FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class RoutedProblem:
    """What a backend needs to know to accept or refuse a call."""
    device: torch.device
    dtype: torch.dtype
    batch: int
    heads: int
    q_blocks: int
    q_tokens: int
    k_blocks: int
    k_tokens: int
    dim: int
    v_dim: int
    topk: int


def _check_reference(p: RoutedProblem) -> Optional[str]:
    return None


def _check_cpu(p: RoutedProblem) -> Optional[str]:
    if p.device.type != 'cpu':
        return f'tensors are on {p.device.type}, the cpu backend runs on CPU tensors only'
    if p.dtype not in _FLOAT_TYPES:
        return f'dtype {p.dtype} is not supported (use float16, bfloat16, float32 or float64)'
    return None


_HAS_TRITON = module_available('triton')  # resolved once: import machinery cannot be traced by torch.compile


def _check_triton(p: RoutedProblem) -> Optional[str]:
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
        return f'head dims d={p.dim}, dv={p.v_dim} exceed 256 (each head dim is one register tile)'
    return None


# cpu before triton: under TRITON_INTERPRET=1 (tests) CPU tensors must still pick the cpu backend by default,
# and the cpu backend refuses CUDA tensors, so auto = triton on CUDA, cpu on CPU, reference for anything else.
_BACKENDS = {
    'cpu': (_check_cpu, 'hiervit.kernels.routed.cpu'),
    'triton': (_check_triton, 'hiervit.kernels.routed.triton'),
    'reference': (_check_reference, 'hiervit.kernels.routed.reference'),
}
_BACKENDS = {n: v for n, v in _BACKENDS.items() if importlib.util.find_spec(v[1]) is not None}

# Every backend runs through the one custom op (the backend name is its last argument); backend modules are
# imported lazily inside the op.
routed_dispatcher = Dispatcher('routed', [Backend(n, c) for n, (c, _) in _BACKENDS.items()])


def _backend_module(name: str):
    if name not in _BACKENDS:
        raise BackendError(f'routed: unknown backend {name!r}; choose one of {list(_BACKENDS)}.')
    return importlib.import_module(_BACKENDS[name][1])


def check_routed_args(q: Tensor, k: Tensor, v: Tensor, idx: Tensor) -> Tensor:
    """Validate a call; returns idx as `[B, heads, Nq, topk]` (a broadcast view when it is shared across heads)."""
    for name, t in (('q', q), ('k', k), ('v', v)):
        if not isinstance(t, Tensor):
            raise TypeError(f'routed_attention: {name} must be a torch.Tensor, got {type(t).__name__}.')
        if t.dim() != 5:
            raise ValueError(
                f'routed_attention: {name} must be 5-D [B, heads, blocks, tokens, dim], got shape {tuple(t.shape)}.')
        if t.dtype not in _FLOAT_TYPES:
            raise ValueError(f'routed_attention: {name} must be a floating tensor, got {t.dtype}.')
    if not isinstance(idx, Tensor):
        raise TypeError(f'routed_attention: idx must be a torch.Tensor of int64, got {type(idx).__name__}.')
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f'routed_attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}.')
    if not (q.device == k.device == v.device == idx.device):
        raise ValueError(
            f'routed_attention: q, k, v, idx must be on one device, got {q.device}, {k.device}, {v.device}, '
            f'{idx.device}.')
    B, H, Nq, _, d = q.shape
    if k.shape[:2] != (B, H) or v.shape[:2] != (B, H):
        raise ValueError(
            f'routed_attention: k {tuple(k.shape)} and v {tuple(v.shape)} must have the batch and heads of q '
            f'{tuple(q.shape)}.')
    if k.shape[-1] != d:
        raise ValueError(f'routed_attention: k head dim {k.shape[-1]} must equal q head dim {d}.')
    if k.shape[2:4] != v.shape[2:4]:
        raise ValueError(
            f'routed_attention: v blocks/tokens {tuple(v.shape[2:4])} must match k blocks/tokens '
            f'{tuple(k.shape[2:4])}.')
    if min(q.shape) == 0 or min(k.shape) == 0 or v.shape[-1] == 0:
        raise ValueError(f'routed_attention: empty inputs q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}.')
    if idx.dtype != torch.int64:
        raise ValueError(f'routed_attention: idx must be int64 (as returned by torch.topk), got {idx.dtype}.')
    if idx.dim() == 3:
        if idx.shape[:2] != (B, Nq):
            raise ValueError(
                f'routed_attention: idx {tuple(idx.shape)} must be [B={B}, Nq={Nq}, topk] or [B, heads, Nq, topk].')
        idx = idx.unsqueeze(1).expand(B, H, Nq, idx.shape[-1])
    elif idx.dim() == 4:
        if idx.shape[:3] != (B, H, Nq):
            raise ValueError(
                f'routed_attention: idx {tuple(idx.shape)} must be [B={B}, heads={H}, Nq={Nq}, topk] or '
                f'[B, Nq, topk].')
    else:
        raise ValueError(
            f'routed_attention: idx must be 3-D [B, Nq, topk] or 4-D [B, heads, Nq, topk], got shape '
            f'{tuple(idx.shape)}.')
    Nk, topk = k.shape[2], idx.shape[-1]
    if not 1 <= topk <= Nk:
        raise ValueError(f'routed_attention: topk (idx.shape[-1]) = {topk} must be in [1, Nk={Nk}].')
    if not (idx.is_meta or torch.compiler.is_compiling()):
        lo, hi = torch.aminmax(idx)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= Nk:
            raise ValueError(f'routed_attention: idx values must be in [0, Nk={Nk}), got min {lo}, max {hi}.')
    return idx


def routed_problem(q: Tensor, k: Tensor, v: Tensor, idx: Tensor) -> RoutedProblem:
    """The dispatcher's view of a call (e.g. `routed_dispatcher.explain(routed_problem(q, k, v, idx))`)."""
    B, H, Nq, Tq, d = q.shape
    return RoutedProblem(
        device=q.device, dtype=q.dtype, batch=B, heads=H, q_blocks=Nq, q_tokens=Tq, k_blocks=k.shape[2],
        k_tokens=k.shape[3], dim=d, v_dim=v.shape[-1], topk=idx.shape[-1])


def routed_attention(
        q: Tensor, k: Tensor, v: Tensor, idx: Tensor, scale: Optional[float] = None, backend: Optional[str] = None,
) -> Tensor:
    """Attention of each query block over the key/value blocks it was routed to.

    Args:
        q: Queries `[B, heads, Nq, Tq, d]` (Nq blocks of Tq tokens).
        k: Keys `[B, heads, Nk, Tk, d]`.
        v: Values `[B, heads, Nk, Tk, dv]` (dv may differ from d).
        idx: int64 key-block indices in [0, Nk), `[B, Nq, topk]` (shared by all heads) or `[B, heads, Nq, topk]`.
            Carries no gradient. A block listed twice is attended twice (its keys count twice in the softmax);
            BiFormer's top-k routing never repeats a block.
        scale: Score scale; default `d ** -0.5`.
        backend: `reference`, `cpu`, `triton` or None/'auto' (see `routed_dispatcher`; env
            `HIERVIT_ROUTED_BACKEND`).

    Returns:
        `[B, heads, Nq, Tq, dv]`; query i attends jointly (one softmax) to the `topk * Tk` selected keys.
    """
    idx = check_routed_args(q, k, v, idx)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    elif not isinstance(scale, (int, float)):
        raise TypeError(f'routed_attention: scale must be a Python number or None, got {type(scale).__name__}.')
    name = routed_dispatcher.select(routed_problem(q, k, v, idx), backend)
    out, _ = routed_attention_fwd(q, k, v, idx, float(scale), name)
    return out


def routed_flops(q_shape, k_shape, v_shape, idx_shape) -> int:
    """Forward FLOPs: 2 * B * heads * Nq * Tq * topk * Tk * (d + dv) (QK^T and PV matmuls)."""
    B, H, Nq, Tq, d = q_shape
    Tk, dv = k_shape[3], v_shape[-1]
    return 2 * B * H * Nq * Tq * idx_shape[-1] * Tk * (d + dv)


@torch.library.custom_op('hiervit::routed_attention_fwd', mutates_args=())
def routed_attention_fwd(
        q: Tensor, k: Tensor, v: Tensor, idx: Tensor, scale: float, backend: str,
) -> Tuple[Tensor, Tensor]:
    """Output `[B, H, Nq, Tq, dv]` and log-sum-exp `[B, H, Nq, Tq]` (fp32, fp64 for fp64 inputs; for the backward)."""
    out, lse = _backend_module(backend).forward(q, k, v, idx, scale)
    return out, lse


@routed_attention_fwd.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, scale: float, backend: str) -> Tuple[Tensor, Tensor]:
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty(*q.shape[:4], v.shape[-1]), q.new_empty(q.shape[:4], dtype=lse_dtype)


@torch.library.custom_op('hiervit::routed_attention_bwd', mutates_args=())
def routed_attention_bwd(
        dout: Tensor, q: Tensor, k: Tensor, v: Tensor, idx: Tensor, out: Tensor, lse: Tensor, scale: float,
        backend: str,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of q, k, v."""
    dq, dk, dv = _backend_module(backend).backward(dout, q, k, v, idx, out, lse, scale)
    return dq, dk, dv


@routed_attention_bwd.register_fake
def _(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, idx: Tensor, out: Tensor, lse: Tensor, scale: float,
      backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, idx, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, idx, out, lse)
    ctx.scale, ctx.backend = scale, backend
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout: Tensor, dlse: Optional[Tensor]):
    q, k, v, idx, out, lse = ctx.saved_tensors
    dq, dk, dv = routed_attention_bwd(dout.contiguous(), q, k, v, idx, out, lse, ctx.scale, ctx.backend)
    return dq, dk, dv, None, None, None


routed_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.hiervit.routed_attention_fwd)
def _fwd_flops(q_shape, k_shape, v_shape, idx_shape, *args, **kwargs) -> int:
    return routed_flops(q_shape, k_shape, v_shape, idx_shape)


@register_flop_formula(torch.ops.hiervit.routed_attention_bwd)
def _bwd_flops(dout_shape, q_shape, k_shape, v_shape, idx_shape, *args, **kwargs) -> int:
    return 2 * routed_flops(q_shape, k_shape, v_shape, idx_shape)
