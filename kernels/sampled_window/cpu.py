"""Fused C++ CPU sampled-window attention (`csrc/sw_cpu.cpp`), forward and backward.

Each (window, head) samples its keys and values into a per-thread buffer and attends from there, so the sampled K
and V (`[B, H, W, heads, d]` each in the grid_sample path) and the per-window scores are never written to memory.
The library is built once per machine on first use (`hiervit.kernels._cpp_ext`). Compute is fp32 (fp64 for fp64
inputs, which is what gradcheck runs); bf16 and fp16 inputs are converted to fp32 and the results cast back. q, k, v
and dO keep their strides (views of a qkv projection are read in place) as long as the channel axis is contiguous.
The backward is deterministic (no atomics: one task per (batch, head) owns that head's dK and dV and walks its windows
in order; the bias gradient is summed per task, then over the batch in a fixed order).
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._cpp_ext import CppExtension, load, status

__all__ = ['EXTENSION', 'availability', 'forward', 'backward']

EXTENSION = CppExtension('hiervit_sw_cpu', ('sampled_window/csrc/sw_cpu.cpp',))


def availability() -> Optional[str]:
    """None if the library is loaded (building it on this first call if needed), else why it cannot be."""
    return status(EXTENSION)


def _ops():
    load(EXTENSION)
    return torch.ops.hiervit_sw_cpu


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _map(x: Tensor, acc: torch.dtype) -> Tensor:
    """x in the compute dtype with a contiguous channel axis (a copy only where that is not already so)."""
    x = x.to(acc)
    return x if x.stride(-1) == 1 else x.contiguous()


def _params(offsets: Tensor, scales: Tensor, rpb: Optional[Tensor], acc: torch.dtype):
    return (offsets.to(acc).contiguous(), scales.to(acc).contiguous(),
            None if rpb is None else rpb.to(acc).contiguous())


def forward(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, scales: Tensor, rpb: Optional[Tensor],
            window: List[int], scale: float) -> Tuple[Tensor, Tensor]:
    """Output (shape and dtype of v) and fp32 log-sum-exp `[B, H, W, heads]`."""
    acc = _acc(q.dtype)
    out, lse = _ops().sw_forward(_map(q, acc), _map(k, acc), _map(v, acc), *_params(offsets, scales, rpb, acc),
                                 window, scale)
    return out.to(v.dtype), lse


def backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, scales: Tensor, rpb: Optional[Tensor],
             out: Tensor, lse: Tensor, window: List[int], scale: float
             ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients of q, k, v, offsets, scales and rpb (None without rpb); recomputes the probabilities (out and lse
    unused)."""
    acc = _acc(q.dtype)
    grads = _ops().sw_backward(_map(dout, acc), _map(q, acc), _map(k, acc), _map(v, acc),
                               *_params(offsets, scales, rpb, acc), window, scale)
    dq, dk, dv, doffsets, dscales = grads[:5]
    drpb = grads[5].to(rpb.dtype) if rpb is not None else None
    return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), doffsets.to(offsets.dtype), dscales.to(scales.dtype),
            drpb)
