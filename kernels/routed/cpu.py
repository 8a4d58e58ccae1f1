"""Fast CPU routed attention: chunked over query blocks, flash-style backward.

Forward: query blocks are processed in chunks; each chunk gathers only its own selected K/V blocks (`index_select`
on `[B*heads*Nk, Tk*d]` rows, one memcpy per block), runs batched GEMMs and a numerically stable softmax in place,
and keeps only the output and the log-sum-exp. The peak is therefore the output plus one chunk's workspace instead
of the reference's full `topk`-times copy of K and V, its scores and probabilities (kept for its backward).

Backward recomputes each chunk's probabilities from the saved log-sum-exp, forms dq directly and sums the key/value
block gradients into dk/dv with `index_add_` (the adjoint of the gather; duplicates in idx add up, as they must).
"""
from typing import Tuple

import torch
from torch import Tensor

__all__ = ['forward', 'backward']

# Workspace per chunk (gathered K/V, scores, gradients); a few MiB keeps it cache-resident and reusable by the
# allocator without fresh page faults, and well below the reference's full gather at BiFormer shapes.
_CHUNK_BYTES = 4 * 2 ** 20


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # bf16/fp16 matmuls on CPU are slow and inexact; accumulate in fp32 (fp64 stays fp64 for gradcheck)
    return torch.float64 if dtype == torch.float64 else torch.float32


def _layout(q: Tensor, k: Tensor, v: Tensor, idx: Tensor):
    """Flat views: q `[n, Tq, d]` (n = B*H*Nq), k `[B*H*Nk, Tk*d]`, v `[B*H*Nk, Tk*dv]`, row indices `[n*topk]`."""
    B, H, Nq, Tq, d = q.shape
    Nk, Tk, dv = k.shape[2], k.shape[3], v.shape[-1]
    topk = idx.shape[-1]
    base = torch.arange(B * H, device=idx.device).view(B, H, 1, 1) * Nk
    rows = (idx + base).reshape(-1)  # key block j of (b, h) is row (b*H + h)*Nk + j
    ct = _compute_dtype(q.dtype)
    qf = q.reshape(B * H * Nq, Tq, d).to(ct)
    kf = k.reshape(B * H * Nk, Tk * d).to(ct)
    vf = v.reshape(B * H * Nk, Tk * dv).to(ct)
    per_block = qf.element_size() * topk * Tk * (2 * (d + dv) + 3 * Tq)
    chunk = max(1, min(B * H * Nq, _CHUNK_BYTES // per_block))
    return qf, kf, vf, rows, topk * Tk, chunk


def forward(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, scale: float) -> Tuple[Tensor, Tensor]:
    """Output `[B, H, Nq, Tq, dv]` and log-sum-exp `[B, H, Nq, Tq]` (fp32; fp64 for fp64 inputs)."""
    qf, kf, vf, rows, nkeys, chunk = _layout(q, k, v, idx)
    n, Tq, d = qf.shape
    dv = v.shape[-1]
    topk = rows.numel() // n
    out = qf.new_empty(n, Tq, dv)
    lse = qf.new_empty(n, Tq)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        r = rows[s * topk:e * topk]
        kg = kf.index_select(0, r).view(e - s, nkeys, d)
        vg = vf.index_select(0, r).view(e - s, nkeys, dv)
        p = torch.baddbmm(qf.new_empty(()), qf[s:e], kg.transpose(1, 2), beta=0, alpha=scale)  # [c, Tq, nkeys]
        m = p.amax(-1, keepdim=True)
        p.sub_(m).exp_()
        denom = p.sum(-1, keepdim=True)
        torch.bmm(p, vg, out=out[s:e]).div_(denom)
        lse[s:e] = (m + denom.log()).squeeze(-1)
    return out.view(*q.shape[:4], dv).to(q.dtype), lse.view(q.shape[:4])


def backward(
        dout: Tensor, q: Tensor, k: Tensor, v: Tensor, idx: Tensor, out: Tensor, lse: Tensor, scale: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of q, k, v from the saved output and log-sum-exp (probabilities are recomputed per chunk)."""
    qf, kf, vf, rows, nkeys, chunk = _layout(q, k, v, idx)
    n, Tq, d = qf.shape
    dv = v.shape[-1]
    topk = rows.numel() // n
    do = dout.reshape(n, Tq, dv).to(qf.dtype)
    lse_f = lse.reshape(n, Tq, 1).to(qf.dtype)
    # softmax backward: dS = P * (dP - rowsum(dO * O)), the row sum computed once from the saved output
    delta = (do * out.reshape(n, Tq, dv).to(qf.dtype)).sum(-1, keepdim=True)
    dq = torch.empty_like(qf)
    dk = torch.zeros_like(kf)
    dvv = torch.zeros_like(vf)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        r = rows[s * topk:e * topk]
        kg = kf.index_select(0, r).view(e - s, nkeys, d)
        vg = vf.index_select(0, r).view(e - s, nkeys, dv)
        q_c, do_c = qf[s:e], do[s:e]
        p = torch.baddbmm(qf.new_empty(()), q_c, kg.transpose(1, 2), beta=0, alpha=scale)
        p.sub_(lse_f[s:e]).exp_()  # [c, Tq, nkeys]
        dvv.index_add_(0, r, torch.bmm(p.transpose(1, 2), do_c).view(-1, vf.shape[1]))
        ds = torch.bmm(do_c, vg.transpose(1, 2)).sub_(delta[s:e]).mul_(p).mul_(scale)
        torch.bmm(ds, kg, out=dq[s:e])
        dk.index_add_(0, r, torch.bmm(ds.transpose(1, 2), q_c).view(-1, kf.shape[1]))
    return dq.view(q.shape).to(q.dtype), dk.view(k.shape).to(k.dtype), dvv.view(v.shape).to(v.dtype)
