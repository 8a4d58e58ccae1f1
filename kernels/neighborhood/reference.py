"""Reference neighborhood attention: gather every query's neighbours explicitly. The oracle for the fast backends.

Memory is O(N * prod(kernel) * d); use it for tests and odd calls, not for speed.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ['window_start', 'neighbor_index', 'forward', 'backward']


def window_start(length: int, kernel: int, dilation: int, device: Optional[torch.device] = None) -> Tensor:
    """First key coordinate of each query's window along one axis (NATTEN's rule).

    Query i lives in dilation group g = i % d at in-group position i // d; the group has ceil((L - g) / d) tokens.
    The window of k group tokens is centred on the query (even k: k/2 left, k/2 - 1 right) and shifted inwards at the
    borders, so every query sees exactly k keys. Returns int64 `[L]` in full-axis coordinates.
    """
    i = torch.arange(length, device=device)
    group, pos = i % dilation, i // dilation
    group_len = (length - group + dilation - 1) // dilation
    start = torch.minimum((pos - kernel // 2).clamp(min=0), group_len - kernel)
    return group + dilation * start


def neighbor_index(
        spatial: Sequence[int], kernel: Sequence[int], dilation: Sequence[int], device: Optional[torch.device] = None,
) -> Tuple[Tensor, Tensor]:
    """Flat key index and flat rpb index of every (query, neighbour) pair.

    Returns two int64 `[N, K]` tensors (N = prod(spatial) queries in row-major order, K = prod(kernel) neighbours in
    row-major kernel order): the key's flat spatial index, and its index into the flattened `[prod(2k - 1)]` bias
    table, `(key - query) / d + k - 1` per axis.
    """
    key_flat: Optional[Tensor] = None
    rel_flat: Optional[Tensor] = None
    for length, k, d in zip(spatial, kernel, dilation):
        q = torch.arange(length, device=device)
        keys = window_start(length, k, d, device)[:, None] + d * torch.arange(k, device=device)  # [L, k]
        rel = torch.div(keys - q[:, None], d, rounding_mode='floor') + k - 1  # [L, k], in [0, 2k - 2]
        if key_flat is None:
            key_flat, rel_flat = keys, rel
        else:
            # Cartesian product with the previous axes: [N_prev, K_prev] x [L, k] -> [N_prev * L, K_prev * k].
            n, kk = key_flat.shape
            key_flat = (key_flat[:, None, :, None] * length + keys[None, :, None, :]).reshape(n * length, kk * k)
            rel_flat = (rel_flat[:, None, :, None] * (2 * k - 1) + rel[None, :, None, :]).reshape(n * length, kk * k)
    return key_flat, rel_flat


def _gather(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], kernel: List[int], dilation: List[int],
            scale: float):
    """Queries `[B, N, heads, d]`, gathered keys/values `[B, N, K, heads, d(v)]`, logits `[B, N, heads, K]`, all in
    fp32 (fp64 for fp64 inputs, so gradcheck sees exact gradients)."""
    B, *spatial, heads, d = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)
    key_idx, rel_idx = neighbor_index(spatial, kernel, dilation, q.device)
    N = key_idx.shape[0]
    qf = q.reshape(B, N, heads, d).to(acc)
    kg = k.reshape(B, N, heads, d).to(acc)[:, key_idx]
    vg = v.reshape(B, N, heads, v.shape[-1]).to(acc)[:, key_idx]
    logits = torch.einsum('bnhd,bnkhd->bnhk', qf * scale, kg)
    if rpb is not None:
        logits = logits + rpb.reshape(heads, -1).to(acc)[:, rel_idx].permute(1, 0, 2)  # [heads, N, K] -> [N, heads, K]
    return qf, kg, vg, logits, key_idx, rel_idx


def forward(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], kernel: List[int], dilation: List[int],
            scale: float) -> Tuple[Tensor, Tensor]:
    """Output (shape of v) and fp32 log-sum-exp `[B, *spatial, heads]` of the logits."""
    _, _, vg, logits, _, _ = _gather(q, k, v, rpb, kernel, dilation, scale)
    out = torch.einsum('bnhk,bnkhd->bnhd', logits.softmax(-1), vg)
    return out.to(v.dtype).reshape(v.shape), logits.logsumexp(-1).float().reshape(q.shape[:-1])


def backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], out: Tensor, lse: Tensor,
             kernel: List[int], dilation: List[int], scale: float) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients of q, k, v and rpb (None without rpb); recomputes the softmax, ignores out and lse."""
    qf, kg, vg, logits, key_idx, rel_idx = _gather(q, k, v, rpb, kernel, dilation, scale)
    B, N, heads, _ = qf.shape
    p = logits.softmax(-1)  # [B, N, heads, K]
    do = dout.reshape(B, N, heads, v.shape[-1]).to(qf.dtype)
    dp = torch.einsum('bnhd,bnkhd->bnhk', do, vg)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))  # softmax backward
    dq = torch.einsum('bnhk,bnkhd->bnhd', ds, kg) * scale
    # Every (query, neighbour) pair contributes to its key's gradient: scatter-add over the flat key index.
    dkg = torch.einsum('bnhk,bnhd->bnkhd', ds, qf * scale).flatten(1, 2)  # [B, N * K, heads, d]
    dvg = torch.einsum('bnhk,bnhd->bnkhd', p, do).flatten(1, 2)
    dk = dkg.new_zeros(B, N, heads, dkg.shape[-1]).index_add_(1, key_idx.flatten(), dkg)
    dv = dvg.new_zeros(B, N, heads, dvg.shape[-1]).index_add_(1, key_idx.flatten(), dvg)
    drpb = None
    if rpb is not None:
        ds_h = ds.sum(0).permute(1, 0, 2).flatten(1)  # [heads, N * K]
        drpb = ds_h.new_zeros(heads, rpb[0].numel()).index_add_(1, rel_idx.flatten(), ds_h)
        drpb = drpb.to(rpb.dtype).reshape(rpb.shape)
    return dq.to(q.dtype).reshape(q.shape), dk.to(k.dtype).reshape(k.shape), dv.to(v.dtype).reshape(v.shape), drpb
