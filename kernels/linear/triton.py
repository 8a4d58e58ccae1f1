"""Triton linear attention: a split-N reduction kernel for the state and an apply kernel, forward and backward.

Forward:
  * state: one program per (batch*head, token split) accumulates `k^T v`, `sum_N(k)` and `sum_N(v)` over its tokens
    in fp32; the splits are summed with torch (deterministic, no atomics);
  * apply: one program per (batch*head, token tile) computes `q M` and `r = q . sum_N(k)` and applies the normaliser.
Backward:
  * dq: one program per (batch*head, token split) computes dq for its tiles (`P = dO M^T`, the normaliser's
    derivative through `r`) and accumulates the partial reductions `q^T (g dO)`, `q^T dr` and `sum_N(dO)`;
  * dkv: one program per (batch*head, token tile) computes `dk = v dS^T + dz`, `dv = k dS + dmean / N`.
The small `[d, dv]` algebra between the kernels (the temperature, the injective correction) runs in torch.

Inputs may have any strides (e.g. views of a fused qkv projection). Head dims are one tile each (<= 256); tokens are
tiled by 16-64. Accumulation is fp32; fp16/bf16 inputs. Under `TRITON_INTERPRET=1` (CPU tests) every dot runs in
fp32, because the interpreter's low-precision `tl.dot` is not exact.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._op import triton_precision
from .reference import resolve

__all__ = ['forward', 'backward']

_MODES = {'none': 0, 'sum': 1, 'clamp': 2, 'injective': 3}


@triton.jit
def _state_kernel(
        K, V, S, Z, VS, H, N, d, dv, TILES_PER_SPLIT, SPLITS,
        skb, skh, skn, skd, svb, svh, svn, svd,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    b, h = bh // H, bh % H
    rd, rv = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    kbase, vbase = K + b * skb + h * skh, V + b * svb + h * svh
    s = tl.zeros([BLOCK_D, BLOCK_DV], tl.float32)
    z = tl.zeros([BLOCK_D], tl.float32)
    vs = tl.zeros([BLOCK_DV], tl.float32)
    for i in range(TILES_PER_SPLIT):
        rn = (split * TILES_PER_SPLIT + i) * BLOCK_N + tl.arange(0, BLOCK_N)
        mn = rn < N
        k = tl.load(kbase + rn[:, None] * skn + rd[None, :] * skd, mask=mn[:, None] & (rd[None, :] < d), other=0.)
        v = tl.load(vbase + rn[:, None] * svn + rv[None, :] * svd, mask=mn[:, None] & (rv[None, :] < dv), other=0.)
        if DOT_F32:
            k, v = k.to(tl.float32), v.to(tl.float32)
        s += tl.dot(tl.trans(k), v, input_precision=PRECISION)
        z += tl.sum(k.to(tl.float32), 0)
        vs += tl.sum(v.to(tl.float32), 0)
    part = bh * SPLITS + split
    tl.store(S + part * BLOCK_D * BLOCK_DV + rd[:, None] * BLOCK_DV + rv[None, :], s)
    tl.store(Z + part * BLOCK_D + rd, z)
    tl.store(VS + part * BLOCK_DV + rv, vs)


@triton.jit
def _apply_kernel(
        Q, M, Z, VMEAN, OUT, R, H, N, d, dv, alpha, eps, clamp_min,
        sqb, sqh, sqn, sqd,
        MODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    b, h = bh // H, bh % H
    rd, rv = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    mn = rn < N
    q = tl.load(Q + b * sqb + h * sqh + rn[:, None] * sqn + rd[None, :] * sqd, mask=mn[:, None] & (rd[None, :] < d),
                other=0.)
    m = tl.load(M + bh * BLOCK_D * BLOCK_DV + rd[:, None] * BLOCK_DV + rv[None, :])  # fp32, zero-padded
    z = tl.load(Z + bh * BLOCK_D + rd)
    qf = q.to(tl.float32)
    # fp32 operands even for half inputs: the state sums N products and can exceed the fp16 range
    o = tl.dot(qf, m, input_precision=PRECISION)  # [BLOCK_N, BLOCK_DV]
    r = tl.sum(qf * z[None, :], 1)
    if MODE == 1:
        o = o / (alpha * r + eps)[:, None]
    elif MODE == 2:
        o = o / tl.maximum(r, clamp_min)[:, None]
    elif MODE == 3:
        o = o + tl.load(VMEAN + bh * BLOCK_DV + rv)[None, :]
    tl.store(OUT + bh * N * dv + rn[:, None] * dv + rv[None, :], o.to(OUT.dtype.element_ty),
             mask=mn[:, None] & (rv[None, :] < dv))
    tl.store(R + bh * N + rn, r, mask=mn)


@triton.jit
def _bwd_dq_kernel(
        DO, Q, M, Z, R, DQ, DM, DZ, GS, H, N, d, dv, alpha, eps, clamp_min, TILES_PER_SPLIT, SPLITS,
        sqb, sqh, sqn, sqd,
        MODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    b, h = bh // H, bh % H
    rd, rv = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    m = tl.load(M + bh * BLOCK_D * BLOCK_DV + rd[:, None] * BLOCK_DV + rv[None, :])
    z = tl.load(Z + bh * BLOCK_D + rd)
    dm = tl.zeros([BLOCK_D, BLOCK_DV], tl.float32)
    dz = tl.zeros([BLOCK_D], tl.float32)
    gs = tl.zeros([BLOCK_DV], tl.float32)
    for i in range(TILES_PER_SPLIT):
        rn = (split * TILES_PER_SPLIT + i) * BLOCK_N + tl.arange(0, BLOCK_N)
        mn = rn < N
        q = tl.load(Q + b * sqb + h * sqh + rn[:, None] * sqn + rd[None, :] * sqd,
                    mask=mn[:, None] & (rd[None, :] < d), other=0.).to(tl.float32)
        do = tl.load(DO + bh * N * dv + rn[:, None] * dv + rv[None, :], mask=mn[:, None] & (rv[None, :] < dv),
                     other=0.).to(tl.float32)
        p = tl.dot(do, tl.trans(m), input_precision=PRECISION)  # [BLOCK_N, BLOCK_D]
        if MODE == 1 or MODE == 2:
            r = tl.load(R + bh * N + rn, mask=mn, other=1.)
            if MODE == 1:
                den = alpha * r + eps
            else:
                den = tl.maximum(r, clamp_min)
            g = tl.where(mn, 1. / den, 0.)
            dden = -tl.sum(p * q, 1) * g * g
            if MODE == 1:
                dr = alpha * dden
            else:
                dr = tl.where(r >= clamp_min, dden, 0.)
            dq = p * g[:, None] + dr[:, None] * z[None, :]
            dm += tl.dot(tl.trans(q), do * g[:, None], input_precision=PRECISION)
            dz += tl.sum(q * dr[:, None], 0)
        else:
            dq = p
            dm += tl.dot(tl.trans(q), do, input_precision=PRECISION)
        gs += tl.sum(do, 0)
        tl.store(DQ + bh * N * d + rn[:, None] * d + rd[None, :], dq.to(DQ.dtype.element_ty),
                 mask=mn[:, None] & (rd[None, :] < d))
    part = bh * SPLITS + split
    tl.store(DM + part * BLOCK_D * BLOCK_DV + rd[:, None] * BLOCK_DV + rv[None, :], dm)
    tl.store(DZ + part * BLOCK_D + rd, dz)
    tl.store(GS + part * BLOCK_DV + rv, gs)


@triton.jit
def _bwd_dkv_kernel(
        K, V, DS, DZ, DMEAN, DK, DV, H, N, d, dv, inv_n,
        skb, skh, skn, skd, svb, svh, svn, svd,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    b, h = bh // H, bh % H
    rd, rv = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    mn = rn < N
    k = tl.load(K + b * skb + h * skh + rn[:, None] * skn + rd[None, :] * skd, mask=mn[:, None] & (rd[None, :] < d),
                other=0.).to(tl.float32)
    v = tl.load(V + b * svb + h * svh + rn[:, None] * svn + rv[None, :] * svd,
                mask=mn[:, None] & (rv[None, :] < dv), other=0.).to(tl.float32)
    ds = tl.load(DS + bh * BLOCK_D * BLOCK_DV + rd[:, None] * BLOCK_DV + rv[None, :])
    dk = tl.dot(v, tl.trans(ds), input_precision=PRECISION) + tl.load(DZ + bh * BLOCK_D + rd)[None, :]
    dvv = tl.dot(k, ds, input_precision=PRECISION) + tl.load(DMEAN + bh * BLOCK_DV + rv)[None, :] * inv_n
    tl.store(DK + bh * N * d + rn[:, None] * d + rd[None, :], dk.to(DK.dtype.element_ty),
             mask=mn[:, None] & (rd[None, :] < d))
    tl.store(DV + bh * N * dv + rn[:, None] * dv + rv[None, :], dvv.to(DV.dtype.element_ty),
             mask=mn[:, None] & (rv[None, :] < dv))


# Token tile, and the number of tiles one reduction program walks before its partial sum is written (the splits
# give the reductions B*H*splits programs of parallelism instead of B*H).
_BLOCK_N = 32
_TILES_PER_SPLIT = 8


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _meta(q: Tensor, v: Tensor) -> dict:
    dot_f32, precision = triton_precision(q.dtype)
    return dict(BLOCK_N=_BLOCK_N, BLOCK_D=_pow2(q.shape[-1]), BLOCK_DV=_pow2(v.shape[-1]), DOT_F32=dot_f32,
                PRECISION=precision)


def _splits(N: int) -> int:
    return triton.cdiv(triton.cdiv(N, _BLOCK_N), _TILES_PER_SPLIT)


def _pad(x: Tensor, bd: int, bv: Optional[int] = None) -> Tensor:
    """Zero-pad the trailing dims of a small `[BH, d(, dv)]` fp32 tensor to the kernels' tile sizes."""
    pad = (0, bd - x.shape[-1]) if bv is None else (0, bv - x.shape[-1], 0, bd - x.shape[-2])
    return torch.nn.functional.pad(x.float(), pad).contiguous()


def _state_matrix(kv: Tensor, ksum: Tensor, vmean: Optional[Tensor], temperature: Optional[Tensor], mode: str,
                  alpha: float) -> Tensor:
    """`M = t alpha S` (minus `alpha z mean(v)^T` for injective), fp32 `[B, H, d, dv]`."""
    H = kv.shape[1]
    m = kv * alpha if temperature is None else kv * (temperature.float().reshape(1, H, 1, 1) * alpha)
    if mode == 'injective':
        m = m - alpha * ksum.unsqueeze(-1) * vmean.unsqueeze(-2)
    return m


def forward(
        q: Tensor, k: Tensor, v: Tensor, temperature: Optional[Tensor], normalizer: str, eps: float,
        clamp_min: float, scale: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Output `[B, H, N, dv]` and the fp32 state `k^T v` `[B, H, d, dv]`, `sum_N(k)` `[B, H, d]`, `r` `[B, H, N]`."""
    mode, alpha = resolve(normalizer, k.shape[-2], scale)
    B, H, N, d = q.shape
    dv = v.shape[-1]
    meta = _meta(q, v)
    bd, bv = meta['BLOCK_D'], meta['BLOCK_DV']
    splits = _splits(N)
    s_part = q.new_empty(B * H, splits, bd, bv, dtype=torch.float32)
    z_part = q.new_empty(B * H, splits, bd, dtype=torch.float32)
    v_part = q.new_empty(B * H, splits, bv, dtype=torch.float32)
    _state_kernel[(B * H, splits)](
        k, v, s_part, z_part, v_part, H, N, d, dv, _TILES_PER_SPLIT, splits, *k.stride(), *v.stride(), **meta)
    kv = s_part.sum(1)[:, :d, :dv].reshape(B, H, d, dv)
    ksum = z_part.sum(1)[:, :d].reshape(B, H, d)
    vmean = v_part.sum(1)[:, :dv].reshape(B, H, dv) / N
    m = _state_matrix(kv, ksum, vmean, temperature, mode, alpha)
    out = q.new_empty(B, H, N, dv)
    r = q.new_empty(B, H, N, dtype=torch.float32)
    _apply_kernel[(B * H, triton.cdiv(N, _BLOCK_N))](
        q, _pad(m.reshape(B * H, d, dv), bd, bv), _pad(ksum.reshape(B * H, d), bd),
        _pad(vmean.reshape(B * H, dv), bv), out, r, H, N, d, dv, alpha, eps, clamp_min, *q.stride(),
        MODE=_MODES[mode], **meta)
    return out, kv, ksum, r


def backward(
        dout: Tensor, q: Tensor, k: Tensor, v: Tensor, temperature: Optional[Tensor], out: Tensor, kv: Tensor,
        ksum: Tensor, r: Tensor, normalizer: str, eps: float, clamp_min: float, scale: float,
) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients of q, k, v and the temperature (shaped as given; None without one)."""
    mode, alpha = resolve(normalizer, k.shape[-2], scale)
    B, H, N, d = q.shape
    dv = v.shape[-1]
    dout = dout.contiguous()
    meta = _meta(q, v)
    bd, bv = meta['BLOCK_D'], meta['BLOCK_DV']
    kv, ksum = kv.float(), ksum.float()
    vmean = v.float().mean(2) if mode == 'injective' else None
    m = _state_matrix(kv, ksum, vmean, temperature, mode, alpha)
    splits = _splits(N)
    dq = q.new_empty(B, H, N, d)
    dm_part = q.new_empty(B * H, splits, bd, bv, dtype=torch.float32)
    dz_part = q.new_empty(B * H, splits, bd, dtype=torch.float32)
    gs_part = q.new_empty(B * H, splits, bv, dtype=torch.float32)
    _bwd_dq_kernel[(B * H, splits)](
        dout, q, _pad(m.reshape(B * H, d, dv), bd, bv), _pad(ksum.reshape(B * H, d), bd), r.float().contiguous(),
        dq, dm_part, dz_part, gs_part, H, N, d, dv, alpha, eps, clamp_min, _TILES_PER_SPLIT, splits, *q.stride(),
        MODE=_MODES[mode], **meta)
    dm = dm_part.sum(1)[:, :d, :dv].reshape(B, H, d, dv)
    dz = dz_part.sum(1)[:, :d].reshape(B, H, d)
    t = None if temperature is None else temperature.float().reshape(1, H, 1, 1)
    ds = dm * alpha if t is None else dm * (t * alpha)
    dt = None
    if temperature is not None:
        dt = ((dm * kv).sum((0, 2, 3)) * alpha).to(temperature.dtype).view(temperature.shape)
    dmean = torch.zeros(B, H, dv, device=q.device)
    if mode == 'injective':
        dz = -alpha * (dm @ vmean.unsqueeze(-1)).squeeze(-1)
        dmean = gs_part.sum(1)[:, :dv].reshape(B, H, dv) - alpha * (ksum.unsqueeze(-2) @ dm).squeeze(-2)
    dk, dvv = k.new_empty(B, H, N, d), v.new_empty(B, H, N, dv)
    _bwd_dkv_kernel[(B * H, triton.cdiv(N, _BLOCK_N))](
        k, v, _pad(ds.reshape(B * H, d, dv), bd, bv), _pad(dz.reshape(B * H, d), bd),
        _pad(dmean.reshape(B * H, dv), bv), dk, dvv, H, N, d, dv, 1.0 / N, *k.stride(), *v.stride(), **meta)
    return dq, dk, dvv, dt
