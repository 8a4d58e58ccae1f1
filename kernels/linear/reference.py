"""Reference linear attention: the literal formula in plain torch ops (the oracle every fast backend is tested
against, and the op's decomposition for export / ONNX).

Written as the models' papers write it (`phi(k)^T v` first, then `phi(q)` times it, then the normaliser), with
autograd of the same formula as its backward. The tests check it once more against the quadratic form
`(phi(q) phi(k)^T) v`, so the associativity the fast backends rely on is not taken on trust.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ['attention', 'forward', 'backward', 'resolve']


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # half precision is upcast so that the oracle is as exact as the fp32 accumulation of the fast paths
    return torch.float64 if dtype == torch.float64 else torch.float32


def resolve(normalizer: str, n: int, scale: float) -> Tuple[str, float]:
    """The public normaliser as (mode, alpha) of the unified formula in `attention`: `mean` is `sum` with
    alpha = 1/N, `injective` has alpha = scale/N."""
    if normalizer == 'mean':
        return 'sum', 1.0 / n
    if normalizer == 'injective':
        return 'injective', scale / n
    return normalizer, 1.0


def attention(
        q: Tensor, k: Tensor, v: Tensor, temperature: Optional[Tensor], mode: str, alpha: float, eps: float,
        clamp_min: float,
) -> Tensor:
    """Differentiable literal formula on `[B, H, N, d]` / `[B, H, N, dv]` inputs (see `hiervit.kernels.linear`).

    With `S = k^T v` (`[B, H, d, dv]`), `r = q . sum_N(k)` and `t` the per-head temperature (1 when None):
      none:      t * alpha * q S
      sum:       t * alpha * q S / (alpha * r + eps)
      clamp:     t * alpha * q S / max(r, clamp_min)
      injective: t * alpha * q S + (1 - alpha * r) * mean_N(v)
    """
    s = k.transpose(-1, -2) @ v  # [B, H, d, dv]
    if temperature is not None:
        s = s * temperature.reshape(1, -1, 1, 1)
    num = alpha * (q @ s)
    r = q @ k.sum(-2).unsqueeze(-1)  # [B, H, N, 1]
    if mode == 'none':
        return num
    if mode == 'sum':
        return num / (alpha * r + eps)
    if mode == 'clamp':
        return num / torch.clamp(r, min=clamp_min)
    if mode == 'injective':
        return num + (1 - alpha * r) * v.mean(-2, keepdim=True)
    raise ValueError(f'unknown mode {mode!r}')


def forward(
        q: Tensor, k: Tensor, v: Tensor, temperature: Optional[Tensor], normalizer: str, eps: float,
        clamp_min: float, scale: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Output `[B, H, N, dv]` and the statistics the fast backends save: `k^T v` `[B, H, d, dv]`, `sum_N(k)`
    `[B, H, d]` and `r = q . sum_N(k)` `[B, H, N]` (fp32; fp64 for fp64 inputs)."""
    ct = _compute_dtype(q.dtype)
    qc, kc, vc = q.to(ct), k.to(ct), v.to(ct)
    t = None if temperature is None else temperature.to(ct)
    mode, alpha = resolve(normalizer, k.shape[-2], scale)
    out = attention(qc, kc, vc, t, mode, alpha, eps, clamp_min)
    ksum = kc.sum(-2)
    return out.to(q.dtype), kc.transpose(-1, -2) @ vc, ksum, (qc @ ksum.unsqueeze(-1)).squeeze(-1)


def backward(
        dout: Tensor, q: Tensor, k: Tensor, v: Tensor, temperature: Optional[Tensor], out: Tensor, kv: Tensor,
        ksum: Tensor, r: Tensor, normalizer: str, eps: float, clamp_min: float, scale: float,
) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients of q, k, v and the temperature (None without one), by autograd of `attention` (the saved outputs
    are not used)."""
    ct = _compute_dtype(q.dtype)
    mode, alpha = resolve(normalizer, k.shape[-2], scale)
    leaves = [x.to(ct) for x in (q, k, v)] + ([] if temperature is None else [temperature.to(ct)])

    def fn(*xs: Tensor) -> Tensor:
        return attention(xs[0], xs[1], xs[2], xs[3] if len(xs) > 3 else None, mode, alpha, eps, clamp_min)

    # torch.func.vjp: the op's kernels run below the autograd dispatch key, where torch.autograd.grad records nothing
    _, vjp = torch.func.vjp(fn, *leaves)
    grads = vjp(dout.to(ct))
    dq, dk, dv = (g.to(x.dtype) for g, x in zip(grads, (q, k, v)))
    dt = grads[3].to(temperature.dtype) if temperature is not None else None
    return dq, dk, dv, dt
