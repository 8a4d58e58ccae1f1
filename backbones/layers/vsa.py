"""Varied-size window attention (VSA), the token mixer of ViTAEv2-VSA and Swin+VSA.

    Zhang, Xu, Zhang, Tao, `VSA: Learning Varied-Size Window Attention in Vision Transformers` (ECCV 2022)
    - https://arxiv.org/abs/2204.08446

Queries come from the default, non-overlapping `ws x ws` windows; each head predicts from the window's average token
a scale and an offset of the window it samples its keys and values from (the varied-size window regression, VSR:
AvgPool(ws) -> LeakyReLU -> 1x1 projection, one branch for offsets, one for scales). The sampling itself (bilinear,
`align_corners=True`, zeros outside) and the attention with a Swin relative position bias on the default window are
the op `hiervit.kernels.sampled_window`; this module computes q, k, v, the VSR predictions and the padding.

Written from the paper and the facts of the official code (ViTAE-Transformer/ViTAE-VSA, which carries no license, so
nothing of it is copied here). Facts this module reproduces, because the released weights depend on them:

* the logit scale is `(dim // num_heads) ** -0.5` of the *input* width `dim`, also where the output width differs
  (the reduction cells project `dim` -> `out_dim`);
* q, k, v are projected from the unpadded map and then zero-padded (padding tokens are exact zeros, not the bias);
  the VSR branches pool the zero-padded *input*;
* the predicted offsets are divided by the number of windows of the *unpadded* map per axis (`W // ws` for x and
  `H // ws` for y in the classification code; the detection code swaps the two divisors), not by the padded window
  count the op divides by; the op's inputs are rescaled accordingly (`offset_rule`);
* the VSR branches have PyTorch's default (random) initialisation: the zero initialisation the official code defines
  is never called, and the released weights were trained from the random one.

Padding (`padding`): 'corner' zero-pads bottom/right as the official classification code, 'center' splits the
padding as the official detection backbone. Where the unpadded map is smaller than a window on an axis the official
divisor is 0 (its offsets become infinite); here it is clamped to 1.
"""
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, trunc_normal_

from hiervit.kernels.sampled_window import sampled_window_attention_op

__all__ = ['VSAttention', 'vsa_padding', 'vsa_offset_factors']

_PADDING = ('corner', 'center')
_OFFSET_RULES = ('classification', 'detection')


@register_notrace_function
def vsa_padding(H: int, W: int, window: int, center: bool) -> List[int]:
    """Zero padding `[left, right, top, bottom]` of an `H x W` map to window multiples ('center': split, else all
    bottom/right). An FX leaf: it decides on sizes."""
    ph, pw = -H % window, -W % window
    top, left = (ph // 2, pw // 2) if center else (0, 0)
    return [left, pw - left, top, ph - top]


@register_notrace_function
def vsa_offset_factors(H: int, W: int, window: int, swap_divisors: bool) -> List[float]:
    """`[fx, fy]` turning the official offset divisors (windows of the unpadded map per axis, clamped to >= 1; x and
    y swapped in the detection code) into the op's (windows of the padded map). An FX leaf: it decides on sizes."""
    nh, nw = -(-H // window), -(-W // window)
    div_x, div_y = max(W // window, 1), max(H // window, 1)
    if swap_divisors:
        div_x, div_y = div_y, div_x
    return [nw / div_x, nh / div_y]


# leaves for plain torch.fx.symbolic_trace too (timm's tracer knows them already)
torch.fx.wrap('vsa_padding')
torch.fx.wrap('vsa_offset_factors')


class VSAttention(nn.Module):
    """Varied-size window attention, channels-last `[B, H, W, dim]` in, `[B, H, W, out_dim]` out, any H, W >= 1.

    State-dict keys: `qkv`, `proj` (Linear; the official 1x1 convs squeezed), `sampling_offsets`, `sampling_scales`
    (Linear on the pooled map; the official `sampling_*.2` convs), `relative_position_bias_table`.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            out_dim: Optional[int] = None,
            window_size: int = 7,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            proj_drop: float = 0.,
            padding: str = 'corner',
            offset_rule: str = 'classification',
            backend: Optional[str] = None,
    ):
        """
        Args:
            dim: Input channels (the VSR branches and q, k, v are computed from them).
            num_heads: Attention heads; must divide `out_dim`.
            out_dim: Output channels (q, k, v and projection width); `dim` when None.
            window_size: Default window side ws.
            qkv_bias: Bias in the qkv projection.
            qk_scale: Logit scale; `(dim // num_heads) ** -0.5` (the input width, as the official code) when None.
            proj_drop: Dropout after the output projection.
            padding: 'corner' (bottom/right, the classification code) or 'center' (the detection backbone).
            offset_rule: Official offset divisors of the 'classification' or the 'detection' code (swapped axes).
            backend: Force a backend of the sampled-window op (None: the op's dispatcher chooses).
        """
        super().__init__()
        out_dim = out_dim or dim
        if out_dim % num_heads:
            raise ValueError(f'num_heads={num_heads} must divide out_dim={out_dim}.')
        if window_size < 1:
            raise ValueError(f'window_size must be >= 1, got {window_size}.')
        if padding not in _PADDING:
            raise ValueError(f'padding must be one of {_PADDING}, got {padding!r}.')
        if offset_rule not in _OFFSET_RULES:
            raise ValueError(f'offset_rule must be one of {_OFFSET_RULES}, got {offset_rule!r}.')
        self.dim = dim
        self.out_dim = out_dim
        self.num_heads = num_heads
        self.head_dim = out_dim // num_heads
        self.window_size = window_size
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.center = padding == 'center'
        self.swap_divisors = offset_rule == 'detection'
        self.backend = backend or 'auto'
        self.qkv = nn.Linear(dim, 3 * out_dim, bias=qkv_bias)
        self.sampling_offsets = nn.Linear(dim, 2 * num_heads)
        self.sampling_scales = nn.Linear(dim, 2 * num_heads)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.proj = nn.Linear(out_dim, out_dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=.02)

    def reset_vsr_parameters(self) -> None:
        """PyTorch's default initialisation of the VSR branches (that of the official 1x1 convs), for models whose
        init pass re-initialises every Linear."""
        self.sampling_offsets.reset_parameters()
        self.sampling_scales.reset_parameters()

    def _per_head(self, y: torch.Tensor) -> torch.Tensor:
        # [B, nh, nw, 2 * heads] -> [B, heads, nh, nw, 2]; the official channel order is (head, axis), axis (x, y)
        return y.unflatten(-1, (self.num_heads, 2)).permute(0, 3, 1, 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        ws = self.window_size
        pad = vsa_padding(H, W, ws, self.center)
        factors = vsa_offset_factors(H, W, ws, self.swap_divisors)
        x_pad = F.pad(x, [0, 0] + pad)
        pooled = F.avg_pool2d(x_pad.permute(0, 3, 1, 2), ws, ws).permute(0, 2, 3, 1)  # [B, nh, nw, dim]
        pooled = F.leaky_relu(pooled)
        offsets = self._per_head(self.sampling_offsets(pooled)) * torch.tensor(factors, dtype=x.dtype, device=x.device)
        scales = self._per_head(self.sampling_scales(pooled))

        # [B, H, W, 3 * out] -> 3 x [B, Hp, Wp, heads, head_dim] (zero padding after the projection, as official)
        qkv = F.pad(self.qkv(x), [0, 0] + pad).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(3)
        out = sampled_window_attention_op(
            qkv[0], qkv[1], qkv[2], offsets, scales, [ws, ws], self.relative_position_bias_table, self.scale,
            self.backend)
        out = out[:, pad[2]:pad[2] + H, pad[0]:pad[0] + W].flatten(3)
        out = self.proj(out)
        return self.proj_drop(out)

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, out_dim={self.out_dim}, num_heads={self.num_heads}, window_size={self.window_size}, '
                f'padding={"center" if self.center else "corner"}')
