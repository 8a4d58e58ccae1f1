"""Routed (gathered-block) attention: query block i attends to the key/value blocks listed in `idx[..., i, :]`.

This is BiFormer's bi-level routing attention core (and the shape of VSA's sampled windows): tokens are grouped into
blocks (regions), a routing step picks `topk` key blocks per query block, and every query of block i attends jointly
(one softmax) to the `topk * Tk` keys of its selected blocks.

Public API: `routed_attention(q, k, v, idx, scale=None, backend=None)` and `routed_dispatcher`.

The op is declared on the shared scaffold (`hiervit.kernels._op.KernelOp`) as the torch custom ops
`hiervit::routed_attention_fwd` / `hiervit::routed_attention_bwd` (fake kernels, autograd, FLOP formulas, the
reference as the export/ONNX decomposition). The backend request (`'auto'` or a name) is the op's last argument and
is resolved inside the op, so a traced model holds one op call whatever backend runs.

FLOP convention (as torch's SDPA counter: matmuls only, softmax ignored):
    forward  = 2 * B * heads * Nq * Tq * topk * Tk * (d + dv)
    backward = 2 * forward (dq, dk, dv and the probability gradient; the recomputation of the scores some backends
    do is not counted).
"""
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._dispatch import Backend, module_available
from .._op import KernelOp, check_tensors

__all__ = ['routed_attention', 'routed_dispatcher', 'routed_problem', 'RoutedProblem', 'check_routed_args',
           'routed_flops', 'routed_attention_op', 'ROUTED']


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


def _check_cpp(p: RoutedProblem) -> Optional[str]:
    if p.device.type != 'cpu':
        return f'tensors are on {p.device.type}, the cpp backend runs on CPU tensors only'
    from .cpp import availability  # checks run inside the op, never while dynamo traces
    return availability()


def _check_cpu(p: RoutedProblem) -> Optional[str]:
    if p.device.type != 'cpu':
        return f'tensors are on {p.device.type}, the cpu backend runs on CPU tensors only'
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


def check_routed_args(q: Tensor, k: Tensor, v: Tensor, idx: Tensor) -> Tensor:
    """Validate a call; returns idx as `[B, heads, Nq, topk]` (a broadcast view when it is shared across heads)."""
    check_tensors('routed_attention', q=q, k=k, v=v)
    for name, t in (('q', q), ('k', k), ('v', v)):
        if t.dim() != 5:
            raise ValueError(
                f'routed_attention: {name} must be 5-D [B, heads, blocks, tokens, dim], got shape {tuple(t.shape)}.')
    if not isinstance(idx, Tensor):
        raise TypeError(f'routed_attention: idx must be a torch.Tensor of int64, got {type(idx).__name__}.')
    if q.device != idx.device:
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
    if min(q.shape[1:]) == 0 or min(k.shape[1:]) == 0 or v.shape[-1] == 0:
        raise ValueError(
            f'routed_attention: empty inputs q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} (only the '
            f'batch may be empty).')
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
    return idx


def _check_idx_values(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, scale: float) -> None:
    """The data-dependent check (real tensors only, inside the op)."""
    if idx.is_meta or idx.numel() == 0:
        return
    Nk = k.shape[2]
    lo, hi = torch.aminmax(idx)
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= Nk:
        raise ValueError(f'routed_attention: idx values must be in [0, Nk={Nk}), got min {lo}, max {hi}.')


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
        backend: `reference`, `cpp`, `cpu`, `triton` or None/'auto' (see `routed_dispatcher`; env
            `HIERVIT_ROUTED_BACKEND`).

    Returns:
        `[B, heads, Nq, Tq, dv]`; query i attends jointly (one softmax) to the `topk * Tk` selected keys.
    """
    check_routed_args(q, k, v, idx)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f'routed_attention: scale must be a Python number or None, got {type(scale).__name__}.')
    return torch.ops.hiervit.routed_attention_fwd(q, k, v, idx, float(scale), backend or 'auto')[0]


def routed_attention_op(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, scale: float, backend: str = 'auto') -> Tensor:
    """`routed_attention` as models call it: one op call, scriptable by TorchScript and a leaf for FX (all checks
    and the backend choice run inside the op)."""
    return torch.ops.hiervit.routed_attention_fwd(q, k, v, idx, scale, backend)[0]


def routed_flops(q_shape, k_shape, v_shape, idx_shape) -> int:
    """Forward FLOPs: 2 * B * heads * Nq * Tq * topk * Tk * (d + dv) (QK^T and PV matmuls)."""
    B, H, Nq, Tq, d = q_shape
    Tk, dv = k_shape[3], v_shape[-1]
    return 2 * B * H * Nq * Tq * idx_shape[-1] * Tk * (d + dv)


def _problem(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, scale: float) -> RoutedProblem:
    return routed_problem(q, k, v, check_routed_args(q, k, v, idx))


def _fake(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, scale: float) -> Tuple[Tensor, Tensor]:
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty(*q.shape[:4], v.shape[-1]), q.new_empty(q.shape[:4], dtype=lse_dtype)


def _prepare(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, scale: float):
    # Backends take idx per head: a [B, Nq, topk] routing is broadcast over the heads (a view).
    if idx.dim() == 3:
        idx = idx.unsqueeze(1).expand(q.shape[0], q.shape[1], *idx.shape[1:])
    return (q, k, v, idx), (scale,)


_PKG = __name__
# cpp and cpu before triton: under TRITON_INTERPRET=1 (tests) CPU tensors must still pick a CPU backend by default
# (cpp where its library builds, else cpu), and both refuse CUDA tensors, so auto = triton on CUDA, cpp/cpu on CPU,
# reference for anything else.
ROUTED = KernelOp(
    'routed_attention',
    inputs='Tensor q, Tensor k, Tensor v, Tensor idx', attrs='float scale', outputs=('out', 'lse'),
    differentiable_outputs=1, grads=('q', 'k', 'v'),
    backends=[
        Backend('cpp', _check_cpp, f'{_PKG}.cpp'),
        Backend('cpu', _check_cpu, f'{_PKG}.cpu'),
        Backend('triton', _check_triton, f'{_PKG}.triton'),
        Backend('reference', _check_reference, f'{_PKG}.reference'),
    ],
    problem=_problem, fake=_fake, check_values=_check_idx_values, prepare=_prepare,
    flops=lambda q, k, v, idx, scale: routed_flops(q, k, v, idx),
    reference=f'{_PKG}.reference',
)
routed_dispatcher = ROUTED.dispatcher
