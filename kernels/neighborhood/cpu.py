"""Fast CPU neighborhood attention: tiled halo attention on batched GEMMs, forward and backward.

Queries are cut into tiles of t_0 x ... x t_n tokens inside each dilation sub-grid. Because a query's window start is
monotone in its coordinate, the union of a tile's windows is one box ("halo") of at most t + k - 1 sub-grid tokens
per axis. Every tile then is a small dense attention: `[M, d] @ [d, Kh]` scores (M = prod(t), Kh = prod(halo)) with
the entries outside each query's own window set to -inf through the bias, softmax, `[M, Kh] @ [Kh, dv]`.
Memory is O(N * d) for the gathered tiles plus the `[M, Kh]` scores of one batch chunk at a time; the per-query
`[N, K, d]` neighbour tensors of the reference are never built.

Dilation costs nothing extra: tiles are taken per sub-grid, and the index tensors address the full-resolution
heads-last input directly, so one gather builds all tiles of all sub-grids and heads at once. Sub-grids shorter than
the longest one (d does not divide L) get clamped duplicate queries/keys that are masked out (keys) or discarded
(queries; their output gradient is zeroed in the backward so they add nothing to dK, dV, d_rpb).

Backward recomputes the probabilities and runs dP = dO V^T, dS = P (dP - rowsum(dP o P)), dQ = dS K, dK = dS^T Q,
dV = P^T dO per tile; halo contributions to dK/dV and bias contributions to d_rpb are summed
with `index_add_` (halos of neighbouring tiles overlap).
"""
import functools
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ['forward', 'backward', 'tile_shape']

# Bytes of fp32 scores per batch chunk (a 56x56 image with two heads needs 3.5 MB): scores and probabilities stay in
# cache between the calls that produce and consume them. On a quiet moment of this machine (B=8, 56x56, k=7) the
# forward took 31 ms with 4 MB chunks, 65 ms with 16 MB and 85 ms with 64 MB.
_CHUNK_BYTES = 4 << 20


def tile_shape(spatial: Sequence[int], kernel: Sequence[int]) -> Tuple[int, ...]:
    """Query tile per axis: about 32 queries. A tile computes prod(t + k - 1) scores per query instead of prod(k),
    so smaller tiles waste less, while larger ones make better GEMMs. At 56x56, k=7, d=32, 4x8 beat 8x8, 8x4, 4x4,
    2x8 and 7x7 on this machine (4x8 computes 140 scores per query for 49 useful ones, 8x8 196)."""
    return {1: (16,), 2: (4, 8)}.get(len(spatial), (2, 4, 4))


@dataclass(frozen=True)
class _AxisPlan:
    q: Tensor  # [T, t] full-resolution query coordinate of each tile slot (clamped duplicates past a sub-grid's end)
    q_valid: Tensor  # [T, t] slot holds a real query (not a duplicate)
    k: Tensor  # [T, h] full-resolution key coordinate of each halo slot (clamped)
    inside: Tensor  # [T, t, h] key slot is in the query slot's window
    rel: Tensor  # [T, t, h] relative-bias index (key - query) / d + k - 1 (0 where not inside)


def _axis_plan(length: int, kernel: int, dilation: int, tile: int) -> _AxisPlan:
    d = dilation
    longest = -(-length // d)
    t = min(tile, longest)
    n_tiles = -(-longest // t)
    halo = min(t + kernel - 1, longest)
    g = torch.arange(d)[:, None, None]  # sub-grid (dilation group)
    group_len = (length - g + d - 1) // d
    i = (torch.arange(n_tiles)[:, None] * t + torch.arange(t))[None]  # [1, T, t] in-group query position
    q_valid = i < group_len
    i = torch.minimum(i, group_len - 1)
    start = torch.minimum((i - kernel // 2).clamp(min=0), group_len - kernel)  # NATTEN's shifted window
    h = torch.minimum(start[..., :1], group_len - halo).clamp(min=0) + torch.arange(halo)  # [d, T, h]
    off = h[..., None, :] - start[..., :, None]  # [d, T, t, h]
    inside = (h < group_len)[..., None, :] & (off >= 0) & (off < kernel)
    rel = torch.where(inside, h[..., None, :] - i[..., :, None] + kernel - 1, 0)
    h = torch.minimum(h, group_len - 1)
    return _AxisPlan(
        q=(g + d * i).reshape(d * n_tiles, t), q_valid=q_valid.expand(d, n_tiles, t).reshape(d * n_tiles, t),
        k=(g + d * h).reshape(d * n_tiles, halo), inside=inside.reshape(d * n_tiles, t, halo),
        rel=rel.reshape(d * n_tiles, t, halo))


@dataclass(frozen=True)
class _Plan:
    tiles: int
    m: int  # queries per tile
    kh: int  # halo keys per tile
    bias_index: Tensor  # [tiles, m, kh] into the flattened rpb table extended by one -inf slot at the end
    q_slot: Tensor  # [heads * tiles * m] row of the heads-last `[N * heads]` input held by each query slot
    k_slot: Tensor  # [heads * tiles * kh] the same for each halo key slot
    q_valid: Tensor  # [tiles * m] the query slot holds a real query (not a clamped duplicate)
    untile: Tensor  # [N * heads] the query slot that holds each row of the heads-last output


def _place(t: Tensor, pos: Sequence[int], ndim: int) -> Tensor:
    """View t's dims at positions `pos` of an `ndim`-dim broadcast shape (size 1 elsewhere)."""
    shape = [1] * ndim
    for p, s in zip(pos, t.shape):
        shape[p] = s
    return t.reshape(shape)


@functools.lru_cache(maxsize=32)
def _plan(spatial: Tuple[int, ...], heads: int, kernel: Tuple[int, ...], dilation: Tuple[int, ...],
          tile: Tuple[int, ...], device: torch.device) -> _Plan:
    n = len(spatial)
    axes = [_axis_plan(*args) for args in zip(spatial, kernel, dilation, tile)]
    n_tiles = [a.q.shape[0] for a in axes]
    t = [a.q.shape[1] for a in axes]
    h = [a.k.shape[1] for a in axes]
    tiles, m, kh = math.prod(n_tiles), math.prod(t), math.prod(h)
    strides = [math.prod(spatial[a + 1:]) for a in range(n)]
    rel_strides = [math.prod(2 * kk - 1 for kk in kernel[a + 1:]) for a in range(n)]
    # Broadcast layouts: queries [T_0.., t_0..], keys [T_0.., h_0..], (query, key) pairs [T_0.., t_0.., h_0..].
    q_flat = sum(_place(a.q, (i, n + i), 2 * n) * s for i, (a, s) in enumerate(zip(axes, strides)))
    k_flat = sum(_place(a.k, (i, n + i), 2 * n) * s for i, (a, s) in enumerate(zip(axes, strides)))
    q_valid = functools.reduce(torch.logical_and, [_place(a.q_valid, (i, n + i), 2 * n) for i, a in enumerate(axes)])
    rel = sum(_place(a.rel, (i, n + i, 2 * n + i), 3 * n) * s for i, (a, s) in enumerate(zip(axes, rel_strides)))
    inside = functools.reduce(
        torch.logical_and, [_place(a.inside, (i, n + i, 2 * n + i), 3 * n) for i, a in enumerate(axes)])
    table = math.prod(2 * kk - 1 for kk in kernel)
    inside = inside.expand(*n_tiles, *t, *h).reshape(tiles, m, kh)
    bias_index = torch.where(inside, rel.reshape(tiles, m, kh), table)
    q_flat = q_flat.expand(*n_tiles, *t).reshape(-1)
    k_flat = k_flat.expand(*n_tiles, *h).reshape(-1)
    q_valid = q_valid.expand(*n_tiles, *t).reshape(-1)
    inverse = torch.empty(math.prod(spatial), dtype=torch.long)
    inverse[q_flat[q_valid]] = torch.arange(q_flat.numel())[q_valid]
    hd = torch.arange(heads)
    return _Plan(
        tiles=tiles, m=m, kh=kh, bias_index=bias_index.to(device),
        q_slot=(q_flat[None, :] * heads + hd[:, None]).reshape(-1).to(device),
        k_slot=(k_flat[None, :] * heads + hd[:, None]).reshape(-1).to(device), q_valid=q_valid.to(device),
        untile=(inverse[:, None] + hd[None, :] * (tiles * m)).reshape(-1).to(device))


def _setup(q: Tensor, kernel: List[int], dilation: List[int]) -> _Plan:
    spatial = tuple(q.shape[1:-2])
    return _plan(spatial, q.shape[-2], tuple(kernel), tuple(dilation), tile_shape(spatial, kernel), q.device)


def _tiles(x: Tensor, slots: Tensor, rows: int, acc: torch.dtype) -> Tensor:
    """Gather `[n, *spatial, heads, c]` into tiles `[n * heads * tiles, rows, c]` in the compute dtype.

    `slots` indexes the `[N * heads]` rows of the heads-last input; one `index_select` copies whole c-vectors."""
    c = x.shape[-1]
    return x.reshape(x.shape[0], -1, c).index_select(1, slots).reshape(-1, rows, c).to(acc)


def _bias(rpb: Optional[Tensor], heads: int, plan: _Plan, table: int, acc: torch.dtype, device) -> Tensor:
    """Additive `[heads * tiles, m, kh]` bias: rpb inside each query's window, -inf outside."""
    ext = torch.zeros(heads, table + 1, dtype=acc, device=device)
    if rpb is not None:
        ext[:, :table] = rpb.reshape(heads, table)
    ext[:, table] = float('-inf')
    return ext.index_select(1, plan.bias_index.view(-1)).view(-1, plan.m, plan.kh)


def _chunk(batch: int, heads: int, plan: _Plan) -> int:
    """Batch elements per chunk: as few chunks as the score budget allows, of balanced size."""
    per = max(1, _CHUNK_BYTES // (4 * heads * plan.tiles * plan.m * plan.kh))
    return -(-batch // -(-batch // per))


def _scores(bias: Tensor, n: int, qt: Tensor, kt: Tensor, scale: float) -> Tensor:
    """`bias + scale * q @ k^T` for n batch elements: one batched GEMM that accumulates onto the bias."""
    if n > 1:
        bias = bias.expand(n, *bias.shape).reshape(-1, *bias.shape[1:])
    return torch.baddbmm(bias, qt, kt.transpose(1, 2), alpha=scale)


def _untile(dst: Tensor, src: Tensor, untile: Tensor) -> None:
    """dst[:, i] = src[:, untile[i]]: every output row is held by exactly one slot (duplicates are never read)."""
    if src.dtype == dst.dtype:
        torch.index_select(src, 1, untile, out=dst)
    else:
        dst.copy_(src.index_select(1, untile))


def forward(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], kernel: List[int], dilation: List[int],
            scale: float) -> Tuple[Tensor, Tensor]:
    """Output (shape of v) and fp32 log-sum-exp `[B, *spatial, heads]`."""
    plan = _setup(q, kernel, dilation)
    B, heads, dv = q.shape[0], q.shape[-2], v.shape[-1]
    acc = torch.promote_types(q.dtype, torch.float32)
    bias = _bias(rpb, heads, plan, math.prod(2 * kk - 1 for kk in kernel), acc, q.device)
    out = torch.empty(B, plan.untile.numel(), dv, dtype=v.dtype, device=q.device)
    lse = torch.empty(B, plan.untile.numel(), dtype=torch.float32, device=q.device)
    step = _chunk(B, heads, plan)
    for b in range(0, B, step):
        sl = slice(b, b + step)
        n = q[sl].shape[0]
        qt = _tiles(q[sl], plan.q_slot, plan.m, acc)  # [n * heads * tiles, m, d]
        kt = _tiles(k[sl], plan.k_slot, plan.kh, acc)  # [n * heads * tiles, kh, d]
        vt = _tiles(v[sl], plan.k_slot, plan.kh, acc)
        s = _scores(bias, n, qt, kt, scale)  # [n * heads * tiles, m, kh]
        p = torch.softmax(s, -1)
        # log-sum-exp = max(s) + log(sum(exp(s - max(s)))) and the largest probability is 1 / that sum. (Two cheap
        # max reductions; exp of the -inf entries, unlike softmax, takes a slow path on CPU.)
        lse_t = s.amax(-1).sub_(p.amax(-1).log_())
        o = torch.bmm(p, vt)  # [n * heads * tiles, m, dv]
        _untile(out[sl], o.view(n, -1, dv), plan.untile)
        _untile(lse[sl], lse_t.view(n, -1), plan.untile)
    return out.reshape(v.shape), lse.reshape(q.shape[:-1])


def backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], out: Tensor, lse: Tensor,
             kernel: List[int], dilation: List[int], scale: float) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients of q, k, v and rpb (None without rpb). Recomputes the probabilities; out and lse are not needed
    (the softmax backward's rowsum(dP o P) equals rowsum(dO o O))."""
    plan = _setup(q, kernel, dilation)
    B, heads, d, dv = q.shape[0], q.shape[-2], q.shape[-1], v.shape[-1]
    rows = plan.untile.numel()
    acc = torch.promote_types(q.dtype, torch.float32)
    table = math.prod(2 * kk - 1 for kk in kernel)
    bias = _bias(rpb, heads, plan, table, acc, q.device)
    # Duplicate query slots get a zero output gradient, so they add nothing to dK, dV and d_rpb.
    valid = plan.q_valid.to(acc).reshape(plan.tiles, plan.m, 1).repeat(heads, 1, 1)
    dq = torch.empty(B, rows, d, dtype=q.dtype, device=q.device)
    dk = torch.zeros(B, rows, d, dtype=acc, device=q.device)
    dvv = torch.zeros(B, rows, dv, dtype=acc, device=q.device)
    dbias = torch.zeros_like(bias) if rpb is not None else None
    step = _chunk(B, heads, plan)
    for b in range(0, B, step):
        sl = slice(b, b + step)
        n = q[sl].shape[0]
        qt = _tiles(q[sl], plan.q_slot, plan.m, acc)  # [n * heads * tiles, m, d]
        kt = _tiles(k[sl], plan.k_slot, plan.kh, acc)  # [n * heads * tiles, kh, d]
        vt = _tiles(v[sl], plan.k_slot, plan.kh, acc)
        dot = _tiles(dout[sl], plan.q_slot, plan.m, acc).view(n, *valid.shape[:2], dv).mul_(valid).view(-1, plan.m, dv)
        p = torch.softmax(_scores(bias, n, qt, kt, scale), -1)  # [n * heads * tiles, m, kh]
        ds = torch.ops.aten._softmax_backward_data(torch.bmm(dot, vt.transpose(1, 2)), p, -1, acc)
        dvv[sl].index_add_(1, plan.k_slot, torch.bmm(p.transpose(1, 2), dot).view(n, -1, dv))
        dk[sl].index_add_(1, plan.k_slot, torch.bmm(ds.transpose(1, 2), qt).view(n, -1, d))
        _untile(dq[sl], torch.baddbmm(ds.new_empty(()), ds, kt, beta=0, alpha=scale).view(n, -1, d), plan.untile)
        if dbias is not None:
            dbias += ds.view(n, *bias.shape).sum(0)
    drpb = None
    if dbias is not None:
        drpb = torch.zeros(heads, table + 1, dtype=acc, device=q.device)
        drpb.index_add_(1, plan.bias_index.reshape(-1), dbias.view(heads, -1))
        drpb = drpb[:, :table].reshape(rpb.shape).to(rpb.dtype)
    dk = dk.mul_(scale).reshape(k.shape).to(k.dtype)  # dK = scale * dS^T Q, scaled once here
    return dq.reshape(q.shape), dk, dvv.reshape(v.shape).to(v.dtype), drpb
