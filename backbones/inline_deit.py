""" InLine-DeiT: injective linear attention in the DeiT layout

A timm implementation of
    - `Bridging the Divide: Reconsidering Softmax and Linear Attention` (Han et al., NeurIPS 2024)
      - https://arxiv.org/abs/2412.06590

Model structure from https://github.com/LeapLabTHU/InLine (models/inline_deit.py, cfgs/inline_deit_*.yaml). The
official code has no license (no LICENSE file), and neither do its weights: hiervit re-implements the models from the
paper, using the repository only for facts (key names and shapes, widths, resolutions), and its pretrained_cfgs point
at the released files without redistributing them. The hierarchical InLine models (Swin, CSWin, PVT) are in
`hiervit.backbones.inline`; this family is the plain-ViT layout (`hiervit.backbones.layers.deit`), a module of its own
because its contract is timm's ViT one (single-scale tokens) rather than the pyramids'.

The mixer (`InLineTokenAttention`): qkv projection and the `injective` normaliser of `hiervit.kernels.linear` over
all tokens, class token included (identity feature map, scale head_dim ** -0.5, N = 1 + H * W, as released), plus the
local residual: a 3x3 depthwise kernel per sample and channel, predicted from the mean of all tokens by a grouped
1x1 conv, GELU, grouped 1x1 conv (`residual.{0,2}`, groups = heads), applied to the patch tokens' V on the H x W grid
(zero padding at the border) and added to the patch tokens only. The release takes the grid as
`int(sqrt(N))` (square inputs of the build size only); the layout passes the real grid, so non-square inputs work.

Variants (README table, cfgs/): InLine-DeiT-T 192 wide / 6 heads at 224, -S 320 / 10 heads at 288, -B 384 / 12 heads
at 448, all 12 blocks deep, patch 16, MLP ratio 4, drop path 0.1 (config.py default). Checkpoint keys are timm's ViT
keys (`cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.{i}.attn.{qkv, residual.0, residual.2, proj}`, ...,
`norm`, `head`); `checkpoint_filter_fn` resamples the position embedding for another build size.
"""
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function, resample_abs_pos_embed
from timm.models import generate_default_cfgs, register_model

from hiervit.backbones._pretrained import build_with_official_layouts, check_checkpoint_keys, model_description
from hiervit.backbones.inline import local_residual
from hiervit.backbones.layers.deit import DeiTLayout
from hiervit.kernels.linear import linear_attention_op

__all__ = ['InLineTokenAttention', 'InLineDeiT', 'inline_token_finish']


@register_notrace_function
def inline_token_finish(
        out: torch.Tensor,
        qkv: torch.Tensor,
        pool: torch.Tensor,
        res_w1: torch.Tensor,
        res_b1: Optional[torch.Tensor],
        res_w2: torch.Tensor,
        res_b2: Optional[torch.Tensor],
        num_heads: int,
        grid: List[int],
) -> torch.Tensor:
    """The attention output `[B, heads, T, d]` as tokens `[B, T, C]` plus the local residual on the patch tokens
    (the last `grid[0] * grid[1]` of T), its kernels predicted from the mean of `pool [B, T, C]` by the grouped 1x1
    convs `res_w1` `[C, C / heads, 1]`, GELU, `res_w2` `[9C, C / heads, 1]`. An FX leaf: it decides on sizes."""
    B, T = qkv.shape[0], qkv.shape[1]
    C = qkv.shape[2] // 3
    H, W = grid[0], grid[1]
    p = T - H * W  # prefix (class) tokens
    x = out.transpose(1, 2).reshape(B, T, C)
    wts = F.conv1d(pool.mean(1).unsqueeze(-1), res_w1, res_b1, groups=num_heads)
    wts = F.conv1d(F.gelu(wts), res_w2, res_b2, groups=num_heads).reshape(B, 1, 1, C, 9)
    v = qkv[:, p:, 2 * C:].reshape(B, H, W, C)
    res = local_residual(v, wts).reshape(B, H * W, C)
    return torch.cat([x[:, :p], x[:, p:] + res], dim=1)


torch.fx.wrap('inline_token_finish')  # a leaf for plain torch.fx.symbolic_trace too


class InLineTokenAttention(nn.Module):
    """InLine attention over ViT tokens `[B, prefix + H * W, C]` with the grid `[H, W]` (the DeiT layout's mixer)."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            backend: Optional[str] = None,
    ):
        """
        Args:
            dim: Channels in and out.
            num_heads: Heads; must divide `dim`.
            qkv_bias: Bias in the qkv projection.
            proj_drop: Dropout after the output projection.
            backend: Force a linear-attention backend (None: the op's dispatcher chooses).
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'num_heads={num_heads} must divide dim={dim}.')
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.backend = backend or 'auto'
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.residual = nn.Sequential(
            nn.Conv1d(dim, dim, kernel_size=1, groups=num_heads),
            nn.GELU(),
            nn.Conv1d(dim, dim * 9, kernel_size=1, groups=num_heads),
        )
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, grid: List[int]) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x)
        # [B, T, 3C] -> 3 x [B, heads, T, d]
        q, k, v = qkv.reshape(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = linear_attention_op(q, k, v, None, 'injective', 1e-6, 100., self.scale, self.backend)
        r0, r2 = self.residual[0], self.residual[2]
        x = inline_token_finish(out, qkv, x, r0.weight, r0.bias, r2.weight, r2.bias, self.num_heads, grid)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return f'num_heads={self.num_heads}'


class InLineDeiT(DeiTLayout):
    """InLine-DeiT: the DeiT layout with InLine attention in every block."""

    def __init__(
            self,
            embed_dim: int = 192,
            depth: int = 12,
            num_heads: int = 6,
            qkv_bias: bool = True,
            proj_drop_rate: float = 0.,
            attn_backend: Optional[str] = None,
            **kwargs,
    ):
        """
        Args:
            embed_dim: Token width.
            depth: Blocks.
            num_heads: Attention heads.
            qkv_bias: Bias in the qkv projections.
            proj_drop_rate: Dropout after the attention projection and in the MLP (the official `drop_rate`).
            attn_backend: Force a linear-attention backend (None: the op's dispatcher chooses).
            **kwargs: Any other `DeiTLayout` argument (`img_size`, `num_classes`, `drop_path_rate`, ...).
        """
        def make(dim: int, heads: int, block: int) -> nn.Module:
            return InLineTokenAttention(dim, heads, qkv_bias=qkv_bias, proj_drop=proj_drop_rate, backend=attn_backend)

        super().__init__(make, embed_dim=embed_dim, depth=depth, num_heads=num_heads, proj_drop_rate=proj_drop_rate,
                         **kwargs)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: InLineDeiT) -> Dict[str, torch.Tensor]:
    """Convert a released InLine-DeiT checkpoint (`model`) to this model, or raise a ValueError saying what does not
    fit: the keys are the same; a position embedding of another build size is resampled (bicubic, timm's rule)."""
    for key in ('model', 'state_dict'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
    target = model.state_dict()
    out = dict(state_dict)
    pos = out.get('pos_embed')
    if pos is not None and 'pos_embed' in target and pos.shape != target['pos_embed'].shape and pos.ndim == 3:
        side = int(round((pos.shape[1] - 1) ** 0.5))
        if side * side == pos.shape[1] - 1:
            out['pos_embed'] = resample_abs_pos_embed(pos, tuple(model.grid_size), (side, side), num_prefix_tokens=1)
    if 'head.weight' not in target:
        out = {k: v for k, v in out.items() if not k.startswith('head.')}
    check_checkpoint_keys(
        out, target, model_description(model, 'InLine-DeiT'), adaptable=('head.',),
        reshapable=('patch_embed.proj.weight',),
        variants='The variants differ in width and heads (hiervit.backbones.inline_deit._VARIANT_ARGS).')
    return out


def _cfg(url: Any = '', **kwargs) -> Dict[str, Any]:
    # the release's data pipeline (data/build.py): bicubic, resize 256/224 x size then centre crop, ImageNet mean/std
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (14, 14),
        'crop_pct': .875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head', 'license': 'unknown',
        'origin_url': 'https://github.com/LeapLabTHU/InLine', 'paper_ids': 'arXiv:2412.06590',
        'notes': ('The official code and weights carry no license.',), **kwargs,
    }


def _url(key: str, name: str):
    # TsinghuaCloud links all end in `/?dl=1`: each file gets its own cache name
    return f'https://cloud.tsinghua.edu.cn/f/{key}/?dl=1', name


default_cfgs = generate_default_cfgs({
    'inline_deit_tiny.in1k': _cfg(url=_url('1d6b8191ad6d4114b291', 'inline_deit_tiny.pth')),
    'inline_deit_small.in1k': _cfg(
        url=_url('2f3898b07e9247f3beb3', 'inline_deit_small.pth'), input_size=(3, 288, 288), pool_size=(18, 18)),
    'inline_deit_base.in1k': _cfg(
        url=_url('10bdd726d4b0435eb34e', 'inline_deit_base.pth'), input_size=(3, 448, 448), pool_size=(28, 28)),
})

# Architecture arguments (models/inline_deit.py entrypoints, cfgs/inline_deit_*.yaml DATA.IMG_SIZE) and the training
# drop path (config.py MODEL.DROP_PATH_RATE 0.1: the DeiT cfgs set none).
_VARIANT_ARGS: Dict[str, Dict[str, Any]] = {
    'inline_deit_tiny': dict(img_size=224, embed_dim=192, num_heads=6, drop_path_rate=0.1),
    'inline_deit_small': dict(img_size=288, embed_dim=320, num_heads=10, drop_path_rate=0.1),
    'inline_deit_base': dict(img_size=448, embed_dim=384, num_heads=12, drop_path_rate=0.1),
}


def _create_variant(variant: str, pretrained: bool, kwargs: Dict[str, Any]) -> InLineDeiT:
    kwargs = dict(_VARIANT_ARGS[variant], **kwargs)
    depth = kwargs.get('depth', 12)
    # timm's ViT feature defaults: every block, through forward_intermediates (NCHW maps)
    feature_cfg = dict(out_indices=kwargs.pop('out_indices', tuple(range(depth))),
                       feature_cls=kwargs.pop('feature_cls', 'getter'))
    if feature_cfg['feature_cls'] == 'fx':
        feature_cfg['output_fmt'] = 'NLC'  # the graph returns the blocks' tokens
    return build_with_official_layouts(
        InLineDeiT, variant, pretrained, checkpoint_filter_fn, feature_cfg=feature_cfg, **kwargs)


@register_model
def inline_deit_tiny(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """InLine-DeiT-T @ 224, ImageNet-1k (cfgs/inline_deit_t.yaml; 74.5 top-1)."""
    return _create_variant('inline_deit_tiny', pretrained, kwargs)


@register_model
def inline_deit_small(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """InLine-DeiT-S @ 288, ImageNet-1k (cfgs/inline_deit_s.yaml, 320 wide; 80.2 top-1)."""
    return _create_variant('inline_deit_small', pretrained, kwargs)


@register_model
def inline_deit_base(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """InLine-DeiT-B @ 448, ImageNet-1k (cfgs/inline_deit_b.yaml, 384 wide; 82.3 top-1)."""
    return _create_variant('inline_deit_base', pretrained, kwargs)
