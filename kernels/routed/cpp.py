"""Fused C++ CPU routed attention (`csrc/routed_cpu.cpp`), forward and backward.

Per query block, its routed K/V blocks are copied into a per-thread buffer (used in place when topk = 1, no copy at
all), the scores are one small GEMM, the exact softmax runs in that cache-resident buffer and the weighted sum is a
second GEMM; nothing of the size of the gathered K/V or of all scores is written to memory. The backward recomputes
the probabilities from the saved log-sum-exp and is deterministic (one thread owns the dK/dV of a (batch, head)).
The library is built once per machine on first use (`hiervit.kernels._cpp_ext`). Compute is fp32 (fp64 for fp64
inputs, which is what gradcheck runs); bf16 and fp16 inputs are converted to fp32 and the results cast back.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._cpp_ext import CppExtension, load, status

__all__ = ['EXTENSION', 'availability', 'forward', 'backward']

EXTENSION = CppExtension('hiervit_routed_cpu', ('routed/csrc/routed_cpu.cpp',))


def availability() -> Optional[str]:
    """None if the library is loaded (building it on this first call if needed), else why it cannot be."""
    return status(EXTENSION)


def _ops():
    load(EXTENSION)
    return torch.ops.hiervit_routed_cpu


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _flat(x: Tensor, acc: torch.dtype) -> Tensor:
    """`[B, H, blocks, tokens, c]` as a contiguous `[B*H, blocks, tokens, c]` in the compute dtype (a view if it is)."""
    return x.to(acc).reshape(-1, *x.shape[2:]).contiguous()


def forward(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, scale: float) -> Tuple[Tensor, Tensor]:
    """Output `[B, H, Nq, Tq, dv]` and log-sum-exp `[B, H, Nq, Tq]` (fp32; fp64 for fp64 inputs)."""
    acc = _acc(q.dtype)
    out, lse = _ops().routed_forward(_flat(q, acc), _flat(k, acc), _flat(v, acc), _flat(idx, idx.dtype), scale)
    return out.view(*q.shape[:4], v.shape[-1]).to(q.dtype), lse.view(q.shape[:4])


def backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, idx: Tensor, out: Tensor, lse: Tensor,
             scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of q, k, v from the forward's output and log-sum-exp."""
    acc = _acc(q.dtype)
    dq, dk, dv = _ops().routed_backward(
        _flat(dout, acc), _flat(q, acc), _flat(k, acc), _flat(v, acc), _flat(idx, idx.dtype), _flat(out, acc),
        lse.to(acc).reshape(-1, *lse.shape[2:]).contiguous(), scale)
    return dq.view(q.shape).to(q.dtype), dk.view(k.shape).to(k.dtype), dv.view(v.shape).to(v.dtype)
