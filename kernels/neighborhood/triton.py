"""Triton neighborhood attention, 1-D and 2-D (1-D runs as 2-D with a single row), forward and backward.

All coordinates inside the kernels are dilation sub-grid coordinates: a program owns one TY x TX tile of one sub-grid
(group) of one (batch, head), and addresses the full-resolution heads-last tensors with `group + dilation * i`.

* Forward: the union of a query tile's windows is a box of at most (TY + kh - 1) x (TX + kw - 1) keys (window starts
  are monotone), visited one key row at a time, in column chunks of at most BN keys, with an online softmax; each
  score is masked to its own query's window and gets its rpb entry in-kernel. Saves the fp32 log-sum-exp.
* Backward: `delta = rowsum(dO o O)` in torch; a dQ kernel per query tile (mirror of the forward, P recomputed from
  the LSE) and a dK/dV kernel per key tile that visits the key tile's inverse neighbourhood, the contiguous range of
  queries whose windows can contain it, so no atomics are needed. With rpb the dQ kernel also writes dS per (query,
  window position) to a `[B, heads, H, W, kh * kw]` fp32 buffer (the size of the attention map) that torch reduces into
  d_rpb with `index_add_` (deterministic on CPU, atomic on CUDA).
* Dots take fp16/bf16 operands with fp32 accumulation on a GPU, and fp32 operands under `TRITON_INTERPRET=1` (the
  interpreter's low-precision dot is unreliable). Launch configurations are fixed (no autotuning), so the kernels
  also run in the interpreter without a GPU driver. Offsets are 64-bit (from the batch/head index on).
* `tests/test_triton_compile.py` compiles every configuration for sm_80 and sm_90 without a GPU and checks shared
  memory; the kernels have not run on a GPU yet.
"""
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._op import triton_precision
from .reference import neighbor_index

__all__ = ['forward', 'backward']


@triton.jit
def _start(i, length, K: tl.constexpr):
    """NATTEN window start of in-group position i on an axis of group length `length`."""
    return tl.minimum(tl.maximum(i - K // 2, 0), length - K)


@triton.jit
def _tile_coords(pid, n_ty, n_tx, H, W, DY, DX, TY: tl.constexpr, TX: tl.constexpr):
    """Decode a program id into (group y, group x, group lengths, in-group coordinates of the tile's slots)."""
    txi = pid % n_tx
    rest = pid // n_tx
    tyi = rest % n_ty
    grp = rest // n_ty
    gx = grp % DX
    gy = grp // DX
    len_y = (H - gy + DY - 1) // DY
    len_x = (W - gx + DX - 1) // DX
    offs = tl.arange(0, TY * TX)
    iy = tyi * TY + offs // TX
    ix = txi * TX + offs % TX
    return gy, gx, len_y, len_x, tyi * TY, txi * TX, iy, ix


@triton.jit
def _fwd_kernel(
        Q, K, V, RPB, O, LSE, H, W, HEADS, DY, DX, n_ty, n_tx, scale,
        sq_b, sq_h, sq_w, sv_b, sv_h, sv_w,
        KH: tl.constexpr, KW: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr,
        BDV: tl.constexpr, TY: tl.constexpr, TX: tl.constexpr, BN: tl.constexpr, HAS_RPB: tl.constexpr,
        F32_DOT: tl.constexpr, PREC: tl.constexpr,
):
    bh = tl.program_id(1).to(tl.int64)  # 64-bit: every offset below is derived from b or h
    b = bh // HEADS
    h = bh % HEADS
    gy, gx, len_y, len_x, y0, x0, iy, ix = _tile_coords(tl.program_id(0), n_ty, n_tx, H, W, DY, DX, TY, TX)
    if (y0 < len_y) & (x0 < len_x):
        q_ok = (iy < len_y) & (ix < len_x)
        iy = tl.minimum(iy, len_y - 1)
        ix = tl.minimum(ix, len_x - 1)
        sy = _start(iy, len_y, KH)
        sx = _start(ix, len_x, KW)
        # Key box of the tile: from the first slot's window start to the last slot's window end, per axis.
        hy0 = _start(y0, len_y, KH)
        hy1 = _start(tl.minimum(y0 + TY - 1, len_y - 1), len_y, KH) + KH
        hx0 = _start(x0, len_x, KW)
        hx1 = _start(tl.minimum(x0 + TX - 1, len_x - 1), len_x, KW) + KW
        offs_d = tl.arange(0, BD)
        offs_dv = tl.arange(0, BDV)
        q_row = b * sq_b + (gy + DY * iy) * sq_h + (gx + DX * ix) * sq_w + h * D
        q = tl.load(Q + q_row[:, None] + offs_d[None, :], mask=offs_d[None, :] < D, other=0.0)
        if F32_DOT:
            q = q.to(tl.float32)
        m_i = tl.full([TY * TX], float('-inf'), tl.float32)
        l_i = tl.zeros([TY * TX], tl.float32)
        acc = tl.zeros([TY * TX, BDV], tl.float32)
        for ky in range(hy0, hy1):
            for kx0 in range(hx0, hx1, BN):  # key columns in chunks of BN (one chunk unless the box is wider)
                kx = kx0 + tl.arange(0, BN)
                kx_ok = kx < hx1
                in_x = (kx[None, :] >= sx[:, None]) & (kx[None, :] < sx[:, None] + KW) & kx_ok[None, :]
                k_row = b * sq_b + (gy + DY * ky) * sq_h + (gx + DX * kx) * sq_w + h * D
                k = tl.load(K + k_row[:, None] + offs_d[None, :], mask=kx_ok[:, None] & (offs_d[None, :] < D),
                            other=0.0)
                v_row = b * sv_b + (gy + DY * ky) * sv_h + (gx + DX * kx) * sv_w + h * DV
                v = tl.load(V + v_row[:, None] + offs_dv[None, :], mask=kx_ok[:, None] & (offs_dv[None, :] < DV),
                            other=0.0)
                if F32_DOT:
                    k = k.to(tl.float32)
                    v = v.to(tl.float32)
                s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale  # [M, BN]
                inside = in_x & ((ky >= sy) & (ky < sy + KH))[:, None]
                if HAS_RPB:
                    ry = ky - iy + KH - 1
                    rx = kx[None, :] - ix[:, None] + KW - 1
                    s += tl.load(RPB + (h * (2 * KH - 1) + ry[:, None]) * (2 * KW - 1) + rx, mask=inside, other=0.0)
                s = tl.where(inside, s, float('-inf'))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_safe = tl.where(m_new == float('-inf'), 0.0, m_new)  # rows with nothing in this key row yet
                alpha = tl.exp(m_i - m_safe)
                p = tl.exp(s - m_safe[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
                m_i = m_new
        out = acc / l_i[:, None]
        o_row = b * sv_b + (gy + DY * iy) * sv_h + (gx + DX * ix) * sv_w + h * DV
        tl.store(O + o_row[:, None] + offs_dv[None, :], out.to(O.dtype.element_ty),
                 mask=q_ok[:, None] & (offs_dv[None, :] < DV))
        lse_idx = ((b * H + gy + DY * iy) * W + gx + DX * ix) * HEADS + h
        tl.store(LSE + lse_idx, m_i + tl.log(l_i), mask=q_ok)


@triton.jit
def _bwd_dq_kernel(
        Q, K, V, RPB, DO, LSE, DELTA, DQ, DS, H, W, HEADS, DY, DX, n_ty, n_tx, scale,
        sq_b, sq_h, sq_w, sv_b, sv_h, sv_w,
        KH: tl.constexpr, KW: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr,
        BDV: tl.constexpr, TY: tl.constexpr, TX: tl.constexpr, BN: tl.constexpr, HAS_RPB: tl.constexpr,
        F32_DOT: tl.constexpr, PREC: tl.constexpr,
):
    bh = tl.program_id(1).to(tl.int64)  # 64-bit: every offset below is derived from b or h
    b = bh // HEADS
    h = bh % HEADS
    gy, gx, len_y, len_x, y0, x0, iy, ix = _tile_coords(tl.program_id(0), n_ty, n_tx, H, W, DY, DX, TY, TX)
    if (y0 < len_y) & (x0 < len_x):
        q_ok = (iy < len_y) & (ix < len_x)
        iy = tl.minimum(iy, len_y - 1)
        ix = tl.minimum(ix, len_x - 1)
        sy = _start(iy, len_y, KH)
        sx = _start(ix, len_x, KW)
        hy0 = _start(y0, len_y, KH)
        hy1 = _start(tl.minimum(y0 + TY - 1, len_y - 1), len_y, KH) + KH
        hx0 = _start(x0, len_x, KW)
        hx1 = _start(tl.minimum(x0 + TX - 1, len_x - 1), len_x, KW) + KW
        offs_d = tl.arange(0, BD)
        offs_dv = tl.arange(0, BDV)
        q_row = b * sq_b + (gy + DY * iy) * sq_h + (gx + DX * ix) * sq_w + h * D
        q = tl.load(Q + q_row[:, None] + offs_d[None, :], mask=offs_d[None, :] < D, other=0.0)
        o_row = b * sv_b + (gy + DY * iy) * sv_h + (gx + DX * ix) * sv_w + h * DV
        do = tl.load(DO + o_row[:, None] + offs_dv[None, :], mask=offs_dv[None, :] < DV, other=0.0)
        if F32_DOT:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        stat_idx = ((b * H + gy + DY * iy) * W + gx + DX * ix) * HEADS + h
        lse = tl.load(LSE + stat_idx)
        delta = tl.load(DELTA + stat_idx)
        dq = tl.zeros([TY * TX, BD], tl.float32)
        for ky in range(hy0, hy1):
            for kx0 in range(hx0, hx1, BN):
                kx = kx0 + tl.arange(0, BN)
                kx_ok = kx < hx1
                in_x = (kx[None, :] >= sx[:, None]) & (kx[None, :] < sx[:, None] + KW) & kx_ok[None, :]
                k_row = b * sq_b + (gy + DY * ky) * sq_h + (gx + DX * kx) * sq_w + h * D
                k = tl.load(K + k_row[:, None] + offs_d[None, :], mask=kx_ok[:, None] & (offs_d[None, :] < D),
                            other=0.0)
                v_row = b * sv_b + (gy + DY * ky) * sv_h + (gx + DX * kx) * sv_w + h * DV
                v = tl.load(V + v_row[:, None] + offs_dv[None, :], mask=kx_ok[:, None] & (offs_dv[None, :] < DV),
                            other=0.0)
                if F32_DOT:
                    k = k.to(tl.float32)
                    v = v.to(tl.float32)
                s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
                inside = in_x & ((ky >= sy) & (ky < sy + KH))[:, None]
                if HAS_RPB:
                    ry = ky - iy + KH - 1
                    rx = kx[None, :] - ix[:, None] + KW - 1
                    s += tl.load(RPB + (h * (2 * KH - 1) + ry[:, None]) * (2 * KW - 1) + rx, mask=inside, other=0.0)
                p = tl.where(inside, tl.exp(s - lse[:, None]), 0.0)
                dp = tl.dot(do, tl.trans(v), input_precision=PREC)
                ds = p * (dp - delta[:, None])
                dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
                if HAS_RPB:
                    # dS per (query, window position); reduced into d_rpb by torch.
                    win = (ky - sy)[:, None] * KW + (kx[None, :] - sx[:, None])
                    ds_idx = (((b * HEADS + h) * H + gy + DY * iy) * W + gx + DX * ix) * (KH * KW)
                    tl.store(DS + ds_idx[:, None] + win, ds, mask=inside & q_ok[:, None])
        tl.store(DQ + q_row[:, None] + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
                 mask=q_ok[:, None] & (offs_d[None, :] < D))


@triton.jit
def _bwd_dkdv_kernel(
        Q, K, V, RPB, DO, LSE, DELTA, DK, DV_, H, W, HEADS, DY, DX, n_ty, n_tx, scale,
        sq_b, sq_h, sq_w, sv_b, sv_h, sv_w,
        KH: tl.constexpr, KW: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr,
        BDV: tl.constexpr, TY: tl.constexpr, TX: tl.constexpr, BQ: tl.constexpr, HAS_RPB: tl.constexpr,
        F32_DOT: tl.constexpr, PREC: tl.constexpr,
):
    bh = tl.program_id(1).to(tl.int64)  # 64-bit: every offset below is derived from b or h
    b = bh // HEADS
    h = bh % HEADS
    gy, gx, len_y, len_x, y0, x0, ky, kx = _tile_coords(tl.program_id(0), n_ty, n_tx, H, W, DY, DX, TY, TX)
    if (y0 < len_y) & (x0 < len_x):
        k_ok = (ky < len_y) & (kx < len_x)
        ky = tl.minimum(ky, len_y - 1)
        kx = tl.minimum(kx, len_x - 1)
        offs_d = tl.arange(0, BD)
        offs_dv = tl.arange(0, BDV)
        k_row = b * sq_b + (gy + DY * ky) * sq_h + (gx + DX * kx) * sq_w + h * D
        k = tl.load(K + k_row[:, None] + offs_d[None, :], mask=offs_d[None, :] < D, other=0.0)
        v_row = b * sv_b + (gy + DY * ky) * sv_h + (gx + DX * kx) * sv_w + h * DV
        v = tl.load(V + v_row[:, None] + offs_dv[None, :], mask=offs_dv[None, :] < DV, other=0.0)
        if F32_DOT:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        # Inverse neighbourhood of the tile: queries q whose window [start(q), start(q) + k) meets [first, last].
        # With start(q) = clamp(q - k // 2, 0, len - k): lowest such q is 0 if first < k, else first - k + 1 + k // 2;
        # highest is len - 1 if last >= len - k, else last + k // 2.
        ky1 = tl.minimum(y0 + TY - 1, len_y - 1)
        kx1 = tl.minimum(x0 + TX - 1, len_x - 1)
        qy0 = tl.where(y0 < KH, 0, y0 - KH + 1 + KH // 2)
        qy1 = tl.where(ky1 >= len_y - KH, len_y - 1, tl.minimum(ky1 + KH // 2, len_y - 1))
        qx0 = tl.where(x0 < KW, 0, x0 - KW + 1 + KW // 2)
        qx1 = tl.where(kx1 >= len_x - KW, len_x - 1, tl.minimum(kx1 + KW // 2, len_x - 1))
        dk = tl.zeros([TY * TX, BD], tl.float32)
        dv = tl.zeros([TY * TX, BDV], tl.float32)
        for qy in range(qy0, qy1 + 1):
            sy = _start(qy, len_y, KH)
            in_y = (ky >= sy) & (ky < sy + KH) & k_ok
            for qxs in range(qx0, qx1 + 1, BQ):
                qx = qxs + tl.arange(0, BQ)
                qx_ok = qx <= qx1
                qx = tl.minimum(qx, qx1)
                sx = _start(qx, len_x, KW)
                q_row = b * sq_b + (gy + DY * qy) * sq_h + (gx + DX * qx) * sq_w + h * D
                q = tl.load(Q + q_row[:, None] + offs_d[None, :], mask=offs_d[None, :] < D, other=0.0)
                o_row = b * sv_b + (gy + DY * qy) * sv_h + (gx + DX * qx) * sv_w + h * DV
                do = tl.load(DO + o_row[:, None] + offs_dv[None, :], mask=offs_dv[None, :] < DV, other=0.0)
                if F32_DOT:
                    q = q.to(tl.float32)
                    do = do.to(tl.float32)
                stat_idx = ((b * H + gy + DY * qy) * W + gx + DX * qx) * HEADS + h
                lse = tl.load(LSE + stat_idx)
                delta = tl.load(DELTA + stat_idx)
                s = tl.dot(k, tl.trans(q), input_precision=PREC) * scale  # [M keys, BQ queries]
                inside = (in_y[:, None] & (kx[:, None] >= sx[None, :]) & (kx[:, None] < sx[None, :] + KW)
                          & qx_ok[None, :])
                if HAS_RPB:
                    ry = ky - qy + KH - 1
                    rx = kx[:, None] - qx[None, :] + KW - 1
                    s += tl.load(RPB + (h * (2 * KH - 1) + ry[:, None]) * (2 * KW - 1) + rx, mask=inside,
                                 other=0.0)
                p = tl.where(inside, tl.exp(s - lse[None, :]), 0.0)
                dv += tl.dot(p.to(do.dtype), do, input_precision=PREC)
                dp = tl.dot(v, tl.trans(do), input_precision=PREC)
                ds = p * (dp - delta[None, :])
                dk += tl.dot(ds.to(q.dtype), q, input_precision=PREC)
        tl.store(DK + k_row[:, None] + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
                 mask=k_ok[:, None] & (offs_d[None, :] < D))
        tl.store(DV_ + v_row[:, None] + offs_dv[None, :], dv.to(DV_.dtype.element_ty),
                 mask=k_ok[:, None] & (offs_dv[None, :] < DV))


def _pow2(x: int, least: int = 16) -> int:
    return max(least, triton.next_power_of_2(x))


def _as_2d(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], kernel: List[int], dilation: List[int]):
    """1-D calls run as 2-D with one row; inputs made contiguous heads-last."""
    if q.dim() == 4:
        q, k, v = (t.unsqueeze(1) for t in (q, k, v))
        kernel, dilation = [1] + list(kernel), [1] + list(dilation)
        rpb = rpb.unsqueeze(1) if rpb is not None else None
    return q.contiguous(), k.contiguous(), v.contiguous(), (None if rpb is None else rpb.contiguous()), kernel, dilation


def _config(H: int, W: int, kernel: List[int], dilation: List[int]) -> Tuple[int, int]:
    """Query/key tile (TY, TX); TY * TX >= 16 (tl.dot's minimum)."""
    if H == 1:
        return 1, 16 if triton.cdiv(W, dilation[1]) <= 16 else 32
    return 4, 8


# Column chunk of the key loop (BN, forward and dQ) and of the query loop (BQ, dK/dV): the x-extent of a tile's window
# union (TX + kw - 1) rounded up to a power of two, capped so that one chunk of an operand stays within _TILE_BYTES,
# because the software pipeline keeps several chunks of K, V (or Q, dO) in shared memory. Compiled for sm_80 without
# the cap, fp32 with d = 256 needed 209 KB at k = 13 (2-D) and 352 KB at k = 7 (1-D, TX = 32): over the A100's 164 KB
# (tests/test_triton_compile.py). Wider unions loop over chunks.
_TILE_BYTES = 16384
_MAX_CHUNK = 64


def _chunk(TX: int, kw: int, width: int, elem: int) -> int:
    return min(_pow2(TX + kw - 1), max(16, min(_MAX_CHUNK, _TILE_BYTES // (width * elem))))


def _launch_args(q: Tensor, v: Tensor, kernel: List[int], dilation: List[int]):
    B, H, W, heads, d = q.shape
    TY, TX = _config(H, W, kernel, dilation)
    chunk = _chunk(TX, kernel[1], _pow2(max(d, v.shape[-1])), q.element_size())
    n_ty = triton.cdiv(triton.cdiv(H, dilation[0]), TY)
    n_tx = triton.cdiv(triton.cdiv(W, dilation[1]), TX)
    grid = (dilation[0] * dilation[1] * n_ty * n_tx, B * heads)
    shape = (H, W, heads, dilation[0], dilation[1], n_ty, n_tx)
    strides = (q.stride(0), q.stride(1), q.stride(2), v.stride(0), v.stride(1), v.stride(2))
    f32, prec = triton_precision(q.dtype)
    meta = dict(KH=kernel[0], KW=kernel[1], D=d, DV=v.shape[-1], BD=_pow2(d), BDV=_pow2(v.shape[-1]), TY=TY, TX=TX,
                F32_DOT=f32, PREC=prec,
                num_warps=4 if max(d, v.shape[-1]) <= 64 else 8)
    return grid, shape, strides, meta, chunk


def forward(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], kernel: List[int], dilation: List[int],
            scale: float) -> Tuple[Tensor, Tensor]:
    """Output (shape of v) and fp32 log-sum-exp `[B, *spatial, heads]`."""
    out_shape, lse_shape = v.shape, q.shape[:-1]
    q, k, v, rpb, kernel, dilation = _as_2d(q, k, v, rpb, kernel, dilation)
    grid, shape, strides, meta, chunk = _launch_args(q, v, kernel, dilation)
    out = torch.empty_like(v)
    lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    bias = rpb.to(torch.float32) if rpb is not None else lse  # unused pointer when HAS_RPB is False
    _fwd_kernel[grid](q, k, v, bias, out, lse, *shape, scale, *strides,
                      BN=chunk, HAS_RPB=rpb is not None, **meta)
    return out.reshape(out_shape), lse.reshape(lse_shape)


def backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], out: Tensor, lse: Tensor,
             kernel: List[int], dilation: List[int], scale: float) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients of q, k, v and rpb (None without rpb)."""
    shapes = (q.shape, k.shape, v.shape)
    rpb_in = rpb
    delta = (dout.float() * out.float()).sum(-1).contiguous()  # [B, *spatial, heads]
    q, k, v, rpb, kernel, dilation = _as_2d(q, k, v, rpb, kernel, dilation)
    dout = dout.reshape(v.shape).contiguous()
    lse = lse.reshape(q.shape[:-1]).contiguous()
    delta = delta.reshape(q.shape[:-1])
    grid, shape, strides, meta, chunk = _launch_args(q, v, kernel, dilation)
    B, H, W, heads, _ = q.shape
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    ds = (torch.zeros(B, heads, H, W, kernel[0] * kernel[1], dtype=torch.float32, device=q.device)
          if rpb is not None else lse)
    bias = rpb.to(torch.float32) if rpb is not None else lse
    _bwd_dq_kernel[grid](q, k, v, bias, dout, lse, delta, dq, ds, *shape, scale, *strides,
                         BN=chunk, HAS_RPB=rpb is not None, **meta)
    _bwd_dkdv_kernel[grid](q, k, v, bias, dout, lse, delta, dk, dv, *shape, scale, *strides,
                           BQ=chunk, HAS_RPB=rpb is not None, **meta)
    drpb = None
    if rpb is not None:
        _, rel = neighbor_index((H, W), kernel, dilation, q.device)  # [N, kh * kw], window order as in DS
        table = rpb[0].numel()
        drpb = torch.zeros(heads, table, dtype=torch.float32, device=q.device)
        drpb.index_add_(1, rel.reshape(-1), ds.sum(0).reshape(heads, -1))
        drpb = drpb.reshape(rpb_in.shape).to(rpb_in.dtype)
    return dq.reshape(shapes[0]), dk.reshape(shapes[1]), dv.reshape(shapes[2]), drpb
