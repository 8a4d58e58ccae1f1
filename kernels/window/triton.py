"""Triton window attention, forward and backward, with partition, cyclic shift, padding and bias fused in the kernels.

A program owns one block of BM query slots of one window of one (batch, head). Window slot n of window w maps to the
rolled, padded map at (wy * wh + n // ww, wx * ww + n % ww), which holds padded coordinate (r + shift) % Hp, i.e. the
original token (that - pad_before); q, k, v are read from their heads-last tensors at that token (any strides along
B, H, W, heads; unit stride along the head dim) and the output is written back there, so nothing is partitioned,
rolled or padded in memory. Padding slots load zeros: in `zeros` mode they take part as zero tokens, in `mask` mode
their keys are masked for real queries. Swin's shift regions and the relative position bias (Swin's `[T, heads]`
table, gathered in-kernel) are computed from the slot coordinates.

* Forward: keys of the window in blocks of BN with an online softmax; saves the fp32 log-sum-exp.
* Backward: `delta = rowsum(dO o O)` in torch, then a dQ kernel per query block and a dK/dV kernel per key block
  (the mirror image: it loops over the window's query blocks), both recomputing P from the LSE; no atomics. With a
  bias the dQ kernel also writes dS per (window, query, key) into a `[B, heads, windows, N, N]` fp32 buffer (the size
  of the attention map) that torch reduces into d_rpb (deterministic).
* Context mode (`context_forward` / `context_backward`): query slot n of window w is token
  (wy * wh + n // ww, wx * ww + n % ww) of the query map, context slot m is key-map token
  (wy * sy + oy + (m // kw) * dy, wx * sx + ox + (m % kw) * dx), moved by the context extent with the 'shift' border;
  keys outside the map load zeros ('zeros') or are masked ('mask'). Forward and dQ as above. A key token lies in the
  contexts of several windows, so the dK/dV kernel (one program per window and key block, looping over the window's
  query blocks) writes per-slot gradients into a `[B, heads, windows, kh * kw, d]` fp32 buffer (the size of the
  gathered context) that torch sums onto the key map with `index_add_` (deterministic, no atomics).
* Dots take fp16/bf16 operands with fp32 accumulation on a GPU, fp32 operands for fp32 inputs and under
  `TRITON_INTERPRET=1`. Launch configurations are fixed (no autotuning), so the kernels also run in the interpreter.
"""
import os
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .reference import context_slots, relative_position_index

__all__ = ['forward', 'backward', 'context_forward', 'context_backward']


@triton.jit
def _slots(w, n, NWX, H, W, HP, WP, PT, PL, SY, SX, N, WH: tl.constexpr, WW: tl.constexpr):
    """Coordinates of window slots n of window w: in-window (iy, ix), original token (y, x), whether it is a real
    token, and its shift region (Swin's three slices per axis of the rolled map)."""
    iy = n // WW
    ix = n % WW
    r = (w // NWX) * WH + iy
    c = (w % NWX) * WW + ix
    y = (r + SY) % HP - PT
    x = (c + SX) % WP - PL
    real = (n < N) & (y >= 0) & (y < H) & (x >= 0) & (x < W)
    reg_y = tl.where(SY > 0, (r >= HP - WH).to(tl.int32) + (r >= HP - SY).to(tl.int32), 0)
    reg_x = tl.where(SX > 0, (c >= WP - WW).to(tl.int32) + (c >= WP - SX).to(tl.int32), 0)
    return iy, ix, y, x, real, reg_y * 3 + reg_x


@triton.jit
def _program(N, HEADS, BLOCK: tl.constexpr):
    """This program's batch, head, (batch, head) index, window and block of BLOCK slots of that window: grid axis 0
    enumerates (window, slot block), axis 1 (batch, head). The batch index is 64-bit, so every base offset is."""
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    n_blocks = tl.cdiv(N, BLOCK)
    return bh // HEADS, bh % HEADS, bh, pid // n_blocks, (pid % n_blocks) * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _load(P, b, y, x, h, ok, sb, sy, sx, sh, offs, DIM):
    ptr = P + b * sb + y * sy + x * sx + h * sh
    return tl.load(ptr[:, None] + offs[None, :], mask=ok[:, None] & (offs[None, :] < DIM), other=0.0)


@triton.jit
def _load_kv(K, V, b, y, x, h, ok, sk_b, sk_y, sk_x, sk_h, sv_b, sv_y, sv_x, sv_h, offs_d, offs_dv, D, DV,
             F32_DOT: tl.constexpr):
    """Key and value rows of the slots at (y, x) (zeros where not `ok`), fp32 if F32_DOT."""
    k = _load(K, b, y, x, h, ok, sk_b, sk_y, sk_x, sk_h, offs_d, D)
    v = _load(V, b, y, x, h, ok, sv_b, sv_y, sv_x, sv_h, offs_dv, DV)
    if F32_DOT:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    return k, v


@triton.jit
def _load_q_grad(Q, DO, LSE, DELTA, b, y, x, h, ok, sq_b, sq_y, sq_x, sq_h, H, W, HEADS, offs_d, offs_dv, D, DV,
                 F32_DOT: tl.constexpr):
    """What the backward needs of the query slots at (y, x): q, dO, LSE, delta and the heads-last row index of the
    contiguous `[B, H, W, heads, ...]` outputs."""
    q = _load(Q, b, y, x, h, ok, sq_b, sq_y, sq_x, sq_h, offs_d, D)
    tok = ((b * H + y) * W + x) * HEADS + h
    do = tl.load(DO + tok[:, None] * DV + offs_dv[None, :], mask=ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
    if F32_DOT:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + tok, mask=ok, other=0.0)
    delta = tl.load(DELTA + tok, mask=ok, other=0.0)
    return q, do, lse, delta, tok


@triton.jit
def _scores(q, k, iq_y, iq_x, ik_y, ik_x, reg_q, reg_k, real_q, real_k, nk_ok, RPB, h, HEADS, scale,
            WH: tl.constexpr, WW: tl.constexpr, HAS_RPB: tl.constexpr, MASK_PAD: tl.constexpr, PREC: tl.constexpr):
    """Logits [BM, BN] (-inf where masked) and the boolean of the unmasked pairs."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
    ok = nk_ok[None, :] & (reg_q[:, None] == reg_k[None, :])
    if MASK_PAD:
        ok = ok & (real_k[None, :] | ~real_q[:, None])
    if HAS_RPB:
        rel = (iq_y[:, None] - ik_y[None, :] + WH - 1) * (2 * WW - 1) + (iq_x[:, None] - ik_x[None, :] + WW - 1)
        s += tl.load(RPB + h + rel * HEADS, mask=ok, other=0.0)  # the 64-bit head offset first
    return tl.where(ok, s, float('-inf')), ok


@triton.jit
def _fwd_kernel(
        Q, K, V, RPB, O, LSE, H, W, HP, WP, PT, PL, SY, SX, NWX, NW, N, HEADS, scale,
        sq_b, sq_y, sq_x, sq_h, sk_b, sk_y, sk_x, sk_h, sv_b, sv_y, sv_x, sv_h,
        WH: tl.constexpr, WW: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr,
        BDV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, HAS_RPB: tl.constexpr, MASK_PAD: tl.constexpr,
        F32_DOT: tl.constexpr, PREC: tl.constexpr,
):
    b, h, bh, w, nq = _program(N, HEADS, BM)
    iq_y, iq_x, yq, xq, real_q, reg_q = _slots(w, nq, NWX, H, W, HP, WP, PT, PL, SY, SX, N, WH, WW)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    q = _load(Q, b, yq, xq, h, real_q, sq_b, sq_y, sq_x, sq_h, offs_d, D)
    if F32_DOT:
        q = q.to(tl.float32)
    m_i = tl.full([BM], float('-inf'), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BDV], tl.float32)
    for kb in range(0, N, BN):
        nk = kb + tl.arange(0, BN)
        ik_y, ik_x, yk, xk, real_k, reg_k = _slots(w, nk, NWX, H, W, HP, WP, PT, PL, SY, SX, N, WH, WW)
        k, v = _load_kv(K, V, b, yk, xk, h, real_k, sk_b, sk_y, sk_x, sk_h, sv_b, sv_y, sv_x, sv_h, offs_d, offs_dv,
                        D, DV, F32_DOT)
        s, _ = _scores(q, k, iq_y, iq_x, ik_y, ik_x, reg_q, reg_k, real_q, real_k, nk < N, RPB, h, HEADS, scale,
                       WH, WW, HAS_RPB, MASK_PAD, PREC)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float('-inf'), 0.0, m_new)  # rows with no unmasked key so far
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    o_ptr = O + (((b * H + yq) * W + xq) * HEADS + h) * DV
    tl.store(o_ptr[:, None] + offs_dv[None, :], out.to(O.dtype.element_ty),
             mask=real_q[:, None] & (offs_dv[None, :] < DV))
    tl.store(LSE + ((b * H + yq) * W + xq) * HEADS + h, m_i + tl.log(l_safe), mask=real_q)


@triton.jit
def _bwd_dq_kernel(
        Q, K, V, RPB, DO, LSE, DELTA, DQ, DS, H, W, HP, WP, PT, PL, SY, SX, NWX, NW, N, HEADS, scale,
        sq_b, sq_y, sq_x, sq_h, sk_b, sk_y, sk_x, sk_h, sv_b, sv_y, sv_x, sv_h,
        WH: tl.constexpr, WW: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr,
        BDV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, HAS_RPB: tl.constexpr, MASK_PAD: tl.constexpr,
        F32_DOT: tl.constexpr, PREC: tl.constexpr,
):
    b, h, bh, w, nq = _program(N, HEADS, BM)
    iq_y, iq_x, yq, xq, real_q, reg_q = _slots(w, nq, NWX, H, W, HP, WP, PT, PL, SY, SX, N, WH, WW)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    q, do, lse, delta, tok = _load_q_grad(Q, DO, LSE, DELTA, b, yq, xq, h, real_q, sq_b, sq_y, sq_x, sq_h, H, W,
                                          HEADS, offs_d, offs_dv, D, DV, F32_DOT)
    dq = tl.zeros([BM, BD], tl.float32)
    for kb in range(0, N, BN):
        nk = kb + tl.arange(0, BN)
        ik_y, ik_x, yk, xk, real_k, reg_k = _slots(w, nk, NWX, H, W, HP, WP, PT, PL, SY, SX, N, WH, WW)
        k, v = _load_kv(K, V, b, yk, xk, h, real_k, sk_b, sk_y, sk_x, sk_h, sv_b, sv_y, sv_x, sv_h, offs_d, offs_dv,
                        D, DV, F32_DOT)
        s, ok = _scores(q, k, iq_y, iq_x, ik_y, ik_x, reg_q, reg_k, real_q, real_k, nk < N, RPB, h, HEADS, scale,
                        WH, WW, HAS_RPB, MASK_PAD, PREC)
        # Only real queries carry an output gradient (padding and out-of-window slots get P = 0, hence dS = 0).
        p = tl.exp(tl.where(ok & real_q[:, None], s - lse[:, None], float('-inf')))
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
        if HAS_RPB:
            ds_ptr = DS + ((bh * NW + w) * N + nq[:, None]) * N + nk[None, :]
            tl.store(ds_ptr, ds, mask=(nq < N)[:, None] & (nk < N)[None, :])
    tl.store(DQ + tok[:, None] * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=real_q[:, None] & (offs_d[None, :] < D))


@triton.jit
def _bwd_dkdv_kernel(
        Q, K, V, RPB, DO, LSE, DELTA, DK, DV_, H, W, HP, WP, PT, PL, SY, SX, NWX, NW, N, HEADS, scale,
        sq_b, sq_y, sq_x, sq_h, sk_b, sk_y, sk_x, sk_h, sv_b, sv_y, sv_x, sv_h,
        WH: tl.constexpr, WW: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr,
        BDV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, HAS_RPB: tl.constexpr, MASK_PAD: tl.constexpr,
        F32_DOT: tl.constexpr, PREC: tl.constexpr,
):
    b, h, bh, w, nk = _program(N, HEADS, BN)
    ik_y, ik_x, yk, xk, real_k, reg_k = _slots(w, nk, NWX, H, W, HP, WP, PT, PL, SY, SX, N, WH, WW)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    k, v = _load_kv(K, V, b, yk, xk, h, real_k, sk_b, sk_y, sk_x, sk_h, sv_b, sv_y, sv_x, sv_h, offs_d, offs_dv, D,
                    DV, F32_DOT)
    dk = tl.zeros([BN, BD], tl.float32)
    dv = tl.zeros([BN, BDV], tl.float32)
    for qb in range(0, N, BM):
        nq = qb + tl.arange(0, BM)
        iq_y, iq_x, yq, xq, real_q, reg_q = _slots(w, nq, NWX, H, W, HP, WP, PT, PL, SY, SX, N, WH, WW)
        q, do, lse, delta, _ = _load_q_grad(Q, DO, LSE, DELTA, b, yq, xq, h, real_q, sq_b, sq_y, sq_x, sq_h, H, W,
                                            HEADS, offs_d, offs_dv, D, DV, F32_DOT)
        s, ok = _scores(q, k, iq_y, iq_x, ik_y, ik_x, reg_q, reg_k, real_q, real_k, nk < N, RPB, h, HEADS, scale,
                        WH, WW, HAS_RPB, MASK_PAD, PREC)  # [BM queries, BN keys]
        p = tl.exp(tl.where(ok & real_q[:, None], s - lse[:, None], float('-inf')))
        dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PREC)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PREC)
    tok_k = ((b * H + yk) * W + xk) * HEADS + h
    tl.store(DK + tok_k[:, None] * D + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=real_k[:, None] & (offs_d[None, :] < D))
    tl.store(DV_ + tok_k[:, None] * DV + offs_dv[None, :], dv.to(DV_.dtype.element_ty),
             mask=real_k[:, None] & (offs_dv[None, :] < DV))


def _pow2(x: int, least: int = 16) -> int:
    return max(least, triton.next_power_of_2(x))


def _block(n: int, d: int, dv: int, dtype: torch.dtype) -> int:
    """Slots per block: up to 64, 32 where a row of the widest head dim passes 256 bytes (fp32 beyond d = 64,
    fp16/bf16 beyond 128), 16 past 512 bytes (fp32 at d = 256): the backward's tiles then fit an A100's 164 KB of
    shared memory (fp32 at head dim 256 needed 443 KB with 64-slot blocks, 209 KB with 32)."""
    row = _pow2(max(d, dv)) * dtype.itemsize
    return min(64 if row <= 256 else 32 if row <= 512 else 16, _pow2(n))


def _unit_last(t: Tensor) -> Tensor:
    """The kernels take any strides along B, H, W, heads but need the head dim contiguous."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _launch(q: Tensor, k: Tensor, v: Tensor, window: List[int], shift: List[int], pad: List[int]):
    B, H, W, heads, d = q.shape
    wh, ww = window
    Hp, Wp = H + pad[0] + pad[1], W + pad[2] + pad[3]
    n = wh * ww
    nwx, nw = Wp // ww, (Hp // wh) * (Wp // ww)
    block = _block(n, d, v.shape[-1], q.dtype)
    shape = (H, W, Hp, Wp, pad[0], pad[2], shift[0], shift[1], nwx, nw, n, heads)
    strides = tuple(t.stride(i) for t in (q, k, v) for i in range(4))
    # fp32 operands (exact 'ieee' products, not TF32) for fp32 inputs and in the interpreter.
    f32 = os.environ.get('TRITON_INTERPRET', '0') == '1' or q.dtype == torch.float32
    meta = dict(WH=wh, WW=ww, D=d, DV=v.shape[-1], BD=_pow2(d), BDV=_pow2(v.shape[-1]), BM=block, BN=block,
                F32_DOT=f32, PREC='ieee' if f32 else 'tf32', num_warps=4 if max(d, v.shape[-1]) <= 64 else 8)
    grid = (nw * triton.cdiv(n, block), B * heads)
    return grid, shape, strides, meta


def forward(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], window: List[int], shift: List[int],
            pad: List[int], mask_pad: bool, scale: float) -> Tuple[Tensor, Tensor]:
    """Output `[B, H, W, heads, dv]` and fp32 log-sum-exp `[B, H, W, heads]`."""
    q, k, v = (_unit_last(t) for t in (q, k, v))
    grid, shape, strides, meta = _launch(q, k, v, window, shift, pad)
    B, H, W, heads, _ = q.shape
    out = torch.empty(B, H, W, heads, v.shape[-1], dtype=v.dtype, device=q.device)
    lse = torch.empty(B, H, W, heads, dtype=torch.float32, device=q.device)
    bias = rpb.to(torch.float32).contiguous() if rpb is not None else lse  # unused pointer without a bias
    _fwd_kernel[grid](q, k, v, bias, out, lse, *shape, scale, *strides, HAS_RPB=rpb is not None,
                      MASK_PAD=mask_pad, **meta)
    return out, lse


def backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], out: Tensor, lse: Tensor,
             window: List[int], shift: List[int], pad: List[int], mask_pad: bool,
             scale: float) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients of q, k, v and rpb (None without rpb)."""
    q, k, v = (_unit_last(t) for t in (q, k, v))
    dout = dout.contiguous()
    delta = (dout.float() * out.float()).sum(-1).contiguous()  # [B, H, W, heads]
    lse = lse.contiguous()
    grid, shape, strides, meta = _launch(q, k, v, window, shift, pad)
    B, H, W, heads, d = q.shape
    n, nw = shape[10], shape[9]
    dq = torch.empty(B, H, W, heads, d, dtype=q.dtype, device=q.device)
    dk = torch.empty(B, H, W, heads, d, dtype=k.dtype, device=q.device)
    dv = torch.empty(B, H, W, heads, v.shape[-1], dtype=v.dtype, device=q.device)
    ds = torch.zeros(B, heads, nw, n, n, dtype=torch.float32, device=q.device) if rpb is not None else lse
    bias = rpb.to(torch.float32).contiguous() if rpb is not None else lse
    flags = dict(HAS_RPB=rpb is not None, MASK_PAD=mask_pad, **meta)
    _bwd_dq_kernel[grid](q, k, v, bias, dout, lse, delta, dq, ds, *shape, scale, *strides, **flags)
    _bwd_dkdv_kernel[grid](q, k, v, bias, dout, lse, delta, dk, dv, *shape, scale, *strides, **flags)
    drpb = None
    if rpb is not None:
        per_head = ds.sum((0, 2)).permute(1, 2, 0).reshape(n * n, heads)  # [heads, N, N] -> [N * N, heads]
        rel = relative_position_index(*window, device=q.device).view(-1)
        drpb = torch.zeros(rpb.shape, dtype=torch.float32, device=q.device).index_add_(0, rel, per_head)
        drpb = drpb.to(rpb.dtype)
    return dq, dk, dv, drpb


# --- context mode --------------------------------------------------------------------------------------------------

_BORDER = {'zeros': 0, 'mask': 1, 'shift': 2}


@triton.jit
def _query_slots(w, n, NWX, N, WH: tl.constexpr, WW: tl.constexpr):
    """Query-map token (y, x) of query slots n of window w, and whether the slot exists."""
    return (w // NWX) * WH + n // WW, (w % NWX) * WW + n % WW, n < N


@triton.jit
def _context_slots(w, m, NWX, HK, WK, SY, SX, OY, OX, DY, DX, EY, EX, NK, KW: tl.constexpr,
                   BORDER: tl.constexpr):
    """Key-map token (y, x) of context slots m of window w; whether the slot exists and whether it lies in the map
    (after the copy-shift move by the context extent (EY, EX) when BORDER == 2)."""
    y = (w // NWX) * SY + OY + (m // KW) * DY
    x = (w % NWX) * SX + OX + (m % KW) * DX
    if BORDER == 2:
        y = tl.where(y < 0, y + EY, tl.where(y >= HK, y - EY, y))
        x = tl.where(x < 0, x + EX, tl.where(x >= WK, x - EX, x))
    slot = m < NK
    return y, x, slot, slot & (y >= 0) & (y < HK) & (x >= 0) & (x < WK)


@triton.jit
def _context_scores(q, k, slot_ok, inside, scale, BORDER: tl.constexpr, PREC: tl.constexpr):
    """Logits [BM, BN] (-inf for missing slots, and outside the map with the 'mask' border) and the kept keys."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
    ok = inside if BORDER == 1 else slot_ok
    return tl.where(ok[None, :], s, float('-inf')), ok


@triton.jit
def _ctx_fwd_kernel(
        Q, K, V, O, LSE, H, W, HK, WK, NWX, NQ, NK, SY, SX, OY, OX, DY, DX, EY, EX, HEADS, scale,
        sq_b, sq_y, sq_x, sq_h, sk_b, sk_y, sk_x, sk_h, sv_b, sv_y, sv_x, sv_h,
        WH: tl.constexpr, WW: tl.constexpr, KW: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
        BD: tl.constexpr, BDV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BORDER: tl.constexpr,
        F32_DOT: tl.constexpr, PREC: tl.constexpr,
):
    b, h, bh, w, nq = _program(NQ, HEADS, BM)
    yq, xq, q_ok = _query_slots(w, nq, NWX, NQ, WH, WW)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    q = _load(Q, b, yq, xq, h, q_ok, sq_b, sq_y, sq_x, sq_h, offs_d, D)
    if F32_DOT:
        q = q.to(tl.float32)
    m_i = tl.full([BM], float('-inf'), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BDV], tl.float32)
    for kb in range(0, NK, BN):
        m = kb + tl.arange(0, BN)
        yk, xk, slot_ok, inside = _context_slots(w, m, NWX, HK, WK, SY, SX, OY, OX, DY, DX, EY, EX, NK, KW, BORDER)
        k, v = _load_kv(K, V, b, yk, xk, h, inside, sk_b, sk_y, sk_x, sk_h, sv_b, sv_y, sv_x, sv_h, offs_d, offs_dv,
                        D, DV, F32_DOT)
        s, _ = _context_scores(q, k, slot_ok, inside, scale, BORDER, PREC)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float('-inf'), 0.0, m_new)  # rows with no kept key so far
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    tok = ((b * H + yq) * W + xq) * HEADS + h
    tl.store(O + tok[:, None] * DV + offs_dv[None, :], (acc / l_safe[:, None]).to(O.dtype.element_ty),
             mask=q_ok[:, None] & (offs_dv[None, :] < DV))
    tl.store(LSE + tok, m_i + tl.log(l_safe), mask=q_ok)


@triton.jit
def _ctx_bwd_dq_kernel(
        Q, K, V, DO, LSE, DELTA, DQ, H, W, HK, WK, NWX, NQ, NK, SY, SX, OY, OX, DY, DX, EY, EX, HEADS, scale,
        sq_b, sq_y, sq_x, sq_h, sk_b, sk_y, sk_x, sk_h, sv_b, sv_y, sv_x, sv_h,
        WH: tl.constexpr, WW: tl.constexpr, KW: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
        BD: tl.constexpr, BDV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BORDER: tl.constexpr,
        F32_DOT: tl.constexpr, PREC: tl.constexpr,
):
    b, h, bh, w, nq = _program(NQ, HEADS, BM)
    yq, xq, q_ok = _query_slots(w, nq, NWX, NQ, WH, WW)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    q, do, lse, delta, tok = _load_q_grad(Q, DO, LSE, DELTA, b, yq, xq, h, q_ok, sq_b, sq_y, sq_x, sq_h, H, W,
                                          HEADS, offs_d, offs_dv, D, DV, F32_DOT)
    dq = tl.zeros([BM, BD], tl.float32)
    for kb in range(0, NK, BN):
        m = kb + tl.arange(0, BN)
        yk, xk, slot_ok, inside = _context_slots(w, m, NWX, HK, WK, SY, SX, OY, OX, DY, DX, EY, EX, NK, KW, BORDER)
        k, v = _load_kv(K, V, b, yk, xk, h, inside, sk_b, sk_y, sk_x, sk_h, sv_b, sv_y, sv_x, sv_h, offs_d, offs_dv,
                        D, DV, F32_DOT)
        s, ok = _context_scores(q, k, slot_ok, inside, scale, BORDER, PREC)
        p = tl.exp(tl.where(ok[None, :] & q_ok[:, None], s - lse[:, None], float('-inf')))
        ds = p * (tl.dot(do, tl.trans(v), input_precision=PREC) - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    tl.store(DQ + tok[:, None] * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=q_ok[:, None] & (offs_d[None, :] < D))


@triton.jit
def _ctx_bwd_dkdv_kernel(
        Q, K, V, DO, LSE, DELTA, DKB, DVB, H, W, HK, WK, NWX, NW, NQ, NK, SY, SX, OY, OX, DY, DX, EY, EX, HEADS,
        scale, sq_b, sq_y, sq_x, sq_h, sk_b, sk_y, sk_x, sk_h, sv_b, sv_y, sv_x, sv_h,
        WH: tl.constexpr, WW: tl.constexpr, KW: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
        BD: tl.constexpr, BDV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BORDER: tl.constexpr,
        F32_DOT: tl.constexpr, PREC: tl.constexpr,
):
    b, h, bh, w, m = _program(NK, HEADS, BN)
    yk, xk, slot_ok, inside = _context_slots(w, m, NWX, HK, WK, SY, SX, OY, OX, DY, DX, EY, EX, NK, KW, BORDER)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    k, v = _load_kv(K, V, b, yk, xk, h, inside, sk_b, sk_y, sk_x, sk_h, sv_b, sv_y, sv_x, sv_h, offs_d, offs_dv, D,
                    DV, F32_DOT)
    dk = tl.zeros([BN, BD], tl.float32)
    dv = tl.zeros([BN, BDV], tl.float32)
    for qb in range(0, NQ, BM):
        nq = qb + tl.arange(0, BM)
        yq, xq, q_ok = _query_slots(w, nq, NWX, NQ, WH, WW)
        q, do, lse, delta, _ = _load_q_grad(Q, DO, LSE, DELTA, b, yq, xq, h, q_ok, sq_b, sq_y, sq_x, sq_h, H, W,
                                            HEADS, offs_d, offs_dv, D, DV, F32_DOT)
        s, ok = _context_scores(q, k, slot_ok, inside, scale, BORDER, PREC)  # [BM queries, BN context slots]
        p = tl.exp(tl.where(ok[None, :] & q_ok[:, None], s - lse[:, None], float('-inf')))
        dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PREC)
        ds = p * (tl.dot(do, tl.trans(v), input_precision=PREC) - delta[:, None])
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PREC)
    # per-slot gradients (a 'zeros' slot outside the map gets one too; the host drops it)
    row = (bh * NW + w) * NK + m
    tl.store(DKB + row[:, None] * D + offs_d[None, :], dk * scale, mask=slot_ok[:, None] & (offs_d[None, :] < D))
    tl.store(DVB + row[:, None] * DV + offs_dv[None, :], dv, mask=slot_ok[:, None] & (offs_dv[None, :] < DV))


def _context_launch(q: Tensor, k: Tensor, v: Tensor, window: List[int], context: List[int], stride: List[int],
                    offset: List[int], dilation: List[int], border: str):
    B, H, W, heads, d = q.shape
    wh, ww = window
    nq, nk = wh * ww, context[0] * context[1]
    nwx, nw = W // ww, (H // wh) * (W // ww)
    bm, bn = _block(nq, d, v.shape[-1], q.dtype), _block(nk, d, v.shape[-1], q.dtype)
    shape = (H, W, k.shape[1], k.shape[2], nwx, nq, nk, stride[0], stride[1], offset[0], offset[1], dilation[0],
             dilation[1], context[0] * dilation[0], context[1] * dilation[1], heads)
    strides = tuple(t.stride(i) for t in (q, k, v) for i in range(4))
    f32 = os.environ.get('TRITON_INTERPRET', '0') == '1' or q.dtype == torch.float32
    meta = dict(WH=wh, WW=ww, KW=context[1], D=d, DV=v.shape[-1], BD=_pow2(d), BDV=_pow2(v.shape[-1]), BM=bm, BN=bn,
                BORDER=_BORDER[border], F32_DOT=f32, PREC='ieee' if f32 else 'tf32',
                num_warps=4 if max(d, v.shape[-1]) <= 64 else 8)
    return nw, shape, strides, meta


def context_forward(q: Tensor, k: Tensor, v: Tensor, window: List[int], context: List[int], stride: List[int],
                    offset: List[int], dilation: List[int], border: str, scale: float) -> Tuple[Tensor, Tensor]:
    """Output `[B, H, W, heads, dv]` and fp32 log-sum-exp `[B, H, W, heads]`."""
    q, k, v = (_unit_last(t) for t in (q, k, v))
    nw, shape, strides, meta = _context_launch(q, k, v, window, context, stride, offset, dilation, border)
    B, H, W, heads, _ = q.shape
    out = torch.empty(B, H, W, heads, v.shape[-1], dtype=v.dtype, device=q.device)
    lse = torch.empty(B, H, W, heads, dtype=torch.float32, device=q.device)
    grid = (nw * triton.cdiv(shape[5], meta['BM']), B * heads)
    _ctx_fwd_kernel[grid](q, k, v, out, lse, *shape, scale, *strides, **meta)
    return out, lse


def _to_map(buf: Tensor, tok: Tensor, like: Tensor) -> Tensor:
    """Per-slot gradients `[B, heads, windows, Nk, c]` summed onto the key map `[B, Hk, Wk, heads, c]`."""
    B, Hk, Wk, heads, c = like.shape
    idx = torch.where(tok < 0, torch.full_like(tok, Hk * Wk), tok).reshape(-1)
    rows = torch.zeros(B, Hk * Wk + 1, heads, c, dtype=torch.float32, device=like.device)
    rows.index_add_(1, idx, buf.permute(0, 2, 3, 1, 4).reshape(B, -1, heads, c))
    return rows[:, :-1].to(like.dtype).view(like.shape)


def context_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, window: List[int],
                     context: List[int], stride: List[int], offset: List[int], dilation: List[int], border: str,
                     scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of q, k, v."""
    q, k, v = (_unit_last(t) for t in (q, k, v))
    dout = dout.contiguous()
    delta = (dout.float() * out.float()).sum(-1).contiguous()  # [B, H, W, heads]
    lse = lse.contiguous()
    nw, shape, strides, meta = _context_launch(q, k, v, window, context, stride, offset, dilation, border)
    B, H, W, heads, d = q.shape
    nq, nk = shape[5], shape[6]
    dq = torch.empty(B, H, W, heads, d, dtype=q.dtype, device=q.device)
    dkb = torch.zeros(B, heads, nw, nk, d, dtype=torch.float32, device=q.device)
    dvb = torch.zeros(B, heads, nw, nk, v.shape[-1], dtype=torch.float32, device=q.device)
    _ctx_bwd_dq_kernel[(nw * triton.cdiv(nq, meta['BM']), B * heads)](
        q, k, v, dout, lse, delta, dq, *shape, scale, *strides, **meta)
    _ctx_bwd_dkdv_kernel[(nw * triton.cdiv(nk, meta['BN']), B * heads)](
        q, k, v, dout, lse, delta, dkb, dvb, *shape[:5], nw, *shape[5:], scale, *strides, **meta)
    tok, _ = context_slots(H, W, k.shape[1], k.shape[2], window, context, stride, offset, dilation, border, q.device)
    return dq, _to_map(dkb, tok, k), _to_map(dvb, tok, v)
