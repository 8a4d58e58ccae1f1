"""Reference routed attention: gather the selected key/value blocks, then plain attention.

This is the oracle every fast backend is tested against. It materialises the `topk`-times copy of K and V that
BiFormer's `KVGather` makes, so it is memory hungry by design; keep it short and obviously correct.
"""
from typing import Tuple

import torch
from torch import Tensor

__all__ = ['forward', 'backward', 'gather_blocks']


def gather_blocks(x: Tensor, idx: Tensor) -> Tensor:
    """Copy the selected blocks: x `[B, H, Nk, T, c]`, idx `[B, H, Nq, topk]` -> `[B, H, Nq, topk * T, c]`."""
    B, H, _, T, c = x.shape
    Nq, topk = idx.shape[-2:]
    b = torch.arange(B, device=x.device).view(B, 1, 1, 1)
    h = torch.arange(H, device=x.device).view(1, H, 1, 1)
    return x[b, h, idx].reshape(B, H, Nq, topk * T, c)  # [B, H, Nq, topk, T, c] -> joint key axis


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # half precision is upcast so that the oracle is as exact as the fp32 accumulation of the fast paths
    return torch.float64 if dtype == torch.float64 else torch.float32


def forward(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, scale: float) -> Tuple[Tensor, Tensor]:
    """Output `[B, H, Nq, Tq, dv]` and the log-sum-exp of the scaled scores `[B, H, Nq, Tq]` (fp32; fp64 for fp64)."""
    ct = _compute_dtype(q.dtype)
    kg, vg = gather_blocks(k, idx).to(ct), gather_blocks(v, idx).to(ct)  # [B, H, Nq, topk * Tk, d | dv]
    s = (q.to(ct) @ kg.transpose(-1, -2)) * scale  # [B, H, Nq, Tq, topk * Tk]
    lse = torch.logsumexp(s, dim=-1)
    out = torch.softmax(s, dim=-1) @ vg
    return out.to(q.dtype), lse


def backward(
        dout: Tensor, q: Tensor, k: Tensor, v: Tensor, idx: Tensor, out: Tensor, lse: Tensor, scale: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of q, k, v, recomputed from scratch (`out` and `lse` are not used).

    Textbook softmax-attention gradients on the gathered copy; each gathered block's gradient is then summed back
    into the block it was copied from (the adjoint of the gather).
    """
    ct = _compute_dtype(q.dtype)
    qc, do = q.to(ct), dout.to(ct)
    kg, vg = gather_blocks(k, idx).to(ct), gather_blocks(v, idx).to(ct)
    p = torch.softmax((qc @ kg.transpose(-1, -2)) * scale, dim=-1)  # [B, H, Nq, Tq, topk * Tk]
    dvg = p.transpose(-1, -2) @ do
    dp = do @ vg.transpose(-1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True)) * scale
    dq = ds @ kg
    dkg = ds.transpose(-1, -2) @ qc
    return dq.to(q.dtype), _scatter_blocks(dkg, idx, k).to(k.dtype), _scatter_blocks(dvg, idx, v).to(v.dtype)


def _scatter_blocks(xg: Tensor, idx: Tensor, like: Tensor) -> Tensor:
    """Adjoint of `gather_blocks`: `[B, H, Nq, topk * T, c]` summed into `[B, H, Nk, T, c]` at the gathered blocks."""
    B, H, Nk, T, c = like.shape
    Nq, topk = idx.shape[-2:]
    b = torch.arange(B, device=xg.device).view(B, 1, 1, 1)
    h = torch.arange(H, device=xg.device).view(1, H, 1, 1)
    out = xg.new_zeros(B, H, Nk, T, c)
    return out.index_put_((b, h, idx), xg.reshape(B, H, Nq, topk, T, c), accumulate=True)
