"""NATTEN as a backend (`natten`: NATTEN picks its kernel; `flex`: NATTEN's FlexAttention kernel `flex-fna`).

Forward only: NATTEN >= 0.20 has no relative position bias, and its autograd cannot run inside our custom op (the
op's backend implementation runs below the autograd dispatch key). They are peers for inference and for checking
semantics; the dispatcher refuses calls that need gradients or rpb before they get here.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ['natten_forward', 'flex_forward']


def _na(q: Tensor, k: Tensor, v: Tensor, kernel: List[int], dilation: List[int], scale: float,
        backend: Optional[str]) -> Tuple[Tensor, Tensor]:
    import natten
    fn = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[q.dim() - 3]
    out, lse = fn(q, k, v, tuple(kernel), dilation=tuple(dilation), scale=scale, backend=backend, return_lse=True)
    return out, lse.float()


def natten_forward(q: Tensor, k: Tensor, v: Tensor, rpb: None, kernel: List[int], dilation: List[int],
                   scale: float) -> Tuple[Tensor, Tensor]:
    with torch.no_grad():
        return _na(q, k, v, kernel, dilation, scale, None)


def flex_forward(q: Tensor, k: Tensor, v: Tensor, rpb: None, kernel: List[int], dilation: List[int],
                 scale: float) -> Tuple[Tensor, Tensor]:
    with torch.no_grad():
        return _na(q, k, v, kernel, dilation, scale, 'flex-fna')
