"""Fast CPU window attention: PyTorch's fused CPU attention kernel on window-ordered q, k, v with the bias and the
masks as one additive term; chunked batched GEMMs for the backward where the bias needs a gradient.

* No partition copy where the windows are one strided sequence each (CSWin's horizontal stripes, width-1 vertical
  stripes, full attention; no shift or padding, d == dv): the fused kernel reads them through strides, and only the
  output is written back heads-last.
* Otherwise partition, cyclic shift and padding are one precomputed index per call shape: one `index_select` per
  tensor reads q, k, v into `[B, windows * heads, N, d]`, and the output comes back to heads-last
  `[B, H, W, heads, dv]` through the inverse index (every token lies in exactly one window). No roll, pad or reverse
  of the peers' path is materialised.
* Relative position bias, Swin's region mask and the padded-key mask are summed once into a `[windows * heads, N, N]`
  additive term (a few MB at most) that broadcasts over the batch; without shift, padding or bias there is none.
  In `mask` padding mode padded slots are filled by a clamped index (a copy of a real token): their keys are masked
  for real queries and their query rows are never read back. `zeros` mode pads q, k, v with zeros instead.
* Forward: `aten._scaled_dot_product_flash_attention_for_cpu` (tiled, scores never leave cache; returns the LSE);
  when the value head dim differs from the query's (which that kernel refuses), chunked batched GEMMs.
* Backward without a bias (and without padding slots): that kernel's backward. With a bias, whose gradient needs dS,
  per chunk of images: recompute P = softmax(S) with S = bias + scale * Q K^T (baddbmm onto the bias),
  dS = P o (dP - rowsum(dP o P)), dQ = dS K, dK = dS^T Q, dV = P^T dO; d_rpb sums dS over the batch and windows.

Context mode: the query windows are one permute-copy, each window's context one `index_select` of whole head
vectors (a zero row stands in for keys outside the map with the 'zeros' border); 'mask' is one additive `[windows,
1, 1, N]` term. The same fused CPU kernel runs forward and backward (explicit batched GEMMs when d != dv), and the
context gradients go back to the key map with one `index_add_` (a token in several contexts sums their gradients).
"""
import functools
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import context_slots, relative_position_index, window_logit_mask

__all__ = ['forward', 'backward', 'context_forward', 'context_backward']

# Bytes of fp32 scores per backward chunk: P and dS of one chunk stay in cache between the GEMMs that use them.
_CHUNK_BYTES = 4 << 20


@dataclass(frozen=True)
class _Plan:
    windows: int
    n: int  # tokens per window
    slot: Tensor  # [windows * heads * N] heads-last row ((y * W + x) * heads + head) read by each window slot
    inverse: Tensor  # [H * W * heads] slot (in `[windows * heads * N]` order) that holds each heads-last row
    masked: Optional[Tensor]  # [windows, N, N] bool, or None when nothing is masked
    real: Optional[Tensor]  # [windows, 1, N, 1] 1.0 where a slot holds a real token, None without padding
    rel: Tensor  # [N, N] index into the rpb table


@functools.lru_cache(maxsize=64)
def _plan(H: int, W: int, heads: int, window: Tuple[int, int], shift: Tuple[int, int], pad: Tuple[int, ...],
          mask_pad: bool, device: torch.device) -> _Plan:
    wh, ww = window
    Hp, Wp = H + pad[0] + pad[1], W + pad[2] + pad[3]
    # rolled padded coordinate r holds padded coordinate (r + shift) % Hp, i.e. original coordinate that - pad_before
    ys = ((torch.arange(Hp) + shift[0]) % Hp - pad[0]).clamp(0, H - 1)
    xs = ((torch.arange(Wp) + shift[1]) % Wp - pad[2]).clamp(0, W - 1)
    tok = (ys[:, None] * W + xs[None, :]).view(Hp // wh, wh, Wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    windows, n = tok.shape
    real_y = ((torch.arange(Hp) + shift[0]) % Hp - pad[0])
    real_x = ((torch.arange(Wp) + shift[1]) % Wp - pad[2])
    real = ((real_y >= 0) & (real_y < H))[:, None] & ((real_x >= 0) & (real_x < W))[None, :]
    real = real.view(Hp // wh, wh, Wp // ww, ww).permute(0, 2, 1, 3).reshape(-1)  # [windows * N]
    slot_tok = tok.reshape(-1)[real]  # token held by each real slot
    slot_w = torch.arange(windows).repeat_interleave(n)[real]
    slot_n = torch.arange(n).repeat(windows)[real]
    hd = torch.arange(heads)
    inverse = torch.empty(H * W * heads, dtype=torch.long)
    inverse[(slot_tok[:, None] * heads + hd).reshape(-1)] = (
        (slot_w[:, None] * heads + hd) * n + slot_n[:, None]).reshape(-1)
    masked = None
    if any(shift) or (mask_pad and any(pad)):
        masked = window_logit_mask(H, W, list(window), list(shift), list(pad), mask_pad).to(device)
    return _Plan(
        windows=windows, n=n, slot=(tok[:, None, :] * heads + hd[None, :, None]).reshape(-1).to(device),
        inverse=inverse.to(device), masked=masked,
        real=real.view(windows, 1, n, 1).float().to(device) if any(pad) else None,
        rel=relative_position_index(wh, ww).to(device))


def _additive(plan: _Plan, rpb: Optional[Tensor], heads: int, acc: torch.dtype, device) -> Optional[Tensor]:
    """`[windows * heads, N, N]` bias + masks (-inf), or None when there is neither."""
    n = plan.n
    if rpb is None and plan.masked is None:
        return None
    add = torch.zeros(plan.windows, heads, n, n, dtype=acc, device=device)
    if rpb is not None:
        add += rpb.to(acc)[plan.rel.view(-1)].view(n, n, heads).permute(2, 0, 1)
    if plan.masked is not None:
        add.masked_fill_(plan.masked[:, None], float('-inf'))
    return add.view(-1, n, n)


def _gather(x: Tensor, plan: _Plan, acc: torch.dtype) -> Tensor:
    """`[b, H, W, heads, c]` -> `[b, windows * heads, N, c]` in the compute dtype: one `index_select` of whole
    c-vectors (a strided view, e.g. of a qkv projection, is made contiguous first: index_select on contiguous rows is
    ~20x faster than advanced indexing of the view)."""
    b, c = x.shape[0], x.shape[-1]
    return x.reshape(b, -1, c).index_select(1, plan.slot).view(b, -1, plan.n, c).to(acc)


def _scatter(t: Tensor, plan: _Plan, shape: Tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """`[b, windows * heads, N(, c)]` -> heads-last `shape` (the real tokens only)."""
    rows = t.reshape(t.shape[0], -1, t.shape[-1]) if t.dim() == 4 else t.reshape(t.shape[0], -1)
    return rows.index_select(1, plan.inverse).to(dtype).view(shape)


def _scatter_into(dst: Tensor, t: Tensor, plan: _Plan) -> None:
    """`_scatter` writing into the contiguous heads-last slice `dst` (no intermediate when the dtypes agree)."""
    rows = t.reshape(dst.shape[0], -1, t.shape[-1])
    out = dst.view(dst.shape[0], -1, dst.shape[-1])
    if rows.dtype == dst.dtype:
        torch.index_select(rows, 1, plan.inverse, out=out)
    else:
        out.copy_(rows.index_select(1, plan.inverse))


def _window_view(x: Tensor, window: List[int]) -> Optional[Tensor]:
    """`[B, H, W, heads, c]` as a `[B * windows, heads, N, c]` view (no copy), or None where the window tokens do not
    form one strided sequence: whole-width row bands (CSWin's horizontal stripes, full attention), single columns
    (vertical stripes of width 1) and single rows, on any input whose B, H, W strides nest (e.g. qkv views)."""
    B, H, W, heads, c = x.shape
    wh, ww = window
    t = x.view(B, H // wh, wh, W // ww, ww, heads, c).permute(0, 1, 3, 5, 2, 4, 6)
    try:
        return t.view(B * (H // wh) * (W // ww), heads, wh * ww, c)
    except RuntimeError:
        return None


def _window_unview(t: Tensor, shape: Tuple[int, ...], window: List[int], dtype: torch.dtype) -> Tensor:
    """Inverse of `_window_view` for `[B * windows, heads, N(, c)]`, into a contiguous heads-last tensor."""
    B, H, W, heads = shape[:4]
    wh, ww = window
    t = t.reshape(B, H // wh, W // ww, heads, wh, ww, -1).permute(0, 1, 4, 2, 5, 3, 6)
    return t.to(dtype).reshape(shape)


def _fast(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], window: List[int], shift: List[int],
          pad: List[int]) -> Optional[List[Tensor]]:
    """Window views of q, k, v when the call needs no gather (no shift, no padding, d == dv), else None."""
    if any(shift) or any(pad) or q.shape[-1] != v.shape[-1]:
        return None
    views = [_window_view(t, window) for t in (q, k, v)]
    return None if any(t is None for t in views) else views


def _zero_pad(tensors, pad: List[int]):
    return [F.pad(t, (0, 0, 0, 0, pad[2], pad[3], pad[0], pad[1])) for t in tensors]


def _crop(t: Tensor, pad: List[int], H: int, W: int) -> Tensor:
    return t[:, pad[0]:pad[0] + H, pad[2]:pad[2] + W]


def _setup(q: Tensor, window: List[int], shift: List[int], pad: List[int], mask_pad: bool) -> _Plan:
    _, H, W, heads, _ = q.shape
    return _plan(H, W, heads, tuple(window), tuple(shift), tuple(pad), mask_pad, q.device)


def forward(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], window: List[int], shift: List[int],
            pad: List[int], mask_pad: bool, scale: float) -> Tuple[Tensor, Tensor]:
    """Output `[B, H, W, heads, dv]` and fp32 log-sum-exp `[B, H, W, heads]`."""
    B, H, W, heads, _ = q.shape
    if not mask_pad and any(pad):
        # zeros mode: the padded tokens are real zero tokens (keys with logit = bias, values 0); crop afterwards
        out, lse = forward(*_zero_pad((q, k, v), pad), rpb, window, shift, [0, 0, 0, 0], True, scale)
        return _crop(out, pad, H, W).contiguous(), _crop(lse, pad, H, W).contiguous()
    acc = torch.promote_types(q.dtype, torch.float32)
    views = _fast(q, k, v, rpb, window, shift, pad)
    if views is not None:
        # no partition copy: the fused kernel reads the windows through strides; the bias broadcasts over windows
        n = window[0] * window[1]
        bias = None
        if rpb is not None:
            rel = relative_position_index(window[0], window[1], q.device)
            bias = rpb.to(acc)[rel.view(-1)].view(n, n, heads).permute(2, 0, 1)[None]
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            *(t.to(acc) for t in views), 0.0, False, attn_mask=bias, scale=scale)
        return (_window_unview(out, tuple(v.shape), window, v.dtype),
                _window_unview(lse[..., None], (B, H, W, heads), window, torch.float32))
    plan = _setup(q, window, shift, pad, mask_pad)
    add = _additive(plan, rpb, heads, acc, q.device)
    qt, kt, vt = (_gather(t, plan, acc) for t in (q, k, v))
    if q.shape[-1] == v.shape[-1]:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            qt, kt, vt, 0.0, False, attn_mask=None if add is None else add[None], scale=scale)
    else:  # the fused kernel needs d == dv
        out, lse = _explicit_forward(qt, kt, vt, add, scale)
    lse = _scatter(lse, plan, (B, H, W, heads), torch.float32)
    return _scatter(out, plan, (B, H, W, heads, v.shape[-1]), v.dtype), lse


def _scores(add: Optional[Tensor], c: int, qt: Tensor, kt: Tensor, scale: float) -> Tensor:
    """`add + scale * q @ k^T` for `[c * rows, N, d]` tiles: one batched GEMM that accumulates onto the bias."""
    if add is None:
        return torch.bmm(qt, kt.transpose(1, 2)).mul_(scale)
    bias = add if c == 1 else add.expand(c, *add.shape).reshape(-1, *add.shape[1:])
    return torch.baddbmm(bias, qt, kt.transpose(1, 2), alpha=scale)


def _chunk(batch: int, rows: int, n: int) -> int:
    """Images per chunk: as few chunks as the score budget allows, of balanced size."""
    step = max(1, _CHUNK_BYTES // (4 * rows * n * n))
    return -(-batch // -(-batch // step))


def _explicit_forward(qt: Tensor, kt: Tensor, vt: Tensor, add: Optional[Tensor], scale: float) -> Tuple[Tensor, Tensor]:
    """Chunked batched-GEMM attention on `[B, rows, N, c]` query tiles and `[B, rows, Nk, c]` key/value tiles: output
    and log-sum-exp `[B, rows, N]`."""
    B, rows, n, _ = qt.shape
    nk = kt.shape[2]
    out = qt.new_empty(B, rows, n, vt.shape[-1])
    lse = qt.new_empty(B, rows, n, dtype=torch.float32)
    step = _chunk(B, rows, max(n, nk))
    for b in range(0, B, step):
        sl = slice(b, b + step)
        c = qt[sl].shape[0]
        s = _scores(add, c, qt[sl].reshape(c * rows, n, -1), kt[sl].reshape(c * rows, nk, -1), scale)
        p = torch.softmax(s, -1)
        # log-sum-exp = max(s) + log(sum(exp(s - max(s)))), and the largest probability is 1 / that sum
        lse[sl] = s.amax(-1).sub_(p.amax(-1).log_()).view(c, rows, n)
        out[sl] = torch.bmm(p, vt[sl].reshape(c * rows, nk, -1)).view(c, rows, n, -1)
    return out, lse


def backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], out: Tensor, lse: Tensor,
             window: List[int], shift: List[int], pad: List[int], mask_pad: bool,
             scale: float) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients of q, k, v and rpb (None without rpb); recomputes the probabilities (out and lse are not needed)."""
    B, H, W, heads, d = q.shape
    dv_dim = v.shape[-1]
    if not mask_pad and any(pad):
        # padding queries (q = 0, no output gradient) get a zero out and lse: finite, and they add nothing
        dout, q, k, v, out = _zero_pad((dout, q, k, v, out), pad)
        lse = _zero_pad((lse[..., None],), pad)[0][..., 0]
        grads = backward(dout, q, k, v, rpb, out, lse, window, shift, [0, 0, 0, 0], True, scale)
        return tuple(_crop(g, pad, H, W).contiguous() for g in grads[:3]) + (grads[3],)
    acc = torch.promote_types(q.dtype, torch.float32)
    views = _fast(q, k, v, rpb, window, shift, pad) if rpb is None else None
    if views is not None:
        # no bias gradient wanted: the fused kernel's backward, on the same strided window views
        dov, outv, lsev = (_window_view(t.contiguous(), window) for t in (dout, out, lse[..., None]))
        grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dov.to(acc), *(t.to(acc) for t in views), outv.to(acc), lsev[..., 0], 0.0, False, scale=scale)
        return tuple(_window_unview(g, tuple(t.shape), window, t.dtype) for g, t in zip(grads, (q, k, v))) + (None,)
    plan = _setup(q, window, shift, pad, mask_pad)
    n = plan.n
    add = _additive(plan, rpb, heads, acc, q.device)
    if rpb is None and d == dv_dim and plan.real is None:
        tiles = [_gather(t, plan, acc) for t in (dout, q, k, v, out)]
        lse_t = _gather(lse[..., None], plan, torch.float32)[..., 0]
        grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            *tiles, lse_t, 0.0, False, attn_mask=None if add is None else add[None], scale=scale)
        return tuple(_scatter(g, plan, tuple(t.shape), t.dtype) for g, t in zip(grads, (q, k, v))) + (None,)
    rows = plan.windows * heads
    dq = torch.empty(B, H, W, heads, d, dtype=q.dtype, device=q.device)
    dk = torch.empty(B, H, W, heads, d, dtype=k.dtype, device=q.device)
    dv = torch.empty(B, H, W, heads, dv_dim, dtype=v.dtype, device=q.device)
    dadd = torch.zeros(rows, n, n, dtype=acc, device=q.device) if rpb is not None else None
    step = _chunk(B, rows, n)
    for b in range(0, B, step):
        sl = slice(b, b + step)
        c = q[sl].shape[0]
        qt, kt, vt, dot = (_gather(t[sl], plan, acc) for t in (q, k, v, dout))
        if plan.real is not None:
            # padded query slots hold copies of real tokens: a zero output gradient keeps them out of dK, dV, d_rpb
            dot = dot.view(c, plan.windows, heads, n, -1).mul_(plan.real).view(dot.shape)
        qt, kt, vt, dot = (t.view(c * rows, n, -1) for t in (qt, kt, vt, dot))
        s = _scores(add, c, qt, kt, scale)
        p = torch.softmax(s, -1)  # [c * rows, N, N]
        ds = torch.ops.aten._softmax_backward_data(torch.bmm(dot, vt.transpose(1, 2)), p, -1, acc)
        _scatter_into(dv[sl], torch.bmm(p.transpose(1, 2), dot), plan)
        _scatter_into(dk[sl], torch.bmm(ds.transpose(1, 2), qt).mul_(scale), plan)
        _scatter_into(dq[sl], torch.bmm(ds, kt).mul_(scale), plan)
        if dadd is not None:
            dadd += ds.view(c, rows, n, n).sum(0)
    drpb = None
    if dadd is not None:
        per_head = dadd.view(plan.windows, heads, n, n).sum(0).permute(1, 2, 0).reshape(n * n, heads)
        drpb = torch.zeros(rpb.shape, dtype=acc, device=q.device).index_add_(0, plan.rel.view(-1), per_head)
        drpb = drpb.to(rpb.dtype)
    return dq, dk, dv, drpb


# --- context mode --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ContextPlan:
    windows: int
    slot: Tensor  # [windows * heads * Nk] row of the flattened key map (+ one zero row) read by each context slot
    mask: Optional[Tensor]  # [windows * heads, 1, Nk] additive -inf outside the map ('mask' border), else None


@functools.lru_cache(maxsize=64)
def _context_plan(H: int, W: int, Hk: int, Wk: int, heads: int, window: Tuple[int, ...], context: Tuple[int, ...],
                  stride: Tuple[int, ...], offset: Tuple[int, ...], dilation: Tuple[int, ...], border: str,
                  device: torch.device) -> _ContextPlan:
    tok, inside = context_slots(H, W, Hk, Wk, list(window), list(context), list(stride), list(offset),
                                list(dilation), border)
    hd = torch.arange(heads)
    slot = tok[:, None, :] * heads + hd[None, :, None]  # [windows, heads, Nk] of heads-last rows
    slot = torch.where(tok[:, None, :] < 0, torch.full_like(slot, Hk * Wk * heads), slot).reshape(-1)  # zero row
    mask = None
    if border == 'mask' and not bool(inside.all()):
        add = torch.zeros(inside.shape).masked_fill_(~inside, float('-inf'))
        mask = add[:, None, None, :].expand(-1, heads, 1, -1).reshape(-1, 1, inside.shape[1]).to(device)
    return _ContextPlan(windows=inside.shape[0], slot=slot.to(device), mask=mask)


def _context_setup(q: Tensor, k: Tensor, window, context, stride, offset, dilation, border) -> _ContextPlan:
    _, H, W, heads, _ = q.shape
    return _context_plan(H, W, k.shape[1], k.shape[2], heads, tuple(window), tuple(context), tuple(stride),
                         tuple(offset), tuple(dilation), border, q.device)


def _context_gather(t: Tensor, plan: _ContextPlan, acc: torch.dtype) -> Tensor:
    """Key map `[B, Hk, Wk, heads, c]` -> `[B, windows * heads, Nk, c]` (zero row for outside keys)."""
    B, c = t.shape[0], t.shape[-1]
    rows = torch.cat([t.reshape(B, -1, c), t.new_zeros(B, 1, c)], 1)
    return rows.index_select(1, plan.slot).view(B, plan.windows * t.shape[3], -1, c).to(acc)


def _query_part(t: Tensor, window: List[int], acc: torch.dtype) -> Tensor:
    """`[B, H, W, heads, c]` -> `[B, windows * heads, wh * ww, c]`."""
    B, H, W, heads, c = t.shape
    wh, ww = window
    t = t.reshape(B, H // wh, wh, W // ww, ww, heads, c).permute(0, 1, 3, 5, 2, 4, 6)
    return t.reshape(B, -1, wh * ww, c).to(acc)


def _query_unpart(t: Tensor, shape: Tuple[int, ...], window: List[int], dtype: torch.dtype) -> Tensor:
    B, H, W, heads = shape[:4]
    wh, ww = window
    t = t.reshape(B, H // wh, W // ww, heads, wh, ww, -1).permute(0, 1, 4, 2, 5, 3, 6)
    return t.to(dtype).reshape(shape)


def _context_scatter(g: Tensor, plan: _ContextPlan, k: Tensor) -> Tensor:
    """Context gradients `[B, windows * heads, Nk, c]` summed back onto the key map `[B, Hk, Wk, heads, c]`."""
    B, Hk, Wk, heads, c = k.shape
    rows = torch.zeros(B, Hk * Wk * heads + 1, c, dtype=g.dtype, device=g.device)
    rows.index_add_(1, plan.slot, g.reshape(B, -1, c))
    return rows[:, :-1].to(k.dtype).view(k.shape)


def context_forward(q: Tensor, k: Tensor, v: Tensor, window: List[int], context: List[int], stride: List[int],
                    offset: List[int], dilation: List[int], border: str, scale: float) -> Tuple[Tensor, Tensor]:
    """Output `[B, H, W, heads, dv]` and fp32 log-sum-exp `[B, H, W, heads]`."""
    B, H, W, heads, _ = q.shape
    acc = torch.promote_types(q.dtype, torch.float32)
    plan = _context_setup(q, k, window, context, stride, offset, dilation, border)
    qt = _query_part(q, window, acc)
    kt, vt = (_context_gather(t, plan, acc) for t in (k, v))
    if q.shape[-1] == v.shape[-1]:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            qt, kt, vt, 0.0, False, attn_mask=None if plan.mask is None else plan.mask[None].to(acc), scale=scale)
    else:  # the fused kernel needs d == dv
        out, lse = _explicit_forward(qt, kt, vt, None if plan.mask is None else plan.mask.to(acc), scale)
    return (_query_unpart(out, (B, H, W, heads, v.shape[-1]), window, v.dtype),
            _query_unpart(lse[..., None], (B, H, W, heads), window, torch.float32))


def context_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, window: List[int],
                     context: List[int], stride: List[int], offset: List[int], dilation: List[int], border: str,
                     scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of q, k, v (recomputes the probabilities where the fused kernel cannot run)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    plan = _context_setup(q, k, window, context, stride, offset, dilation, border)
    qt, dot = (_query_part(t, window, acc) for t in (q, dout))
    kt, vt = (_context_gather(t, plan, acc) for t in (k, v))
    if q.shape[-1] == v.shape[-1]:
        ot = _query_part(out, window, acc)
        lt = _query_part(lse[..., None], window, torch.float32)[..., 0]
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dot, qt, kt, vt, ot, lt, 0.0, False, attn_mask=None if plan.mask is None else plan.mask[None].to(acc),
            scale=scale)
    else:
        B, rows, n, _ = qt.shape
        flat = lambda t: t.reshape(B * rows, t.shape[2], -1)  # noqa: E731
        s = _scores(None if plan.mask is None else plan.mask.to(acc), B, flat(qt), flat(kt), scale)
        p = torch.softmax(s, -1)
        ds = torch.ops.aten._softmax_backward_data(torch.bmm(flat(dot), flat(vt).transpose(1, 2)), p, -1, acc)
        dv = torch.bmm(p.transpose(1, 2), flat(dot)).view(vt.shape)
        dk = torch.bmm(ds.transpose(1, 2), flat(qt)).mul_(scale).view(kt.shape)
        dq = torch.bmm(ds, flat(kt)).mul_(scale).view(qt.shape)
    return (_query_unpart(dq, tuple(q.shape), window, q.dtype), _context_scatter(dk, plan, k),
            _context_scatter(dv, plan, v))
