"""Fused C++ CPU neighborhood attention (`csrc/na_cpu.cpp`), forward and backward, 1-D, 2-D and 3-D.

Exact windows: every query computes exactly its prod(kernel) scores, with SIMD vectors across neighbouring queries
of a row, and nothing of size N * prod(kernel) is written to memory. The library is built once per machine on first
use (`hiervit.kernels._cpp_ext`). Compute is fp32 (fp64 for fp64 inputs, which is what gradcheck runs); bf16 and fp16
inputs are converted to fp32 and the results cast back. The backward is deterministic (no atomics; the rpb gradient
is summed per row, then over rows in a fixed order).
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._cpp_ext import CppExtension, load, status

__all__ = ['EXTENSION', 'availability', 'forward', 'backward']

EXTENSION = CppExtension('hiervit_na_cpu', ('neighborhood/csrc/na_cpu.cpp',))


def availability() -> Optional[str]:
    """None if the library is loaded (building it on this first call if needed), else why it cannot be."""
    return status(EXTENSION)


def _ops():
    load(EXTENSION)
    return torch.ops.hiervit_cpp


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _as6(x: Tensor, acc: torch.dtype) -> Tensor:
    """`[B, *spatial, heads, c]` with 1-3 spatial axes as a `[B, L0, L1, L2, heads, c]` view in the compute dtype
    (leading spatial axes of length 1; a copy only for another dtype or a strided channel axis)."""
    x = x.to(acc)
    if x.stride(-1) != 1:
        x = x.contiguous()
    while x.dim() < 6:
        x = x.unsqueeze(1)
    return x


def _pad3(values: List[int]) -> List[int]:
    return [1] * (3 - len(values)) + list(values)


def _rpb3(rpb: Optional[Tensor], acc: torch.dtype) -> Optional[Tensor]:
    if rpb is None:
        return None
    r = rpb.to(acc)
    while r.dim() < 4:
        r = r.unsqueeze(1)
    return r


def forward(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], kernel: List[int], dilation: List[int],
            scale: float) -> Tuple[Tensor, Tensor]:
    """Output (shape and dtype of v) and fp32 log-sum-exp `[B, *spatial, heads]`."""
    acc = _acc(q.dtype)
    out, lse = _ops().na_forward(_as6(q, acc), _as6(k, acc), _as6(v, acc), _rpb3(rpb, acc), _pad3(kernel),
                                 _pad3(dilation), scale)
    return out.view(v.shape).to(v.dtype), lse.view(q.shape[:-1])


def backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], out: Tensor, lse: Tensor,
             kernel: List[int], dilation: List[int], scale: float) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients of q, k, v and rpb (None without rpb), from the forward's output and log-sum-exp."""
    acc = _acc(q.dtype)
    lse6 = lse.float().reshape(_as6(q[..., :1], acc).shape[:-1])
    dq, dk, dv, drpb = _ops().na_backward(
        _as6(dout, acc), _as6(q, acc), _as6(k, acc), _as6(v, acc), _rpb3(rpb, acc), _as6(out, acc), lse6,
        _pad3(kernel), _pad3(dilation), scale)
    drpb = drpb.view(rpb.shape).to(rpb.dtype) if rpb is not None else None
    return dq.view(q.shape).to(q.dtype), dk.view(k.shape).to(k.dtype), dv.view(v.shape).to(v.dtype), drpb
