"""Fused C++ CPU linear attention (`csrc/linear_cpu.cpp`), forward and backward, every normaliser.

Per (batch, head): one pass over k, v accumulating `k^T v` and `sum k` in register blocks, one pass over q writing
the normalised output; the backward is two passes as well (q, dO, then k, v), recomputing the row sums and
`dO . out` instead of reading N-sized intermediates. q, k, v are read through their strides (views of a fused qkv
projection need no copy). The library is built once per machine on first use (`hiervit.kernels._cpp_ext`). Compute is
fp32 (fp64 for fp64 inputs, which is what gradcheck runs); bf16 and fp16 inputs are converted to fp32 and the results
cast back. The backward is deterministic (fixed-order sums over token chunks and over the batch, no atomics).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._cpp_ext import CppExtension, load, status
from .reference import resolve

__all__ = ['EXTENSION', 'availability', 'forward', 'backward']

EXTENSION = CppExtension('hiervit_linear_cpu', ('linear/csrc/linear_cpu.cpp',))
_MODES = {'none': 0, 'sum': 1, 'clamp': 2, 'injective': 3}


def availability() -> Optional[str]:
    """None if the library is loaded (building it on this first call if needed), else why it cannot be."""
    return status(EXTENSION)


def _ops():
    load(EXTENSION)
    return torch.ops.hiervit_linear_cpu


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows(x: Tensor, acc: torch.dtype) -> Tensor:
    """`x` in the compute dtype with a unit channel stride (a view where it already has both)."""
    x = x.to(acc)
    return x if x.stride(-1) == 1 else x.contiguous()


def _temp(temperature: Optional[Tensor], acc: torch.dtype) -> Optional[Tensor]:
    return None if temperature is None else temperature.reshape(-1).to(acc).contiguous()


def forward(
        q: Tensor, k: Tensor, v: Tensor, temperature: Optional[Tensor], normalizer: str, eps: float,
        clamp_min: float, scale: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Output `[B, H, N, dv]` and the saved state `k^T v` `[B, H, d, dv]`, `sum_N(k)` `[B, H, d]`, `r` `[B, H, N]`."""
    mode, alpha = resolve(normalizer, k.shape[-2], scale)
    acc = _acc(q.dtype)
    out, kv, ksum, r = _ops().linear_forward(
        _rows(q, acc), _rows(k, acc), _rows(v, acc), _temp(temperature, acc), _MODES[mode], alpha, eps, clamp_min)
    return out.to(v.dtype), kv, ksum, r


def backward(
        dout: Tensor, q: Tensor, k: Tensor, v: Tensor, temperature: Optional[Tensor], out: Tensor, kv: Tensor,
        ksum: Tensor, r: Tensor, normalizer: str, eps: float, clamp_min: float, scale: float,
) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients of q, k, v and the temperature (shaped as given; None without one). `out` and `r` are not read:
    the kernel recomputes what it needs of them from q and the saved state."""
    mode, alpha = resolve(normalizer, k.shape[-2], scale)
    acc = _acc(q.dtype)
    dq, dk, dv, dt = _ops().linear_backward(
        _rows(dout, acc), _rows(q, acc), _rows(k, acc), _rows(v, acc), _temp(temperature, acc),
        kv.to(acc).contiguous(), ksum.to(acc).contiguous(), _MODES[mode], alpha, eps, clamp_min)
    dt = None if temperature is None else dt.to(temperature.dtype).view(temperature.shape)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dt
