"""NATTEN as a backend (`natten`: NATTEN picks its kernel; `flex`: NATTEN's FlexAttention kernel `flex-fna`).

NATTEN >= 0.20 has no relative position bias, and on CPU it only runs FlexAttention uncompiled, which has no backward
in this torch; the dispatcher refuses those calls before they get here. `neighborhood_attention` calls these
functions directly rather than through the hiervit custom op, so NATTEN's own autograd provides the backward (an
autograd graph cannot be recorded inside a custom op's implementation).
"""
from typing import List, Optional, Tuple

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
    return _na(q, k, v, kernel, dilation, scale, None)


def flex_forward(q: Tensor, k: Tensor, v: Tensor, rpb: None, kernel: List[int], dilation: List[int],
                 scale: float) -> Tuple[Tensor, Tensor]:
    return _na(q, k, v, kernel, dilation, scale, 'flex-fna')
