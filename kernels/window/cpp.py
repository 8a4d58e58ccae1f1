"""Fused C++ CPU window attention (`csrc/win_cpu.cpp`), forward and backward, the plain window mode.

Each (window, head, image) task reads its window's tokens straight out of the heads-last maps (any strides with a
unit channel stride, e.g. views of a qkv projection: no partition, roll or pad copy), computes exact per-window
softmax attention with Swin's bias and region mask in small per-thread buffers, and writes its output rows back in
place. The backward recomputes the probabilities from the saved log-sum-exp and is deterministic (every token lies in
one window; the bias gradient is summed per (window, head), then over windows in a fixed order). The library is built
once per machine on first use (`hiervit.kernels._cpp_ext`). Compute is fp32 (fp64 for fp64 inputs, which is what
gradcheck runs); bf16 and fp16 inputs are converted to fp32 and the results cast back.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._cpp_ext import CppExtension, load, status

__all__ = ['EXTENSION', 'availability', 'forward', 'backward']

EXTENSION = CppExtension('hiervit_win_cpu', ('window/csrc/win_cpu.cpp',))


def availability() -> Optional[str]:
    """None if the library is loaded (building it on this first call if needed), else why it cannot be."""
    return status(EXTENSION)


def _ops():
    load(EXTENSION)
    return torch.ops.hiervit_win_cpu


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _map(x: Tensor, acc: torch.dtype) -> Tensor:
    """`[B, H, W, heads, c]` in the compute dtype with a unit channel stride (a view when it already is one)."""
    x = x.to(acc)
    return x if x.stride(-1) == 1 else x.contiguous()


def _table(rpb: Optional[Tensor], acc: torch.dtype) -> Optional[Tensor]:
    return None if rpb is None else rpb.to(acc).contiguous()


def forward(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], window: List[int], shift: List[int],
            pad: List[int], mask_pad: bool, scale: float) -> Tuple[Tensor, Tensor]:
    """Output `[B, H, W, heads, dv]` (dtype of v) and fp32 log-sum-exp `[B, H, W, heads]`."""
    acc = _acc(q.dtype)
    out, lse = _ops().win_forward(_map(q, acc), _map(k, acc), _map(v, acc), _table(rpb, acc), window, shift, pad,
                                  mask_pad, scale)
    return out.to(v.dtype), lse


def backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], out: Tensor, lse: Tensor,
             window: List[int], shift: List[int], pad: List[int], mask_pad: bool,
             scale: float) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients of q, k, v and rpb (None without rpb), recomputed from the saved log-sum-exp (`out` is unused:
    the row sums of dO o O are taken as those of P o dP, which the kernel has at hand)."""
    acc = _acc(q.dtype)
    dq, dk, dv, drpb = _ops().win_backward(_map(dout, acc), _map(q, acc), _map(k, acc), _map(v, acc),
                                           _table(rpb, acc), lse.float(), window, shift, pad, mask_pad, scale)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None if rpb is None else drpb.to(rpb.dtype)
