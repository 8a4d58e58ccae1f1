"""Reference window attention: pad, roll, partition, dense attention per window, reverse, exactly as the definition in
the package docstring reads. The oracle for the fast backends; memory is O(B * heads * windows * N^2).

Computed in fp32 (fp64 for fp64 inputs, so gradcheck sees exact gradients); the backward recomputes the softmax and
writes the textbook formulas in window space.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    'relative_position_index', 'region_ids', 'window_logit_mask', 'forward', 'backward', 'context_slots',
    'context_forward', 'context_backward',
]


def relative_position_index(wh: int, ww: int, device: Optional[torch.device] = None) -> Tensor:
    """Swin's `[N, N]` index into the `[(2wh - 1)(2ww - 1), heads]` bias table, N = wh * ww in row-major window order:
    `(yq - yk + wh - 1) * (2ww - 1) + (xq - xk + ww - 1)` (query minus key, as Swin's `relative_position_index`)."""
    y = torch.arange(wh, device=device).repeat_interleave(ww)
    x = torch.arange(ww, device=device).repeat(wh)
    return (y[:, None] - y[None, :] + wh - 1) * (2 * ww - 1) + (x[:, None] - x[None, :] + ww - 1)


def region_ids(length: int, window: int, shift: int, device: Optional[torch.device] = None) -> Tensor:
    """Swin's shifted-window region of each position of the rolled (padded) axis: the slices `[0, L - w)`,
    `[L - w, L - s)`, `[L - s, L)` are regions 0, 1, 2; without a shift every position is region 0."""
    r = torch.arange(length, device=device)
    if shift == 0:
        return torch.zeros_like(r)
    return (r >= length - window).long() + (r >= length - shift).long()


def _real(length: int, shift: int, before: int, real: int, device) -> Tensor:
    """Whether each position of the rolled, padded axis holds a real token (not padding)."""
    src = (torch.arange(length, device=device) + shift) % length
    return (src >= before) & (src < before + real)


def window_logit_mask(
        H: int, W: int, window: List[int], shift: List[int], pad: List[int], mask_pad: bool,
        device: Optional[torch.device] = None,
) -> Tensor:
    """Boolean `[num_windows, N, N]` of the (query, key) pairs that are masked out, windows in row-major order of the
    rolled padded map: keys in another shift region, and (`mask_pad`) padding keys of real queries."""
    wh, ww = window
    Hp, Wp = H + pad[0] + pad[1], W + pad[2] + pad[3]
    ry, rx = region_ids(Hp, wh, shift[0], device), region_ids(Wp, ww, shift[1], device)
    region = (ry[:, None] * 3 + rx[None, :])  # [Hp, Wp]
    real = _real(Hp, shift[0], pad[0], H, device)[:, None] & _real(Wp, shift[1], pad[2], W, device)[None, :]

    def part(t: Tensor) -> Tensor:  # [Hp, Wp] -> [num_windows, N]
        return t.view(Hp // wh, wh, Wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    region, real = part(region), part(real)
    masked = region[:, :, None] != region[:, None, :]
    if mask_pad:
        masked = masked | (real[:, :, None] & ~real[:, None, :])
    return masked


def _part(t: Tensor, window: List[int], shift: List[int], pad: List[int]) -> Tensor:
    """Zero padding, cyclic shift by -shift, `[B, H, W, heads, c]` -> `[B, windows, heads, N, c]`."""
    B, H, W, heads, c = t.shape
    wh, ww = window
    t = F.pad(t, (0, 0, 0, 0, pad[2], pad[3], pad[0], pad[1]))
    t = torch.roll(t, (-shift[0], -shift[1]), (1, 2))
    Hp, Wp = t.shape[1:3]
    t = t.view(B, Hp // wh, wh, Wp // ww, ww, heads, c).permute(0, 1, 3, 5, 2, 4, 6)
    return t.reshape(B, (Hp // wh) * (Wp // ww), heads, wh * ww, c)


def _unpart(t: Tensor, H: int, W: int, window: List[int], shift: List[int], pad: List[int]) -> Tensor:
    """Inverse of `_part` for `[B, windows, heads, N, c]`: reverse partition and shift, crop the padding."""
    B, _, heads, _, c = t.shape
    wh, ww = window
    Hp, Wp = H + pad[0] + pad[1], W + pad[2] + pad[3]
    t = t.view(B, Hp // wh, Wp // ww, heads, wh, ww, c).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, Hp, Wp, heads, c)
    t = torch.roll(t, (shift[0], shift[1]), (1, 2))
    return t[:, pad[0]:pad[0] + H, pad[2]:pad[2] + W]


def _logits(q: Tensor, k: Tensor, rpb: Optional[Tensor], H: int, W: int, window: List[int], shift: List[int],
            pad: List[int], mask_pad: bool, scale: float) -> Tuple[Tensor, Tensor]:
    """Partitioned queries `[B, windows, heads, N, d]` and the logits `[B, windows, heads, N, N]` (-inf masked)."""
    qw, kw = _part(q, window, shift, pad), _part(k, window, shift, pad)
    logits = torch.einsum('bwhnd,bwhmd->bwhnm', qw * scale, kw)
    if rpb is not None:
        N = window[0] * window[1]
        index = relative_position_index(window[0], window[1], q.device)
        logits = logits + rpb[index.view(-1)].view(N, N, -1).permute(2, 0, 1)
    masked = window_logit_mask(H, W, window, shift, pad, mask_pad, q.device)  # [windows, N, N]
    return qw, logits.masked_fill(masked[None, :, None], float('-inf'))


def forward(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], window: List[int], shift: List[int],
            pad: List[int], mask_pad: bool, scale: float) -> Tuple[Tensor, Tensor]:
    """Output `[B, H, W, heads, dv]` (dtype of v) and fp32 log-sum-exp `[B, H, W, heads]`."""
    acc = torch.promote_types(q.dtype, torch.float32)
    H, W = q.shape[1:3]
    _, logits = _logits(q.to(acc), k.to(acc), None if rpb is None else rpb.to(acc), H, W, window, shift, pad,
                        mask_pad, scale)
    lse = logits.logsumexp(-1)
    out = torch.einsum('bwhnm,bwhmd->bwhnd', (logits - lse[..., None]).exp(), _part(v.to(acc), window, shift, pad))
    out = _unpart(out, H, W, window, shift, pad)
    lse = _unpart(lse[..., None], H, W, window, shift, pad)[..., 0]
    return out.to(v.dtype).contiguous(), lse.float().contiguous()


def backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], out: Tensor, lse: Tensor,
             window: List[int], shift: List[int], pad: List[int], mask_pad: bool,
             scale: float) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients of q, k, v and rpb (None without rpb); recomputes the probabilities (out and lse unused).

    Partition is a permutation of the padded map, so the window-space gradients go back through `_unpart` like the
    output; gradients of padding tokens are cropped (they are constants)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    H, W = q.shape[1:3]
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    qw, logits = _logits(qa, ka, None if rpb is None else rpb.to(acc), H, W, window, shift, pad, mask_pad, scale)
    kw, vw, dow = (_part(t, window, shift, pad) for t in (ka, va, dout.to(acc)))
    p = logits.softmax(-1)  # [B, windows, heads, N, N]
    dp = torch.einsum('bwhnd,bwhmd->bwhnm', dow, vw)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    dq = torch.einsum('bwhnm,bwhmd->bwhnd', ds, kw) * scale
    dk = torch.einsum('bwhnm,bwhnd->bwhmd', ds, qw)  # qw already carries no scale: scale once below
    dv = torch.einsum('bwhnm,bwhnd->bwhmd', p, dow)
    grads = [_unpart(g, H, W, window, shift, pad) for g in (dq, dk * scale, dv)]
    drpb = None
    if rpb is not None:
        N = window[0] * window[1]
        per_head = ds.sum((0, 1)).permute(1, 2, 0).reshape(N * N, -1)  # [heads, N, N] -> [N * N, heads]
        index = relative_position_index(window[0], window[1], q.device).view(-1)
        drpb = torch.zeros(rpb.shape, dtype=acc, device=q.device).index_add_(0, index, per_head).to(rpb.dtype)
    dq, dk, dv = (g.to(t.dtype).contiguous() for g, t in zip(grads, (q, k, v)))
    return dq, dk, dv, drpb


# --- context mode (`context_window_attention`) ---------------------------------------------------------------------


def context_slots(H: int, W: int, Hk: int, Wk: int, window: List[int], context: List[int], stride: List[int],
                  offset: List[int], dilation: List[int], border: str,
                  device: Optional[torch.device] = None) -> Tuple[Tensor, Tensor]:
    """Key-map token `y * Wk + x` of every context slot `[windows, kh * kw]` (windows and slots row-major; -1 where
    the key lies outside the map, 'zeros' and 'mask' borders), and the boolean of the slots inside the map."""
    from . import context_coords
    nh, nw = H // window[0], W // window[1]
    ys = context_coords(Hk, nh, context[0], stride[0], offset[0], dilation[0], border, device)  # [nh, kh]
    xs = context_coords(Wk, nw, context[1], stride[1], offset[1], dilation[1], border, device)  # [nw, kw]
    inside = (ys >= 0)[:, None, :, None] & (xs >= 0)[None, :, None, :]  # [nh, nw, kh, kw]
    tok = ys[:, None, :, None] * Wk + xs[None, :, None, :]
    tok = torch.where(inside, tok, torch.full_like(tok, -1))
    n = context[0] * context[1]
    return tok.reshape(nh * nw, n), inside.reshape(nh * nw, n)


def _query_windows(t: Tensor, window: List[int]) -> Tensor:
    """`[B, H, W, heads, c]` -> `[B, windows, heads, wh * ww, c]` (windows and slots row-major)."""
    B, H, W, heads, c = t.shape
    wh, ww = window
    t = t.reshape(B, H // wh, wh, W // ww, ww, heads, c).permute(0, 1, 3, 5, 2, 4, 6)
    return t.reshape(B, (H // wh) * (W // ww), heads, wh * ww, c)


def _context_windows(t: Tensor, tok: Tensor) -> Tensor:
    """Key-map `[B, Hk, Wk, heads, c]` -> context `[B, windows, heads, kh * kw, c]`, zero where `tok` is -1."""
    B, Hk, Wk, heads, c = t.shape
    flat = torch.cat([t.reshape(B, Hk * Wk, heads, c), t.new_zeros(B, 1, heads, c)], 1)  # row Hk * Wk: zeros
    idx = torch.where(tok < 0, torch.full_like(tok, Hk * Wk), tok)
    return flat[:, idx.reshape(-1)].view(B, *tok.shape, heads, c).permute(0, 1, 3, 2, 4)


def _context_logits(q: Tensor, k: Tensor, window: List[int], context: List[int], stride: List[int],
                    offset: List[int], dilation: List[int], border: str, scale: float):
    """Query windows `[B, windows, heads, Nq, d]`, slot tokens, the logits `[B, windows, heads, Nq, Nk]` (-inf
    outside the map with the 'mask' border)."""
    tok, inside = context_slots(q.shape[1], q.shape[2], k.shape[1], k.shape[2], window, context, stride, offset,
                                dilation, border, q.device)
    qw = _query_windows(q, window)
    logits = torch.einsum('bwhnd,bwhmd->bwhnm', qw * scale, _context_windows(k, tok))
    if border == 'mask':
        logits = logits.masked_fill(~inside[None, :, None, None, :], float('-inf'))
    return qw, tok, logits


def _query_unwindows(t: Tensor, H: int, W: int, window: List[int]) -> Tensor:
    """Inverse of `_query_windows`: `[B, windows, heads, N, c]` -> `[B, H, W, heads, c]`."""
    B, _, heads, _, c = t.shape
    wh, ww = window
    t = t.view(B, H // wh, W // ww, heads, wh, ww, c).permute(0, 1, 4, 2, 5, 3, 6)
    return t.reshape(B, H, W, heads, c)


def _context_unwindows(t: Tensor, tok: Tensor, Hk: int, Wk: int) -> Tensor:
    """Adjoint of `_context_windows`: context `[B, windows, heads, Nk, c]` summed onto the key map (outside slots
    dropped; a token in several contexts gets the sum)."""
    B, _, heads, _, c = t.shape
    idx = torch.where(tok < 0, torch.full_like(tok, Hk * Wk), tok).reshape(-1)
    rows = t.new_zeros(B, Hk * Wk + 1, heads, c).index_add_(1, idx, t.permute(0, 1, 3, 2, 4).reshape(B, -1, heads, c))
    return rows[:, :-1].reshape(B, Hk, Wk, heads, c)


def context_forward(q: Tensor, k: Tensor, v: Tensor, window: List[int], context: List[int], stride: List[int],
                    offset: List[int], dilation: List[int], border: str, scale: float) -> Tuple[Tensor, Tensor]:
    """Output `[B, H, W, heads, dv]` (dtype of v) and fp32 log-sum-exp `[B, H, W, heads]`: gather each window's
    context, dense attention per window, back to the map."""
    acc = torch.promote_types(q.dtype, torch.float32)
    H, W = q.shape[1:3]
    _, tok, logits = _context_logits(q.to(acc), k.to(acc), window, context, stride, offset, dilation, border, scale)
    lse = logits.logsumexp(-1)
    out = torch.einsum('bwhnm,bwhmd->bwhnd', (logits - lse[..., None]).exp(), _context_windows(v.to(acc), tok))
    out = _query_unwindows(out, H, W, window)
    lse = _query_unwindows(lse[..., None], H, W, window)[..., 0]
    return out.to(v.dtype).contiguous(), lse.float().contiguous()


def context_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, window: List[int],
                     context: List[int], stride: List[int], offset: List[int], dilation: List[int], border: str,
                     scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of q, k, v in window space, then back to the maps (recomputes the probabilities; out and lse
    unused). A key token in several windows' contexts (overlap, copy-shift) sums the gradients of all of them."""
    acc = torch.promote_types(q.dtype, torch.float32)
    H, W = q.shape[1:3]
    Hk, Wk = k.shape[1:3]
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    qw, tok, logits = _context_logits(qa, ka, window, context, stride, offset, dilation, border, scale)
    kw, vw = _context_windows(ka, tok), _context_windows(va, tok)
    dow = _query_windows(dout.to(acc), window)
    p = logits.softmax(-1)  # [B, windows, heads, Nq, Nk]
    dp = torch.einsum('bwhnd,bwhmd->bwhnm', dow, vw)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    dq = _query_unwindows(torch.einsum('bwhnm,bwhmd->bwhnd', ds, kw) * scale, H, W, window)
    dk = _context_unwindows(torch.einsum('bwhnm,bwhnd->bwhmd', ds, qw) * scale, tok, Hk, Wk)
    dv = _context_unwindows(torch.einsum('bwhnm,bwhnd->bwhmd', p, dow), tok, Hk, Wk)
    return tuple(g.to(t.dtype).contiguous() for g, t in zip((dq, dk, dv), (q, k, v)))
