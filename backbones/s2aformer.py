""" S2AFormer: Strip Self-Attention for Efficient Vision Transformer

A timm-compatible *reconstruction* of:
    S2AFormer: Strip Self-Attention for Efficient Vision Transformer (IEEE TIP 2025)
    - https://arxiv.org/abs/2505.22195 (Guoan Xu, Wenfeng Huang, Wenjing Jia, Jiamao Li, Guangwei Gao, Guo-Jun Qi)

No official code or weights exist, and the paper's method section and configuration table could not be read. What is
built here follows the recoverable text (abstract and secondary summaries, see the project's research notes):
  * a stem of three 3x3 convs (the first with stride 2), then four stages, each a patch embedding followed by Hybrid
    Perception Blocks; outputs at strides 4/8/16/32;
  * each block is `x + DWConv(x)`, `x + SSA(LN(x))`, `x + LIM(LN(x))`, `x + MLP(LN(x))`;
  * Strip Self-Attention (SSA) shrinks the spatial size of K and V with a strided depthwise conv, compresses the
    channels of Q and K to a small per-head width ("strips"), and runs softmax attention with V at full width.
Everything else is an assumption, exposed as a named constructor argument and marked "Assumed" below: Q/K strip
width, reduction kernel and ratios, the norm after the reduction, heads, LIM's structure, MLP ratios, stem widths,
patch embeddings, head, depths and widths. The five variants' depths/widths are fitted so that parameters and MACs at
224x224 land within 3% of the published 5.02/5.80/6.54/10.69/24.87 M and 0.43/0.655/0.786/1.38/4.12 G.

The attention runs on `torch.nn.functional.scaled_dot_product_attention`, which accepts a value width different from
the query/key width; `strip_attention_flops` is its cost, and what `FlopCounterMode` counts for it.
"""
from typing import Any, Dict, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, ConvNormAct, DropPath, LayerNorm2d, calculate_drop_path_rates
from timm.models import generate_default_cfgs, register_model

import hiervit.kernels  # noqa: F401  (FLOP formulas for torch's CPU SDPA kernels)
from hiervit.backbones._pretrained import check_checkpoint_keys, model_description
from hiervit.backbones.layers.contract import ContractStage, HierarchicalContract, build_hierarchical_model
from hiervit.backbones.layers.shape import check_image_input

__all__ = ['S2AFormer', 'StripSelfAttention', 'strip_attention_flops']

torch.fx.wrap('check_image_input')  # an FX leaf for plain torch.fx.symbolic_trace (timm's tracer knows it already)


def strip_attention_flops(batch: int, heads: int, queries: int, keys: int, qk_dim: int, v_dim: int) -> int:
    """Forward FLOPs of the attention core (matmuls only, as torch's SDPA counter): 2*B*h*Nq*Nk*(d_qk + d_v)."""
    return 2 * batch * heads * queries * keys * (qk_dim + v_dim)


class StripSelfAttention(nn.Module):
    """Strip Self-Attention on NCHW maps.

    Q comes from the full-resolution map, K and V from a map shrunk by a depthwise conv (kernel = stride =
    `sr_ratio`); Q and K are projected to `strip_dim` channels per head, V keeps `dim // num_heads` per head.
    Assumed (not in the recoverable text): 1x1-conv projections with bias, a LayerNorm2d after the reduction, a
    1x1-conv output projection, scale `strip_dim ** -0.5`, zero padding bottom/right to a multiple of `sr_ratio`.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            strip_dim: int = 1,
            sr_ratio: int = 1,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f'dim={dim} must be divisible by num_heads={num_heads}; choose a head_dim dividing dim.')
        if strip_dim < 1:
            raise ValueError(f'strip_dim={strip_dim} must be >= 1 (Q/K channels per head).')
        if sr_ratio < 1:
            raise ValueError(f'sr_ratio={sr_ratio} must be >= 1 (1 keeps every key).')
        self.num_heads = num_heads
        self.strip_dim = strip_dim
        self.sr_ratio = sr_ratio
        self.scale = strip_dim ** -0.5
        self.q = nn.Conv2d(dim, num_heads * strip_dim, 1, **dd)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio, groups=dim, **dd)
            self.sr_norm = LayerNorm2d(dim, **dd)
        else:
            self.sr = self.sr_norm = nn.Identity()
        self.k = nn.Conv2d(dim, num_heads * strip_dim, 1, **dd)
        self.v = nn.Conv2d(dim, dim, 1, **dd)
        self.proj = nn.Conv2d(dim, dim, 1, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.num_heads
        q = self.q(x).reshape(B, h, self.strip_dim, H * W).transpose(-1, -2)  # [B, h, N, d_s]
        r = self.sr_ratio
        xr = x
        if r > 1:
            # keys cover the whole map whatever its size: pad to a multiple of the reduction stride
            xr = self.sr_norm(self.sr(F.pad(x, (0, -W % r, 0, -H % r))))
        n_keys = xr.shape[-2] * xr.shape[-1]
        k = self.k(xr).reshape(B, h, self.strip_dim, n_keys).transpose(-1, -2)  # [B, h, N', d_s]
        v = self.v(xr).reshape(B, h, C // h, n_keys).transpose(-1, -2)  # [B, h, N', C / h]
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # [B, h, N, C / h]
        out = out.transpose(-1, -2).reshape(B, C, H, W)
        return self.proj_drop(self.proj(out))


class LocalInteraction(nn.Module):
    """Local Interaction Module. Assumed structure: 1x1 conv -> 3x3 depthwise conv -> GELU -> 1x1 conv."""

    def __init__(self, dim: int, ratio: float = 1., kernel_size: int = 3, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        hidden = int(dim * ratio)
        self.pw1 = nn.Conv2d(dim, hidden, 1, **dd)
        self.dw = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, **dd)
        self.act = nn.GELU()
        self.pw2 = nn.Conv2d(hidden, dim, 1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.dw(self.pw1(x))))


class ConvMlp(nn.Module):
    """The "standard feed-forward network" on NCHW maps: 1x1 conv -> GELU -> 1x1 conv (same as Linear per pixel)."""

    def __init__(self, dim: int, ratio: float = 4., drop: float = 0., device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        hidden = int(dim * ratio)
        self.fc1 = nn.Conv2d(dim, hidden, 1, **dd)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Conv2d(hidden, dim, 1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class HybridPerceptionBlock(nn.Module):
    """`x + DWConv(x)`, then pre-norm residual SSA, LIM and MLP. NCHW in and out.

    Assumed: a 3x3 depthwise conv with bias and no norm, LayerNorm2d (eps 1e-6), drop path on the three pre-norm
    branches, no layer scale.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            strip_dim: int = 1,
            sr_ratio: int = 1,
            mlp_ratio: float = 4.,
            lim_ratio: float = 1.,
            dw_kernel_size: int = 3,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.dwconv = nn.Conv2d(dim, dim, dw_kernel_size, padding=dw_kernel_size // 2, groups=dim, **dd)
        self.norm1 = LayerNorm2d(dim, eps=1e-6, **dd)
        self.attn = StripSelfAttention(dim, num_heads, strip_dim=strip_dim, sr_ratio=sr_ratio, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = LayerNorm2d(dim, eps=1e-6, **dd)
        self.lim = LocalInteraction(dim, ratio=lim_ratio, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm3 = LayerNorm2d(dim, eps=1e-6, **dd)
        self.mlp = ConvMlp(dim, ratio=mlp_ratio, **dd)
        self.drop_path3 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dwconv(x)
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        x = x + self.drop_path2(self.lim(self.norm2(x)))
        x = x + self.drop_path3(self.mlp(self.norm3(x)))
        return x


class S2AFormerStage(ContractStage):
    """Patch embedding (assumed: 3x3 stride-2 conv + BatchNorm), then the blocks."""

    def __init__(
            self,
            in_dim: int,
            dim: int,
            depth: int,
            num_heads: int,
            strip_dim: int = 1,
            sr_ratio: int = 1,
            mlp_ratio: float = 4.,
            lim_ratio: float = 1.,
            dw_kernel_size: int = 3,
            drop_path: Union[float, Sequence[float]] = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__(downsample_first=True)
        dd = {'device': device, 'dtype': dtype}
        self.downsample = ConvNormAct(in_dim, dim, 3, stride=2, padding=1, apply_act=False, **dd)
        dpr = drop_path if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.Sequential(*[
            HybridPerceptionBlock(
                dim,
                num_heads,
                strip_dim=strip_dim,
                sr_ratio=sr_ratio,
                mlp_ratio=mlp_ratio,
                lim_ratio=lim_ratio,
                dw_kernel_size=dw_kernel_size,
                drop_path=dpr[i],
                **dd,
            )
            for i in range(depth)
        ])


def _per_stage(value: Union[float, Sequence[float]], n: int, name: str) -> Tuple:
    if isinstance(value, (int, float)):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f'{name} needs one entry per stage ({n}), got {len(value)}: {value}.')
    return value


class S2AFormer(HierarchicalContract, nn.Module):
    """S2AFormer (reconstruction): conv stem, four stages of Hybrid Perception Blocks, norm, classifier head.

    Feature maps are NCHW with strides 4/8/16/32. `out_norms=True` (the `features_only=True` default) adds one
    LayerNorm2d per stage output for dense tasks (the usual hierarchical-backbone convention; the paper's dense
    backbone is not published); `forward_intermediates(norm=True)` applies them. Without them `norm=True` applies the
    final norm to the last stage.
    """
    init_types = (nn.Linear, nn.Conv2d)  # assumed (no code): truncated-normal convs and linears, as PVTv2/SegFormer

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (2, 2, 6, 2),
            embed_dims: Sequence[int] = (32, 64, 160, 256),
            stem_dims: Sequence[int] = (16, 16, 32),
            head_dim: int = 32,
            strip_dim: int = 1,
            sr_ratios: Sequence[int] = (8, 4, 2, 1),
            mlp_ratios: Union[float, Sequence[float]] = 4.,
            lim_ratios: Union[float, Sequence[float]] = 1.,
            dw_kernel_size: int = 3,
            out_norms: bool = False,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chans: Input image channels.
            num_classes: Classifier classes (0 for no classifier).
            global_pool: Head pooling type.
            depths: Blocks per stage. Assumed (fitted to the published params/MACs per variant).
            embed_dims: Channels per stage. Assumed (fitted likewise).
            stem_dims: Output channels of the three stem convs (3x3; stride 2, 1, 1; BatchNorm, GELU after the first
                two). Assumed widths, norm and activation; the three convs and the first stride are stated.
            head_dim: V channels per head (heads = dim // head_dim). Assumed.
            strip_dim: Q/K channels per head after channel compression. Assumed 1 ("strip", as the authors'
                SCASeg compresses Q/K to one channel).
            sr_ratios: Per-stage spatial reduction (depthwise-conv kernel and stride) of K/V. Assumed (PVT's).
            mlp_ratios: MLP expansion per stage (or one for all). Assumed.
            lim_ratios: LIM expansion per stage (or one for all). Assumed.
            dw_kernel_size: Kernel of each block's leading depthwise conv. Assumed.
            out_norms: Add one LayerNorm2d per stage output (dense tasks).
            drop_rate: Head dropout rate.
            drop_path_rate: Stochastic depth rate, linear over all blocks.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        num_stages = len(depths)
        if len(embed_dims) != num_stages:
            raise ValueError(
                f'depths and embed_dims need one entry per stage, got {len(depths)} and {len(embed_dims)}.')
        if len(stem_dims) != 3:
            raise ValueError(f'stem_dims needs the widths of the three stem convs, got {tuple(stem_dims)}.')
        bad = [d for d in embed_dims if d % head_dim]
        if bad:
            raise ValueError(f'embed_dims {tuple(bad)} are not multiples of head_dim={head_dim}; change either.')
        sr_ratios = _per_stage(sr_ratios, num_stages, 'sr_ratios')
        mlp_ratios = _per_stage(mlp_ratios, num_stages, 'mlp_ratios')
        lim_ratios = _per_stage(lim_ratios, num_stages, 'lim_ratios')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.drop_rate = drop_rate

        s0, s1, s2 = stem_dims
        self.stem = nn.Sequential(
            ConvNormAct(in_chans, s0, 3, stride=2, padding=1, act_layer=nn.GELU, **dd),
            ConvNormAct(s0, s1, 3, stride=1, padding=1, act_layer=nn.GELU, **dd),
            ConvNormAct(s1, s2, 3, stride=1, padding=1, apply_act=False, **dd),
        )
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages = []
        self.feature_info = []
        prev = s2
        for i in range(num_stages):
            dim = embed_dims[i]
            stages.append(S2AFormerStage(
                prev,
                dim,
                depths[i],
                num_heads=dim // head_dim,
                strip_dim=strip_dim,
                sr_ratio=sr_ratios[i],
                mlp_ratio=mlp_ratios[i],
                lim_ratio=lim_ratios[i],
                dw_kernel_size=dw_kernel_size,
                drop_path=dpr[i],
                **dd,
            ))
            prev = dim
            self.feature_info += [dict(num_chs=dim, reduction=2 ** (i + 2), module=f'stages.{i}')]
        self.stages = nn.Sequential(*stages)
        self.out_norms = nn.ModuleList([LayerNorm2d(d, **dd) for d in embed_dims]) if out_norms else None
        self.norm = LayerNorm2d(self.num_features, **dd)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.apply(self._init_weights)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_input(x, self.in_chans, 'S2AFormer')
        return self.stem(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.forward_stem(x))
        return self.norm(x)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: S2AFormer) -> Dict[str, torch.Tensor]:
    """Unwrap a checkpoint saved from this module (no official checkpoints exist) and check it against `model`.

    Accepts `{'model': ...}` / `{'state_dict': ...}` wrappers and a dense-task `backbone.` prefix. Modules a source
    lacks keep the model's initial values: the classifier and final norm for dense-task checkpoints, the output norms
    for classification ones. Any other missing, unexpected or mis-shaped key raises a ValueError.
    """
    for wrapper in ('model', 'state_dict'):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
    state_dict = dict(state_dict)
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    target = model.state_dict()
    for prefix in ('norm.', 'head.', 'out_norms.'):
        if not any(k.startswith(prefix) for k in state_dict):
            state_dict.update({k: v for k, v in target.items() if k.startswith(prefix)})
    check_checkpoint_keys(state_dict, target, model_description(model, 'S2AFormer'), reshapable=('stem.0.conv.weight',),
                          norms_arg='out_norms')
    return state_dict


def _create_s2aformer(variant: str, pretrained: bool = False, **kwargs) -> S2AFormer:
    # dense-task backbones: one LayerNorm2d per output, as the other families' dense backbones (an assumption: no
    # S2AFormer dense backbone or checkpoint was released)
    return build_hierarchical_model(
        S2AFormer, variant, pretrained, checkpoint_filter_fn, kwargs, dense_norms='out_norms')


_NOTES = (
    'No weights exist: the authors released no code or checkpoints.',
    'Architecture reconstructed from the paper\'s recoverable text; depths/widths fitted to its params and MACs.',
)


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'url': '',
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': 0.875,
        'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0.conv',
        'classifier': 'head.fc',
        'license': 'unknown',
        'paper_ids': 'arXiv:2505.22195',
        'paper_name': 'S2AFormer: Strip Self-Attention for Efficient Vision Transformer',
        'notes': _NOTES,
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    's2aformer_mini': _cfg(),
    's2aformer_t': _cfg(),
    's2aformer_xs': _cfg(),
    's2aformer_s': _cfg(),
    's2aformer_m': _cfg(),
})

# Fitted (assumed) configurations: the published figures are params / MACs at 224x224; the test checks ours against
# them (within 3%). Shared assumptions: head_dim 32, strip_dim 1, sr_ratios (8, 4, 2, 1), LIM ratio 1.
_VARIANTS = {
    's2aformer_mini': dict(depths=(1, 1, 2, 1), embed_dims=(32, 64, 160, 512), mlp_ratios=(2, 2, 2, 4),
                           stem_dims=(16, 16, 16)),
    's2aformer_t': dict(depths=(1, 1, 6, 2), embed_dims=(32, 64, 128, 384)),
    's2aformer_xs': dict(depths=(1, 1, 6, 1), embed_dims=(32, 64, 160, 512)),
    's2aformer_s': dict(depths=(1, 2, 6, 3), embed_dims=(32, 96, 224, 384)),
    's2aformer_m': dict(depths=(1, 4, 14, 2), embed_dims=(32, 96, 320, 448)),
}


def _create_variant(variant: str, pretrained: bool, kwargs: Dict[str, Any]) -> S2AFormer:
    return _create_s2aformer(variant, pretrained=pretrained, **dict(_VARIANTS[variant], **kwargs))


@register_model
def s2aformer_mini(pretrained: bool = False, **kwargs) -> S2AFormer:
    """S2AFormer-mini (reconstruction) @ 224x224: published 5.02M params, 0.43 GMACs, 75.1 top-1; no weights."""
    return _create_variant('s2aformer_mini', pretrained, kwargs)


@register_model
def s2aformer_t(pretrained: bool = False, **kwargs) -> S2AFormer:
    """S2AFormer-T (reconstruction) @ 224x224: published 5.80M params, 0.655 GMACs, 77.7 top-1; no weights."""
    return _create_variant('s2aformer_t', pretrained, kwargs)


@register_model
def s2aformer_xs(pretrained: bool = False, **kwargs) -> S2AFormer:
    """S2AFormer-XS (reconstruction) @ 224x224: published 6.54M params, 0.786 GMACs, 78.9 top-1; no weights."""
    return _create_variant('s2aformer_xs', pretrained, kwargs)


@register_model
def s2aformer_s(pretrained: bool = False, **kwargs) -> S2AFormer:
    """S2AFormer-S (reconstruction) @ 224x224: published 10.69M params, 1.38 GMACs, 80.8 top-1; no weights."""
    return _create_variant('s2aformer_s', pretrained, kwargs)


@register_model
def s2aformer_m(pretrained: bool = False, **kwargs) -> S2AFormer:
    """S2AFormer-M (reconstruction) @ 224x224: published 24.87M params, 4.12 GMACs, 82.3 top-1; no weights."""
    return _create_variant('s2aformer_m', pretrained, kwargs)
