"""Swin's (shifted) window self-attention as a token mixer for the layouts, on `hiervit.kernels.window`.

Families that keep some Swin stages next to their own attention (InLine-Swin's `S` stages, FLatten-Swin's, Swin+VSA)
use this module for them. State-dict keys are Swin's: `qkv`, `proj`, `relative_position_bias_table`
(`[(2w - 1)^2, heads]`, Swin's index order); the official `relative_position_index` / `attn_mask` buffers are not
kept (the op builds both), so checkpoint filters drop them.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import register_notrace_function, trunc_normal_

from hiervit.kernels.window import window_attention_op

__all__ = ['SwinWindowAttention', 'swin_window_args']


@register_notrace_function
def swin_window_args(
        H: int, W: int, table: torch.Tensor, window_size: int, shift: bool,
) -> Tuple[List[int], List[int], List[int], torch.Tensor]:
    """Window, shift, padding and bias table of Swin's window rule on an H x W map, per axis: an axis no longer than
    the window is one window without shift, a longer one has windows of `window_size` (shifted by half a window when
    `shift`), padded at the end with masked keys. The bias table (trained for `window_size`) is cropped to its centre
    for smaller windows, which keeps every relative offset's bias. An FX leaf: it decides on sizes."""
    window: List[int] = [min(window_size, H), min(window_size, W)]
    shifts: List[int] = [window[0] // 2 if shift and H > window_size else 0,
                         window[1] // 2 if shift and W > window_size else 0]
    pad: List[int] = [0, -H % window[0], 0, -W % window[1]]
    rpb = table
    if window[0] < window_size or window[1] < window_size:
        w = window_size
        rpb = table.reshape(2 * w - 1, 2 * w - 1, -1)[w - window[0]:w + window[0] - 1, w - window[1]:w + window[1] - 1]
        rpb = rpb.reshape(-1, table.shape[-1])
    return window, shifts, pad, rpb


torch.fx.wrap('swin_window_args')  # a leaf for plain torch.fx.symbolic_trace too


class SwinWindowAttention(nn.Module):
    """Swin W-MSA / SW-MSA with relative position bias, channels-last `[B, H, W, C]` in and out, any H, W."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: int = 7,
            shift: bool = False,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            proj_drop: float = 0.,
            backend: Optional[str] = None,
    ):
        """
        Args:
            dim: Channels in and out.
            num_heads: Attention heads; must divide `dim`.
            window_size: Window side the bias table is trained for (maps smaller than it form one window).
            shift: Shift the windows by half a window (Swin's odd blocks) on axes longer than the window.
            qkv_bias: Bias in the qkv projection.
            qk_scale: Logit scale; head_dim ** -0.5 when None.
            proj_drop: Dropout after the output projection.
            backend: Force a backend of the window op (None: the op's dispatcher chooses).
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'num_heads={num_heads} must divide dim={dim}.')
        if window_size < 1:
            raise ValueError(f'window_size must be >= 1, got {window_size}.')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.window_size = window_size
        self.shift = shift
        self.backend = backend or 'auto'
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, H, W, 3C] -> 3 x [B, H, W, heads, head_dim] (heads-last views, the op's layout)
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(3)
        window, shift, pad, rpb = swin_window_args(
            x.shape[1], x.shape[2], self.relative_position_bias_table, self.window_size, self.shift)
        out = window_attention_op(q, k, v, window, shift, pad, True, rpb, self.scale, self.backend)
        return self.proj_drop(self.proj(out.flatten(3)))

    def extra_repr(self) -> str:
        return f'num_heads={self.num_heads}, window_size={self.window_size}, shift={self.shift}'
