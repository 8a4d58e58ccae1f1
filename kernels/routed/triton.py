"""Triton routed attention: fused forward and atomic-free backward.

Forward: one program per (query tile of a query block, batch*head); it loads its query tile once and loops over its
`topk` routed key blocks (block ids are loaded as integers, then pointer arithmetic) and their key tiles, with an
online softmax; it writes the output and the log-sum-exp.

Backward (recomputes probabilities from the log-sum-exp, as FlashAttention):
  * dq: one program per (query tile, batch*head), looping over the same routed key tiles;
  * dk/dv: one program per (key tile of a key block, batch*head), looping over the query blocks that routed to it,
    read from a CSR reverse index built on the device with `torch.sort` (a block listed twice by a query block
    appears twice), and over their query tiles.
No atomics, so results are deterministic.

Tiles are powers of two between 16 (the `tl.dot` minimum) and 64 tokens (fewer for wide heads, to fit shared
memory), masked at block edges, so BiFormer's 4- and 16-token regions and large detection-size regions both work;
the head dims are one tile each (<= 256). The kernels compile for sm_80 and sm_90 in fp16/bf16/fp32 and fit their
shared memory (`tests/test_triton_compile.py`, without a GPU), but they have only been run under the interpreter.
Accumulation is fp32. Under `TRITON_INTERPRET=1` (CPU tests) every dot runs in fp32, because the interpreter's
low-precision `tl.dot` is not exact.
"""
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._op import triton_precision

__all__ = ['forward', 'backward']


@triton.jit
def _routed_fwd_kernel(
        Q, K, V, IDX, OUT, LSE, scale, Nq, Nk, Tq, Tk, d, dv, TOPK, Q_TILES,
        BLOCK_TQ: tl.constexpr, BLOCK_TK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) // Q_TILES
    rq = (tl.program_id(0) % Q_TILES) * BLOCK_TQ + tl.arange(0, BLOCK_TQ)
    bh = tl.program_id(1).to(tl.int64)
    rd, rv = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    mq = rq < Tq
    qb = bh * Nq + i  # flat query block
    q = tl.load(Q + qb * Tq * d + rq[:, None] * d + rd[None, :], mask=mq[:, None] & (rd[None, :] < d), other=0.)
    if DOT_F32:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_TQ], float('-inf'), tl.float32)
    l_i = tl.zeros([BLOCK_TQ], tl.float32)
    acc = tl.zeros([BLOCK_TQ, BLOCK_DV], tl.float32)
    for j in range(TOPK):
        kb = bh * Nk + tl.load(IDX + qb * TOPK + j)  # flat key block routed to by this query block
        for t0 in range(0, Tk, BLOCK_TK):
            rk = t0 + tl.arange(0, BLOCK_TK)
            mk = rk < Tk
            k = tl.load(K + kb * Tk * d + rk[:, None] * d + rd[None, :], mask=mk[:, None] & (rd[None, :] < d),
                        other=0.)
            v = tl.load(V + kb * Tk * dv + rk[:, None] * dv + rv[None, :], mask=mk[:, None] & (rv[None, :] < dv),
                        other=0.)
            if DOT_F32:
                k, v = k.to(tl.float32), v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [BLOCK_TQ, BLOCK_TK]
            s = tl.where(mk[None, :], s, float('-inf'))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
    out = acc / l_i[:, None]
    tl.store(OUT + qb * Tq * dv + rq[:, None] * dv + rv[None, :], out.to(OUT.dtype.element_ty),
             mask=mq[:, None] & (rv[None, :] < dv))
    tl.store(LSE + qb * Tq + rq, m_i + tl.log(l_i), mask=mq)


@triton.jit
def _routed_bwd_dq_kernel(
        Q, K, V, IDX, DO, LSE, DELTA, DQ, scale, Nq, Nk, Tq, Tk, d, dv, TOPK, Q_TILES,
        BLOCK_TQ: tl.constexpr, BLOCK_TK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) // Q_TILES
    rq = (tl.program_id(0) % Q_TILES) * BLOCK_TQ + tl.arange(0, BLOCK_TQ)
    bh = tl.program_id(1).to(tl.int64)
    rd, rv = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    mq = rq < Tq
    qb = bh * Nq + i
    q = tl.load(Q + qb * Tq * d + rq[:, None] * d + rd[None, :], mask=mq[:, None] & (rd[None, :] < d), other=0.)
    do = tl.load(DO + qb * Tq * dv + rq[:, None] * dv + rv[None, :], mask=mq[:, None] & (rv[None, :] < dv),
                 other=0.)
    if DOT_F32:
        q, do = q.to(tl.float32), do.to(tl.float32)
    lse = tl.load(LSE + qb * Tq + rq, mask=mq, other=float('inf'))  # padded rows get p = 0
    delta = tl.load(DELTA + qb * Tq + rq, mask=mq, other=0.)
    dq = tl.zeros([BLOCK_TQ, BLOCK_D], tl.float32)
    for j in range(TOPK):
        kb = bh * Nk + tl.load(IDX + qb * TOPK + j)
        for t0 in range(0, Tk, BLOCK_TK):
            rk = t0 + tl.arange(0, BLOCK_TK)
            mk = rk < Tk
            k = tl.load(K + kb * Tk * d + rk[:, None] * d + rd[None, :], mask=mk[:, None] & (rd[None, :] < d),
                        other=0.)
            v = tl.load(V + kb * Tk * dv + rk[:, None] * dv + rv[None, :], mask=mk[:, None] & (rv[None, :] < dv),
                        other=0.)
            if DOT_F32:
                k, v = k.to(tl.float32), v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            p = tl.where(mk[None, :], tl.exp(s - lse[:, None]), 0.)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    tl.store(DQ + qb * Tq * d + rq[:, None] * d + rd[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=mq[:, None] & (rd[None, :] < d))


@triton.jit
def _routed_bwd_dkv_kernel(
        Q, K, V, DO, LSE, DELTA, DK, DV, OFFSETS, QBLOCKS, scale, Nq, Nk, Tq, Tk, d, dv, K_TILES,
        BLOCK_TQ: tl.constexpr, BLOCK_TK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    m = tl.program_id(0).to(tl.int64) // K_TILES
    rk = (tl.program_id(0) % K_TILES) * BLOCK_TK + tl.arange(0, BLOCK_TK)
    bh = tl.program_id(1).to(tl.int64)
    rd, rv = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    mk = rk < Tk
    kb = bh * Nk + m
    k = tl.load(K + kb * Tk * d + rk[:, None] * d + rd[None, :], mask=mk[:, None] & (rd[None, :] < d), other=0.)
    v = tl.load(V + kb * Tk * dv + rk[:, None] * dv + rv[None, :], mask=mk[:, None] & (rv[None, :] < dv), other=0.)
    if DOT_F32:
        k, v = k.to(tl.float32), v.to(tl.float32)
    dk = tl.zeros([BLOCK_TK, BLOCK_D], tl.float32)
    dvacc = tl.zeros([BLOCK_TK, BLOCK_DV], tl.float32)
    start = tl.load(OFFSETS + kb)
    end = tl.load(OFFSETS + kb + 1)
    for t in range(start, end):  # every (query block, slot) that routed to this key block
        qb = bh * Nq + tl.load(QBLOCKS + t)
        for t0 in range(0, Tq, BLOCK_TQ):
            rq = t0 + tl.arange(0, BLOCK_TQ)
            mq = rq < Tq
            q = tl.load(Q + qb * Tq * d + rq[:, None] * d + rd[None, :], mask=mq[:, None] & (rd[None, :] < d),
                        other=0.)
            do = tl.load(DO + qb * Tq * dv + rq[:, None] * dv + rv[None, :], mask=mq[:, None] & (rv[None, :] < dv),
                         other=0.)
            if DOT_F32:
                q, do = q.to(tl.float32), do.to(tl.float32)
            lse = tl.load(LSE + qb * Tq + rq, mask=mq, other=float('inf'))
            delta = tl.load(DELTA + qb * Tq + rq, mask=mq, other=0.)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [BLOCK_TQ, BLOCK_TK]
            p = tl.exp(s - lse[:, None])  # padded query rows: lse = inf -> p = 0
            dvacc += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION)
    tl.store(DK + kb * Tk * d + rk[:, None] * d + rd[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=mk[:, None] & (rd[None, :] < d))
    tl.store(DV + kb * Tk * dv + rk[:, None] * dv + rv[None, :], dvacc.to(DV.dtype.element_ty),
             mask=mk[:, None] & (rv[None, :] < dv))


# Largest token tile (rows of the q and k/v tiles); blocks with more tokens are looped over in tiles.
MAX_TOKEN_TILE = 64
# Token tiles shrink with the head dim so that one tile row set stays within this many bytes: the software-pipelined
# loops keep several tiles in shared memory (compiled for sm_90: fp32, d = 256 needs 344 KB at 64 tokens, over the
# 228 KB limit; 99 KB at 16 tokens).
_TILE_BYTES = 8192


def _pow2_tile(n: int, cap: int) -> int:
    return min(cap, max(16, triton.next_power_of_2(n)))


def _meta(q: Tensor, k: Tensor, v: Tensor) -> dict:
    dot_f32, precision = triton_precision(q.dtype)
    block_d, block_dv = _pow2_tile(q.shape[4], 256), _pow2_tile(v.shape[4], 256)
    token_cap = max(16, min(MAX_TOKEN_TILE, _TILE_BYTES // (max(block_d, block_dv) * q.element_size())))
    return dict(
        BLOCK_TQ=_pow2_tile(q.shape[3], token_cap), BLOCK_TK=_pow2_tile(k.shape[3], token_cap),
        BLOCK_D=block_d, BLOCK_DV=block_dv,
        DOT_F32=dot_f32, PRECISION=precision)


def forward(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, scale: float) -> Tuple[Tensor, Tensor]:
    """Output `[B, H, Nq, Tq, dv]` and fp32 log-sum-exp `[B, H, Nq, Tq]`."""
    q, k, v, idx = q.contiguous(), k.contiguous(), v.contiguous(), idx.contiguous()
    B, H, Nq, Tq, d = q.shape
    Nk, Tk, dv = k.shape[2], k.shape[3], v.shape[-1]
    out = q.new_empty(B, H, Nq, Tq, dv)
    lse = torch.empty(B, H, Nq, Tq, device=q.device, dtype=torch.float32)
    meta = _meta(q, k, v)
    q_tiles = triton.cdiv(Tq, meta['BLOCK_TQ'])
    _routed_fwd_kernel[(Nq * q_tiles, B * H)](
        q, k, v, idx, out, lse, scale, Nq, Nk, Tq, Tk, d, dv, idx.shape[-1], q_tiles, **meta)
    return out, lse


def reverse_index(idx: Tensor, k_blocks: int) -> Tuple[Tensor, Tensor]:
    """CSR of the routing transposed: for flat key block `bh*Nk + m`, `qblocks[offsets[.]:offsets[. + 1]]` are the
    query blocks (within the same batch*head) that routed to it, once per time they listed it."""
    B, H, Nq, topk = idx.shape
    flat = (idx + torch.arange(B * H, device=idx.device).view(B, H, 1, 1) * k_blocks).reshape(-1)
    order = torch.sort(flat, stable=True).indices
    qblocks = (order // topk) % Nq
    counts = torch.bincount(flat, minlength=B * H * k_blocks)
    offsets = torch.zeros(B * H * k_blocks + 1, dtype=torch.int64, device=idx.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    return offsets, qblocks


def backward(
        dout: Tensor, q: Tensor, k: Tensor, v: Tensor, idx: Tensor, out: Tensor, lse: Tensor, scale: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of q, k, v (dq per query block, dk/dv per key block through the reverse index)."""
    q, k, v, idx, dout = q.contiguous(), k.contiguous(), v.contiguous(), idx.contiguous(), dout.contiguous()
    B, H, Nq, Tq, d = q.shape
    Nk, Tk, dv = k.shape[2], k.shape[3], v.shape[-1]
    delta = (dout.float() * out.float()).sum(-1)  # rowsum(dO * O) = rowsum(P * dP), [B, H, Nq, Tq]
    meta = _meta(q, k, v)
    dq, dk, dvv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    q_tiles, k_tiles = triton.cdiv(Tq, meta['BLOCK_TQ']), triton.cdiv(Tk, meta['BLOCK_TK'])
    _routed_bwd_dq_kernel[(Nq * q_tiles, B * H)](
        q, k, v, idx, dout, lse, delta, dq, scale, Nq, Nk, Tq, Tk, d, dv, idx.shape[-1], q_tiles, **meta)
    offsets, qblocks = reverse_index(idx, Nk)
    _routed_bwd_dkv_kernel[(Nk * k_tiles, B * H)](
        q, k, v, dout, lse, delta, dk, dvv, offsets, qblocks, scale, Nq, Nk, Tq, Tk, d, dv, k_tiles, **meta)
    return dq, dk, dvv
