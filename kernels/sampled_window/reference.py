"""Reference sampled-window attention: build the normalised sampling grid, `F.grid_sample` K and V at it, then window
attention on the default windows, exactly as the definition in the package docstring reads. The oracle for the fast
backends; it materialises the sampled K and V (`[B, H, W, heads, d]` each) and the `[N, N]` scores of every window.

Computed in fp32 (fp64 for fp64 inputs, so gradcheck sees exact gradients). The backward is the window reference's
backward followed by grid_sample's own backward (`aten.grid_sampler_2d_backward`) and the chain rule of the grid.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..window import reference as window_reference

__all__ = ['base_coords', 'sampling_grid', 'forward', 'backward']

_NO_SHIFT, _NO_PAD = [0, 0], [0, 0, 0, 0]


def base_coords(length: int, window: int, dtype: torch.dtype, device: Optional[torch.device] = None
                ) -> Tuple[Tensor, Tensor]:
    """Window centres `[length // window]` and centred in-window base coordinates `[window]` of one axis, in
    normalised coordinates (align_corners=True): centre = mean of `linspace(-1, 1, length)` over the window,
    base = `(2 i - (window - 1)) / (length - 1)`."""
    ref = torch.linspace(-1, 1, length, dtype=dtype, device=device)
    centres = ref.view(length // window, window).mean(-1)
    base = torch.arange(window, dtype=dtype, device=device) * (2 / (length - 1))
    return centres, base - base.mean()


def sampling_grid(offsets: Tensor, scales: Tensor, H: int, W: int, window: List[int]) -> Tensor:
    """The grid `[B, heads, H, W, 2]` (x, y) of every sample: centre + base * (1 + scale) + offset / windows."""
    wh, ww = window
    nh, nw = H // wh, W // ww
    dtype, device = offsets.dtype, offsets.device
    cy, by = base_coords(H, wh, dtype, device)
    cx, bx = base_coords(W, ww, dtype, device)
    # Per axis [B, heads, windows_y, wh, windows_x, ww]: the x coordinate varies with (J, i), y with (I, j).
    sx, sy = (scales[..., a][:, :, :, None, :, None] for a in (0, 1))
    ox, oy = (offsets[..., 0] / nw)[:, :, :, None, :, None], (offsets[..., 1] / nh)[:, :, :, None, :, None]
    gx = (cx[:, None] + bx[None, :]).view(1, 1, 1, 1, nw, ww) + bx.view(1, 1, 1, 1, 1, ww) * sx + ox
    gy = (cy[:, None] + by[None, :]).view(1, 1, nh, wh, 1, 1) + by.view(1, 1, 1, wh, 1, 1) * sy + oy
    gx, gy = torch.broadcast_tensors(gx, gy)
    return torch.stack([gx, gy], -1).reshape(offsets.shape[0], offsets.shape[1], H, W, 2)


def _nchw(t: Tensor) -> Tensor:
    """`[B, H, W, heads, d]` -> `[B * heads, d, H, W]`, grid_sample's layout."""
    B, H, W, heads, d = t.shape
    return t.permute(0, 3, 4, 1, 2).reshape(B * heads, d, H, W)


def _heads_last(t: Tensor, B: int) -> Tensor:
    """Inverse of `_nchw`."""
    BH, d, H, W = t.shape
    return t.view(B, BH // B, d, H, W).permute(0, 3, 4, 1, 2)


def _sample(x: Tensor, grid: Tensor) -> Tensor:
    """Bilinear samples `[B, H, W, heads, d]` of x `[B, H, W, heads, d]` at grid `[B, heads, H, W, 2]`."""
    B, H, W, heads, _ = x.shape
    out = F.grid_sample(_nchw(x), grid.reshape(B * heads, H, W, 2), mode='bilinear', padding_mode='zeros',
                        align_corners=True)
    return _heads_last(out, B)


def forward(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, scales: Tensor, rpb: Optional[Tensor],
            window: List[int], scale: float) -> Tuple[Tensor, Tensor]:
    """Output `[B, H, W, heads, d]` (dtype of v) and fp32 log-sum-exp `[B, H, W, heads]`."""
    acc = torch.promote_types(q.dtype, torch.float32)
    H, W = q.shape[1:3]
    grid = sampling_grid(offsets.to(acc), scales.to(acc), H, W, window)
    ks, vs = _sample(k.to(acc), grid), _sample(v.to(acc), grid)
    out, lse = window_reference.forward(q.to(acc), ks, vs, None if rpb is None else rpb.to(acc), window, _NO_SHIFT,
                                        _NO_PAD, True, scale)
    return out.to(v.dtype), lse


def backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, scales: Tensor, rpb: Optional[Tensor],
             out: Tensor, lse: Tensor, window: List[int], scale: float
             ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients of q, k, v, offsets, scales and rpb (None without rpb); recomputes the samples (out, lse unused)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    B, H, W, heads, _ = q.shape
    wh, ww = window
    nh, nw = H // wh, W // ww
    grid = sampling_grid(offsets.to(acc), scales.to(acc), H, W, window)
    ka, va = k.to(acc), v.to(acc)
    ks, vs = _sample(ka, grid), _sample(va, grid)
    dq, dks, dvs, drpb = window_reference.backward(
        dout.to(acc), q.to(acc), ks, vs, None if rpb is None else rpb.to(acc), out, lse, window, _NO_SHIFT, _NO_PAD,
        True, scale)
    flat_grid = grid.reshape(B * heads, H, W, 2)
    grads, dgrid = [], 0
    for ds, x in ((dks, ka), (dvs, va)):
        dx, dg = torch.ops.aten.grid_sampler_2d_backward(
            _nchw(ds), _nchw(x), flat_grid, 0, 0, True, [True, True])  # bilinear, zeros, align_corners
        grads.append(_heads_last(dx, B))
        dgrid = dgrid + dg
    # Chain rule of the grid: d g / d offset = 1 / windows, d g / d scale = the base coordinate of the sample.
    dgrid = dgrid.view(B, heads, nh, wh, nw, ww, 2)
    _, by = base_coords(H, wh, acc, q.device)
    _, bx = base_coords(W, ww, acc, q.device)
    dgx, dgy = dgrid[..., 0], dgrid[..., 1]
    doffsets = torch.stack([dgx.sum((3, 5)) / nw, dgy.sum((3, 5)) / nh], -1)
    dscales = torch.stack([(dgx * bx.view(1, 1, 1, 1, 1, ww)).sum((3, 5)),
                           (dgy * by.view(1, 1, 1, wh, 1, 1)).sum((3, 5))], -1)
    dk, dv = grads
    return (dq.to(q.dtype).contiguous(), dk.to(k.dtype).contiguous(), dv.to(v.dtype).contiguous(),
            doffsets.to(offsets.dtype).contiguous(), dscales.to(scales.dtype).contiguous(),
            None if drpb is None else drpb.to(rpb.dtype))
