"""Fast CPU linear attention: per chunk of (batch, head) pairs, two batched GEMMs forward and four backward.

With `S = k^T v` (`[d, dv]`), `z = sum_N(k)`, `r = q z` and `M` the temperature-scaled state, every normaliser is
`out = (q M) / den(r) + c`: `den` is 1, `alpha r + eps` or `max(r, clamp_min)`, and for `injective`
`M = t alpha S - alpha z mean(v)^T`, `c = mean(v)` (so its `(1 - alpha r) mean(v)` term costs no extra pass).
The row sums ride along as one more GEMM column: `[q M | r] = q [M | z]`. Nothing `[N, N]` is formed; the saved
state is `S`, `z` and `r` (`O(d * dv + N)` per (batch, head)).

The backward is written by hand (no autograd graph). For the row-normalised modes, with `g = 1 / den`:
`d den = -g rowsum(dO * out)` (the saved output, so no GEMM is redone), `dr = den'(r) d den`,
`W = [g dO | dr]`, then `dq = W [M | z]^T` and `[dM | dz] = q^T W` (one GEMM each), `dS = t alpha dM`,
`dk = v dS^T + 1 dz^T`, `dv = k dS`. Work is chunked over (batch, head) pairs so that each chunk's q, k, v and
temporaries stay cache-resident, and the temporaries live in one workspace per call (fresh multi-MiB allocations
page-fault on every touch).
"""
from typing import Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor

from .reference import resolve

__all__ = ['forward', 'backward']

# Bytes of q, k, v, output and temporaries per chunk and thread: well inside this machine's shared L3, large enough
# that the per-op overhead of small heads (stage 4: N = 49) vanishes.
_CHUNK_BYTES = 4 * 2 ** 20

Block = Tuple[int, int, int, int]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # bf16/fp16 matmuls on CPU are slow and inexact; accumulate in fp32 (fp64 stays fp64 for gradcheck)
    return torch.float64 if dtype == torch.float64 else torch.float32


def _plan(B: int, H: int, per_head_bytes: int) -> Tuple[int, Iterator[Block]]:
    """Largest chunk (in (batch, head) items) and the (b0, b1, h0, h1) blocks: whole batch elements (all heads)
    when a chunk holds at least one, else head ranges inside one batch element."""
    c = max(1, _CHUNK_BYTES * torch.get_num_threads() // per_head_bytes)
    if c >= H:
        nb = min(B, c // H)
        return nb * H, ((b0, min(B, b0 + nb), 0, H) for b0 in range(0, B, nb))
    return c, ((b, b + 1, h0, min(H, h0 + c)) for b in range(B) for h0 in range(0, H, c))


def _take(x: Tensor, blk: Block, ct: torch.dtype) -> Tensor:
    """Chunk `[c, N, d]` of a `[B, H, N, d]` tensor in the compute dtype (a view where the layout allows)."""
    b0, b1, h0, h1 = blk
    return x[b0:b1, h0:h1].reshape(-1, *x.shape[2:]).to(ct)


def _dst(x: Tensor, blk: Block) -> Tensor:
    """The chunk of a contiguous result tensor, as a `[c, ...]` view."""
    b0, b1, h0, h1 = blk
    return x[b0:b1, h0:h1].view(-1, *x.shape[2:])


def _into(dst: Tensor, blk: Block, ct: torch.dtype, buf: Tensor) -> Tensor:
    """Where a chunk result is computed: the result's own memory in the compute dtype, else the scratch `buf`."""
    view = _dst(dst, blk)
    return view if dst.dtype == ct else buf[:view.shape[0]]


def _store(dst: Tensor, blk: Block, src: Tensor) -> None:
    view = _dst(dst, blk)
    if view.data_ptr() != src.data_ptr():
        view.copy_(src)


def _temp(temperature: Optional[Tensor], blk: Block, ct: torch.dtype) -> Optional[Tensor]:
    """Per-chunk-item temperature `[c]` (heads repeated over the chunk's batch elements)."""
    if temperature is None:
        return None
    b0, b1, h0, h1 = blk
    return temperature.reshape(-1)[h0:h1].to(ct).repeat(b1 - b0)


def _state(s: Tensor, z: Tensor, vmean: Optional[Tensor], t: Optional[Tensor], mode: str, alpha: float,
           out: Tensor) -> Tensor:
    """`[M | z]` into `out` `[c, d, dv + 1]`: `M = t alpha S` (minus `alpha z mean(v)^T` for injective)."""
    dv = s.shape[-1]
    m = out[..., :dv]
    torch.mul(s, alpha if t is None else (t * alpha).view(-1, 1, 1), out=m)
    if mode == 'injective':
        m.sub_(alpha * z.unsqueeze(-1) * vmean.unsqueeze(1))
    out[..., dv].copy_(z)
    return out


def _denominator(r: Tensor, mode: str, alpha: float, eps: float, clamp_min: float) -> Tensor:
    return alpha * r + eps if mode == 'sum' else torch.clamp(r, min=clamp_min)


def _workspace(ct: torch.dtype, c: int, **shapes: Tuple[int, ...]) -> Dict[str, Tensor]:
    return {name: torch.empty(c, *shape, dtype=ct) for name, shape in shapes.items()}


def forward(
        q: Tensor, k: Tensor, v: Tensor, temperature: Optional[Tensor], normalizer: str, eps: float,
        clamp_min: float, scale: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Output `[B, H, N, dv]` and the saved state `k^T v` `[B, H, d, dv]`, `sum_N(k)` `[B, H, d]`, `r` `[B, H, N]`."""
    mode, alpha = resolve(normalizer, k.shape[-2], scale)
    B, H, N, d = q.shape
    dv = v.shape[-1]
    ct = _compute_dtype(q.dtype)
    out = q.new_empty(B, H, N, dv)
    kv = torch.empty(B, H, d, dv, dtype=ct)
    ksum = torch.empty(B, H, d, dtype=ct)
    r = torch.empty(B, H, N, dtype=ct)
    c, blocks = _plan(B, H, 4 * N * (2 * d + 2 * dv + 1))
    w = _workspace(ct, c, ws=(N, dv + 1), mz=(d, dv + 1), out=(N, dv))
    for blk in blocks:
        qc, kc, vc = _take(q, blk, ct), _take(k, blk, ct), _take(v, blk, ct)
        n = qc.shape[0]
        s = torch.bmm(kc.transpose(1, 2), vc, out=_dst(kv, blk))  # [c, d, dv]
        z = torch.sum(kc, 1, out=_dst(ksum, blk))  # [c, d]
        vmean = vc.mean(1) if mode == 'injective' else None
        mz = _state(s, z, vmean, _temp(temperature, blk, ct), mode, alpha, w['mz'][:n])
        ws = torch.bmm(qc, mz, out=w['ws'][:n])  # [c, N, dv + 1] = [q M | r]
        _dst(r, blk).copy_(ws[..., dv])
        o = _into(out, blk, ct, w['out'])
        if mode in ('sum', 'clamp'):
            torch.div(ws[..., :dv], _denominator(ws[..., dv], mode, alpha, eps, clamp_min).unsqueeze(-1), out=o)
        elif mode == 'injective':
            torch.add(ws[..., :dv], vmean.unsqueeze(1), out=o)
        else:
            o.copy_(ws[..., :dv])
        _store(out, blk, o)
    return out, kv, ksum, r


def backward(
        dout: Tensor, q: Tensor, k: Tensor, v: Tensor, temperature: Optional[Tensor], out: Tensor, kv: Tensor,
        ksum: Tensor, r: Tensor, normalizer: str, eps: float, clamp_min: float, scale: float,
) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients of q, k, v and the temperature (shaped as given; None without one)."""
    mode, alpha = resolve(normalizer, k.shape[-2], scale)
    B, H, N, d = q.shape
    dv = v.shape[-1]
    ct = _compute_dtype(q.dtype)
    dq, dk, dvv = (torch.empty(x.shape, dtype=x.dtype) for x in (q, k, v))
    dt = None if temperature is None else torch.zeros(H, dtype=ct)
    rownorm = mode in ('sum', 'clamp')
    c, blocks = _plan(B, H, 4 * N * (3 * d + 3 * dv + 2))
    w = _workspace(ct, c, w=(N, dv + 1), mz=(d, dv + 1), dmz=(d, dv + 1), dq=(N, d), dk=(N, d), dv=(N, dv))
    for blk in blocks:
        b0, b1, h0, h1 = blk
        qc, kc, vc, go = (_take(x, blk, ct) for x in (q, k, v, dout))
        n = qc.shape[0]
        s, z = _take(kv, blk, ct), _take(ksum, blk, ct)
        t = _temp(temperature, blk, ct)
        vmean = vc.mean(1) if mode == 'injective' else None
        mz = _state(s, z, vmean, t, mode, alpha, w['mz'][:n])
        dqc = _into(dq, blk, ct, w['dq'])
        if rownorm:
            den = _denominator(_take(r, blk, ct), mode, alpha, eps, clamp_min)  # [c, N]
            g = den.reciprocal()
            dden = torch.linalg.vecdot(go, _take(out, blk, ct)).mul_(g).neg_()  # d loss / d den = -g dO . out
            wk = w['w'][:n]
            torch.mul(go, g.unsqueeze(-1), out=wk[..., :dv])
            if mode == 'sum':
                torch.mul(dden, alpha, out=wk[..., dv])
            else:
                torch.mul(dden, _take(r, blk, ct) >= clamp_min, out=wk[..., dv])  # clamp passes no gradient below
            torch.bmm(wk, mz.transpose(1, 2), out=dqc)  # g dO M^T + dr z^T
            dmz = torch.bmm(qc.transpose(1, 2), wk, out=w['dmz'][:n])  # [dM | dz]
            dm, dz = dmz[..., :dv], dmz[..., dv]
        else:
            torch.bmm(go, mz[..., :dv].transpose(1, 2), out=dqc)
            dm = torch.bmm(qc.transpose(1, 2), go, out=w['dmz'][:n, :, :dv])
            dz = None
        ds = dm * (alpha if t is None else (t * alpha).view(-1, 1, 1))
        if dt is not None:
            dt[h0:h1] += torch.linalg.vecdot(dm.flatten(1), s.flatten(1)).view(b1 - b0, h1 - h0).sum(0) * alpha
        dvc = torch.bmm(kc, ds, out=_into(dvv, blk, ct, w['dv']))
        if mode == 'injective':
            dz = -alpha * torch.bmm(dm, vmean.unsqueeze(-1)).squeeze(-1)
            dmean = go.sum(1) - alpha * torch.bmm(z.unsqueeze(1), dm).squeeze(1)  # d loss / d mean(v), [c, dv]
            dvc.add_(dmean.unsqueeze(1), alpha=1 / N)
        dkc = torch.bmm(vc, ds.transpose(1, 2), out=_into(dk, blk, ct, w['dk']))
        if dz is not None:
            dkc.add_(dz.unsqueeze(1))
        _store(dq, blk, dqc)
        _store(dk, blk, dkc)
        _store(dvv, blk, dvc)
    if dt is not None:
        dt = dt.to(temperature.dtype).view(temperature.shape)
    return dq, dk, dvv, dt
