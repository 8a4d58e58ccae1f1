"""Triton sampled-window attention (VSA), forward and backward, with the bilinear sampling fused into the kernels.

A program owns one (window, batch, head): all wh * ww queries of the default window in one block of BM rows and the
window's wh * ww samples in one block of BN rows. Sample m of window (I, J) sits at pixel
`x = J ww + i + (i - (ww - 1) / 2) scale_x + offset_x (W - 1) / (2 (W / ww))` (y likewise, package docstring); its key
and value rows are the bilinear blend of the four tap rows read straight from the heads-last maps (any strides along
B, H, W, heads; unit stride along the head dim), taps outside the map read as zero. Nothing sampled is written to
memory.

* Forward: scores `q ks^T * scale + rpb`, exact softmax over the window (one block), `P vs`; saves the fp32 LSE.
* Backward: recomputes the samples and P from the LSE, then dS = P (dP - rowsum(dP o P)), dQ = dS ks, and the sampled
  gradients dKs = dS^T q, dVs = P^T dO. Each sample's position gradient is the derivative of its four bilinear weights
  against <dKs, tap key> + <dVs, tap value>; one program owns its window's offsets and scales, so their gradients are
  plain stores. With a bias, dS per (window, query, sample) goes to an fp32 `[B, heads, windows, N, N]` buffer that
  torch reduces into d_rpb (a sum over batch and windows, then `index_add_` into the table).
* dK and dV are scattered through the bilinear weights with fp32 `tl.atomic_add`: the pixels a window's samples touch
  are data-dependent (learned offsets can move any window's samples anywhere on the map), so an atomic-free scatter
  would need a per-pixel inverse index of all samples (a sort per call). On a GPU the summation order of dK and dV,
  and only of them, therefore varies between runs at the level of fp32 rounding; the `cpu` backend is deterministic.
* Dots follow the one precision rule of `hiervit.kernels._op.triton_precision`. Launch configurations are fixed (no
  autotuning), so the kernels also run in the interpreter (`TRITON_INTERPRET=1`).
"""
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._op import triton_precision
from ..window.reference import relative_position_index

__all__ = ['forward', 'backward', 'MAX_BLOCK']

MAX_BLOCK = 64  # largest window (wh * ww, rounded up to a power of two) and head dim of one register tile


@triton.jit
def _positions(OFF, SC, bh, w, NWX, NWY, H, W, n, WH: tl.constexpr, WW: tl.constexpr):
    """Top-left tap (x0, y0), fractions (fx, fy) and centred base coordinates (bx, by) of samples n of window w."""
    wy = w // NWX
    wx = w % NWX
    base = (bh * NWY * NWX + w) * 2
    sx = tl.load(SC + base)
    sy = tl.load(SC + base + 1)
    ox = tl.load(OFF + base) * (W - 1) / (2 * NWX)
    oy = tl.load(OFF + base + 1) * (H - 1) / (2 * NWY)
    i = n % WW
    j = n // WW
    bx = i.to(tl.float32) - (WW - 1) / 2
    by = j.to(tl.float32) - (WH - 1) / 2
    x = (wx * WW + i).to(tl.float32) + bx * sx + ox
    y = (wy * WH + j).to(tl.float32) + by * sy + oy
    # Beyond one pixel outside the map every tap is outside: clamping keeps the integer conversion in range.
    x = tl.minimum(tl.maximum(x, -2.0), (W + 1).to(tl.float32))
    y = tl.minimum(tl.maximum(y, -2.0), (H + 1).to(tl.float32))
    xf = tl.floor(x)
    yf = tl.floor(y)
    return xf.to(tl.int32), yf.to(tl.int32), x - xf, y - yf, bx, by


@triton.jit
def _tap(P, b, h, x, y, ok_n, H, W, sb, sy, sx, sh, offs_d, D):
    """Rows [BN, BD] of map P at pixels (y, x) (zero outside the map), fp32, and their in-map mask."""
    ok = ok_n & (x >= 0) & (x < W) & (y >= 0) & (y < H)
    ptr = P + b * sb + y.to(tl.int64) * sy + x.to(tl.int64) * sx + h * sh
    val = tl.load(ptr[:, None] + offs_d[None, :], mask=ok[:, None] & (offs_d[None, :] < D), other=0.0)
    return val.to(tl.float32), ok


@triton.jit
def _sample(P, b, h, x0, y0, fx, fy, ok_n, H, W, sb, sy, sx, sh, offs_d, D):
    """Bilinear samples [BN, BD] of map P (grid_sample's zero padding)."""
    t00, _ = _tap(P, b, h, x0, y0, ok_n, H, W, sb, sy, sx, sh, offs_d, D)
    t01, _ = _tap(P, b, h, x0 + 1, y0, ok_n, H, W, sb, sy, sx, sh, offs_d, D)
    t10, _ = _tap(P, b, h, x0, y0 + 1, ok_n, H, W, sb, sy, sx, sh, offs_d, D)
    t11, _ = _tap(P, b, h, x0 + 1, y0 + 1, ok_n, H, W, sb, sy, sx, sh, offs_d, D)
    gx = 1.0 - fx
    gy = 1.0 - fy
    return ((gy * gx)[:, None] * t00 + (gy * fx)[:, None] * t01 + (fy * gx)[:, None] * t10
            + (fy * fx)[:, None] * t11)


@triton.jit
def _window_scores(Q, K, V, OFF, SC, RPB, bh, w, H, W, NWX, NWY, HEADS, scale, sq_b, sq_y, sq_x, sq_h, sk_b, sk_y,
                   sk_x, sk_h, sv_b, sv_y, sv_x, sv_h, WH: tl.constexpr, WW: tl.constexpr, D: tl.constexpr,
                   BD: tl.constexpr, BM: tl.constexpr, HAS_RPB: tl.constexpr, F32_DOT: tl.constexpr,
                   PREC: tl.constexpr):
    """Queries, samples and masked logits of one window: q [BM, BD], ks, vs [BM, BD], s [BM, BM] and coordinates."""
    N: tl.constexpr = WH * WW
    b = bh // HEADS
    h = bh % HEADS
    n = tl.arange(0, BM)
    ok_n = n < N
    offs_d = tl.arange(0, BD)
    x0, y0, fx, fy, bx, by = _positions(OFF, SC, bh, w, NWX, NWY, H, W, n, WH, WW)
    ks = _sample(K, b, h, x0, y0, fx, fy, ok_n, H, W, sk_b, sk_y, sk_x, sk_h, offs_d, D)
    vs = _sample(V, b, h, x0, y0, fx, fy, ok_n, H, W, sv_b, sv_y, sv_x, sv_h, offs_d, D)
    yq = (w // NWX) * WH + n // WW
    xq = (w % NWX) * WW + n % WW
    q_ptr = Q + b * sq_b + yq.to(tl.int64) * sq_y + xq.to(tl.int64) * sq_x + h * sq_h
    q = tl.load(q_ptr[:, None] + offs_d[None, :], mask=ok_n[:, None] & (offs_d[None, :] < D), other=0.0)
    q = q.to(tl.float32)
    if F32_DOT:
        s = tl.dot(q, tl.trans(ks), input_precision=PREC) * scale
    else:
        s = tl.dot(q.to(Q.dtype.element_ty), tl.trans(ks.to(Q.dtype.element_ty))) * scale
    if HAS_RPB:
        iy = n // WW
        ix = n % WW
        rel = (iy[:, None] - iy[None, :] + WH - 1) * (2 * WW - 1) + (ix[:, None] - ix[None, :] + WW - 1)
        s += tl.load(RPB + (h + rel * HEADS), mask=ok_n[:, None] & ok_n[None, :], other=0.0)  # 64-bit: h first
    s = tl.where(ok_n[None, :], s, float('-inf'))
    return q, ks, vs, s, n, ok_n, offs_d, x0, y0, fx, fy, bx, by, yq, xq


@triton.jit
def _dot(a, b, F32_DOT: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr):
    if F32_DOT:
        return tl.dot(a, b, input_precision=PREC)
    return tl.dot(a.to(DT), b.to(DT))


@triton.jit
def _fwd_kernel(
        Q, K, V, OFF, SC, RPB, O, LSE, H, W, NWX, NWY, HEADS, scale,
        sq_b, sq_y, sq_x, sq_h, sk_b, sk_y, sk_x, sk_h, sv_b, sv_y, sv_x, sv_h,
        WH: tl.constexpr, WW: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr,
        HAS_RPB: tl.constexpr, F32_DOT: tl.constexpr, PREC: tl.constexpr,
):
    w = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # 64-bit: every offset below is derived from b or h
    q, ks, vs, s, n, ok_n, offs_d, _, _, _, _, _, _, yq, xq = _window_scores(
        Q, K, V, OFF, SC, RPB, bh, w, H, W, NWX, NWY, HEADS, scale, sq_b, sq_y, sq_x, sq_h, sk_b, sk_y, sk_x, sk_h,
        sv_b, sv_y, sv_x, sv_h, WH, WW, D, BD, BM, HAS_RPB, F32_DOT, PREC)
    m = tl.max(s, 1)
    p = tl.exp(s - m[:, None])
    l = tl.sum(p, 1)
    out = _dot(p, vs, F32_DOT, PREC, Q.dtype.element_ty) / l[:, None]
    b = bh // HEADS
    h = bh % HEADS
    tok = ((b * H + yq) * W + xq) * HEADS + h
    tl.store(O + tok[:, None] * D + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=ok_n[:, None] & (offs_d[None, :] < D))
    tl.store(LSE + tok, m + tl.log(l), mask=ok_n)


@triton.jit
def _scatter(DP, b, h, x, y, ok_n, wgt, dks, dvs, P_K, P_V, H, W, HEADS, sk_b, sk_y, sk_x, sk_h, sv_b, sv_y, sv_x,
             sv_h, offs_d, D: tl.constexpr):
    """Adds wgt * (dKs, dVs) into the fp32 dK/dV buffers at one tap and returns <dKs, k_tap> + <dVs, v_tap>."""
    kt, ok = _tap(P_K, b, h, x, y, ok_n, H, W, sk_b, sk_y, sk_x, sk_h, offs_d, D)
    vt, _ = _tap(P_V, b, h, x, y, ok_n, H, W, sv_b, sv_y, sv_x, sv_h, offs_d, D)
    tok = ((b * H + y.to(tl.int64)) * W + x.to(tl.int64)) * HEADS + h
    mask = ok[:, None] & (offs_d[None, :] < D)
    ptr = DP + tok[:, None] * (2 * D) + offs_d[None, :]  # dK and dV interleaved per token: [.., 2, d]
    tl.atomic_add(ptr, wgt[:, None] * dks, mask=mask)
    tl.atomic_add(ptr + D, wgt[:, None] * dvs, mask=mask)
    return tl.sum(dks * kt + dvs * vt, 1)


@triton.jit
def _bwd_kernel(
        Q, K, V, OFF, SC, RPB, DO, LSE, DQ, DKV, DOFF, DSC, DS, H, W, NWX, NWY, HEADS, scale,
        sq_b, sq_y, sq_x, sq_h, sk_b, sk_y, sk_x, sk_h, sv_b, sv_y, sv_x, sv_h,
        WH: tl.constexpr, WW: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr,
        HAS_RPB: tl.constexpr, F32_DOT: tl.constexpr, PREC: tl.constexpr,
):
    N: tl.constexpr = WH * WW
    w = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # 64-bit: every offset below is derived from b or h
    q, ks, vs, s, n, ok_n, offs_d, x0, y0, fx, fy, bx, by, yq, xq = _window_scores(
        Q, K, V, OFF, SC, RPB, bh, w, H, W, NWX, NWY, HEADS, scale, sq_b, sq_y, sq_x, sq_h, sk_b, sk_y, sk_x, sk_h,
        sv_b, sv_y, sv_x, sv_h, WH, WW, D, BD, BM, HAS_RPB, F32_DOT, PREC)
    b = bh // HEADS
    h = bh % HEADS
    tok = ((b * H + yq) * W + xq) * HEADS + h
    lse = tl.load(LSE + tok, mask=ok_n, other=0.0)
    p = tl.exp(tl.where(ok_n[:, None], s - lse[:, None], float('-inf')))  # padding query rows: P = 0
    do = tl.load(DO + tok[:, None] * D + offs_d[None, :], mask=ok_n[:, None] & (offs_d[None, :] < D),
                 other=0.0).to(tl.float32)
    DT = Q.dtype.element_ty
    dp = _dot(do, tl.trans(vs), F32_DOT, PREC, DT)
    ds = p * (dp - tl.sum(p * dp, 1)[:, None])
    dq = _dot(ds, ks, F32_DOT, PREC, DT) * scale
    tl.store(DQ + tok[:, None] * D + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=ok_n[:, None] & (offs_d[None, :] < D))
    if HAS_RPB:
        ds_ptr = DS + ((bh * NWX * NWY + w) * N + n[:, None]) * N + n[None, :]
        tl.store(ds_ptr, ds, mask=ok_n[:, None] & ok_n[None, :])
    dks = _dot(tl.trans(ds), q, F32_DOT, PREC, DT) * scale  # [samples, d]
    dvs = _dot(tl.trans(p), do, F32_DOT, PREC, DT)
    gx0 = 1.0 - fx
    gy0 = 1.0 - fy
    a00 = _scatter(DKV, b, h, x0, y0, ok_n, gy0 * gx0, dks, dvs, K, V, H, W, HEADS, sk_b, sk_y, sk_x, sk_h, sv_b,
                   sv_y, sv_x, sv_h, offs_d, D)
    a01 = _scatter(DKV, b, h, x0 + 1, y0, ok_n, gy0 * fx, dks, dvs, K, V, H, W, HEADS, sk_b, sk_y, sk_x, sk_h, sv_b,
                   sv_y, sv_x, sv_h, offs_d, D)
    a10 = _scatter(DKV, b, h, x0, y0 + 1, ok_n, fy * gx0, dks, dvs, K, V, H, W, HEADS, sk_b, sk_y, sk_x, sk_h, sv_b,
                   sv_y, sv_x, sv_h, offs_d, D)
    a11 = _scatter(DKV, b, h, x0 + 1, y0 + 1, ok_n, fy * fx, dks, dvs, K, V, H, W, HEADS, sk_b, sk_y, sk_x, sk_h,
                   sv_b, sv_y, sv_x, sv_h, offs_d, D)
    gx = gy0 * (a01 - a00) + fy * (a11 - a10)  # d <loss> / d x of each sample
    gy = gx0 * (a10 - a00) + fx * (a11 - a01)
    gx = tl.where(ok_n, gx, 0.0)
    gy = tl.where(ok_n, gy, 0.0)
    base = (bh * NWY * NWX + w) * 2
    tl.store(DSC + base, tl.sum(gx * bx, 0))
    tl.store(DSC + base + 1, tl.sum(gy * by, 0))
    tl.store(DOFF + base, tl.sum(gx, 0) * (W - 1) / (2 * NWX))
    tl.store(DOFF + base + 1, tl.sum(gy, 0) * (H - 1) / (2 * NWY))


def _block(x: int) -> int:
    return max(16, triton.next_power_of_2(x))


def _unit_last(t: Tensor) -> Tensor:
    """The kernels take any strides along B, H, W, heads but need the head dim contiguous."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _launch(q: Tensor, k: Tensor, v: Tensor, window: List[int]):
    B, H, W, heads, d = q.shape
    wh, ww = window
    nwy, nwx = H // wh, W // ww
    strides = tuple(t.stride(i) for t in (q, k, v) for i in range(4))
    f32, prec = triton_precision(q.dtype)
    meta = dict(WH=wh, WW=ww, D=d, BD=_block(d), BM=_block(wh * ww), F32_DOT=f32, PREC=prec,
                num_warps=4 if max(d, wh * ww) <= 64 else 8)
    return (nwy * nwx, B * heads), (H, W, nwx, nwy, heads), strides, meta


def _grid_params(offsets: Tensor, scales: Tensor) -> Tuple[Tensor, Tensor]:
    return offsets.float().contiguous(), scales.float().contiguous()


def forward(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, scales: Tensor, rpb: Optional[Tensor],
            window: List[int], scale: float) -> Tuple[Tensor, Tensor]:
    """Output `[B, H, W, heads, d]` and fp32 log-sum-exp `[B, H, W, heads]`."""
    q, k, v = (_unit_last(t) for t in (q, k, v))
    grid, shape, strides, meta = _launch(q, k, v, window)
    out = torch.empty(q.shape, dtype=v.dtype, device=q.device)
    lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    bias = rpb.float().contiguous() if rpb is not None else lse  # unused pointer without a bias
    _fwd_kernel[grid](q, k, v, *_grid_params(offsets, scales), bias, out, lse, *shape, scale, *strides,
                      HAS_RPB=rpb is not None, **meta)
    return out, lse


def backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, scales: Tensor, rpb: Optional[Tensor],
             out: Tensor, lse: Tensor, window: List[int], scale: float
             ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients of q, k, v, offsets, scales and rpb (None without rpb)."""
    q, k, v = (_unit_last(t) for t in (q, k, v))
    grid, shape, strides, meta = _launch(q, k, v, window)
    B, H, W, heads, d = q.shape
    n = window[0] * window[1]
    off, sc = _grid_params(offsets, scales)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dkv = torch.zeros(B, H, W, heads, 2, d, dtype=torch.float32, device=q.device)  # atomics accumulate in fp32
    doff, dsc = torch.empty_like(off), torch.empty_like(sc)
    ds = torch.empty(B, heads, grid[0], n, n, dtype=torch.float32, device=q.device) if rpb is not None else lse
    bias = rpb.float().contiguous() if rpb is not None else lse
    _bwd_kernel[grid](q, k, v, off, sc, bias, dout.contiguous(), lse.contiguous(), dq, dkv, doff, dsc, ds, *shape,
                      scale, *strides, HAS_RPB=rpb is not None, **meta)
    drpb = None
    if rpb is not None:
        per_head = ds.sum((0, 2)).permute(1, 2, 0).reshape(n * n, heads)  # [heads, N, N] -> [N * N, heads]
        rel = relative_position_index(*window, device=q.device).view(-1)
        drpb = torch.zeros(rpb.shape, dtype=torch.float32, device=q.device).index_add_(0, rel, per_head)
        drpb = drpb.to(rpb.dtype)
    dk, dv = dkv.unbind(4)
    return (dq, dk.to(k.dtype), dv.to(v.dtype), doff.to(offsets.dtype), dsc.to(scales.dtype), drpb)
