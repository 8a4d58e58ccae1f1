"""Neighborhood attention module (NAT / DiNAT / DiNAT_s), on `hiervit.kernels.neighborhood`.

Parameter names (`qkv`, `rpb`, `proj`) and behaviour follow NATTEN's `NeighborhoodAttention2D` up to v0.14.6, the
version the released NAT/DiNAT checkpoints were trained with, so those state dicts load unchanged.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from hiervit.kernels.neighborhood import neighborhood_attention_op

__all__ = ['NeighborhoodAttention2d']


class NeighborhoodAttention2d(nn.Module):
    """Multi-head 2-D (dilated) neighborhood attention with a relative positional bias, channels-last.

    Each query attends to the `kernel_size x kernel_size` keys around it on the stride-`dilation` sub-grid it lies on
    (windows are shifted inwards at the borders). Inputs smaller than `kernel_size * dilation` on an axis are
    zero-padded at the bottom/right *before* the qkv projection and cropped afterwards, as NATTEN <= 0.14 did: the
    padded tokens carry the qkv bias and are attended to, which is what the released checkpoints saw at small inputs.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            kernel_size: int = 7,
            dilation: int = 1,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            proj_drop: float = 0.,
            backend: Optional[str] = None,
    ):
        """
        Args:
            dim: Channels in and out.
            num_heads: Attention heads; must divide `dim`.
            kernel_size: Odd neighbourhood size per axis.
            dilation: Spacing of the neighbours (1 = plain NA, >1 = DiNA).
            qkv_bias: Bias in the qkv projection.
            qk_scale: Logit scale; head_dim ** -0.5 when None.
            proj_drop: Dropout after the output projection.
            backend: Force a backend of the neighborhood op (None/'auto': the op chooses, inside itself).
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'num_heads={num_heads} must divide dim={dim}.')
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be a positive odd integer, got {kernel_size}.')
        if dilation < 1:
            raise ValueError(f'dilation must be >= 1, got {dilation}.')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.backend: str = backend or 'auto'

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.rpb, std=.02, a=-2., b=2.)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        window = self.kernel_size * self.dilation
        pad_b, pad_r = max(0, window - H), max(0, window - W)
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        # [B, Hp, Wp, 3C] -> 3 x [B, Hp, Wp, heads, head_dim] (heads-last, the op's layout: no permute needed)
        q, k, v = self.qkv(x).reshape(B, Hp, Wp, 3, self.num_heads, self.head_dim).unbind(3)
        x = neighborhood_attention_op(
            q, k, v, [self.kernel_size, self.kernel_size], [self.dilation, self.dilation], self.rpb, self.scale,
            self.backend)
        x = x.reshape(B, Hp, Wp, C)
        if pad_b or pad_r:
            # Only slice when padded: a no-op slice is still a view, and a view saved for the backward of `proj`
            # trips Inductor's stride ordering under dynamic shapes.
            x = x[:, :H, :W]
        x = self.proj(x)
        x = self.proj_drop(x)
        return x

    def extra_repr(self) -> str:
        return f'num_heads={self.num_heads}, kernel_size={self.kernel_size}, dilation={self.dilation}'
