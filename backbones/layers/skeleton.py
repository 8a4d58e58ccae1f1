"""Hierarchical layouts that take a token mixer: the Swin layout and the CSWin layout.

Several families are one of these layouts with a different attention. The layout owns everything but the mixer:
stem, levels of pre-norm blocks, the downsampler closing every level but the last, the final norm, the per-output
norms of dense-task backbones, the classifier head and `feature_info`; the timm contract (`forward_intermediates`,
`prune_intermediate_layers`, `group_matcher`, `set_grad_checkpointing`, `reset_classifier`, ...) is
`HierarchicalContract` (`contract.py`).

* `SwinLayout`: non-overlapping 4x4 patch embedding + LayerNorm, Swin's PatchMerging (LayerNorm(4C), Linear to 2C)
  closing each level (DiNAT_s; FLatten-/InLine-Swin, Swin+VSA plug in the same way).
* `CSWinLayout`: 7x7 stride-4 conv stem with padding 2 + LayerNorm, 3x3 stride-2 conv (with bias) + LayerNorm
  closing each level (CSWin; FLatten-/InLine-CSwin).

Adding a mixer to a layout is one class and its registrations. The mixer interface:

    mixer_layers[i](dim, num_heads, block) -> nn.Module    # one factory per level; `block` = index in the level

(`level_mixers(mixer, num_levels)` builds that list from one `mixer(level, dim, num_heads, block)`), and the module
maps a channels-last map `[B, H, W, dim]` to `[B, H, W, dim]` for any H, W >= 1 (it pads, masks and crops as its
family needs). Everything around it is fixed: `x = x + drop_path(gamma1 * attn(norm1(x)))`, then
`x = x + drop_path(gamma2 * mlp(norm2(x)))` (gammas only with layer scale), so a block's state-dict keys are
`norm1`, `attn.*` (the mixer's own), `norm2`, `mlp.fc1`, `mlp.fc2` under `levels.{i}.blocks.{j}`; the downsampler is
`levels.{i}.downsample`, the stem `patch_embed`, then `norm`, `out_norms.{i}` and `head.fc`.

Feature maps are channels-last inside the model; `forward_features` returns NHWC (`output_fmt = 'NHWC'`),
`forward_intermediates` and `features_only` return NCHW. With `output_norms=True` (the default for
`features_only=True`, see `build_layout_model`) one LayerNorm per level output is added, as the official dense-task
backbones have, and `forward_intermediates(norm=True)` applies them (the last level uses `norm`).
"""
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath, Mlp, register_notrace_function
from timm.models.swin_transformer import PatchMerging

from hiervit.backbones.layers.contract import ContractStage, HierarchicalContract, build_hierarchical_model

__all__ = [
    'MixerFactory', 'MixerBlock', 'LayoutLevel', 'HierarchicalTransformer', 'SwinLayout', 'CSWinLayout',
    'SwinPatchEmbed', 'ConvStem', 'ConvMerge', 'build_layout_model', 'level_mixers', 'stem_input',
]

MixerFactory = Callable[[int, int, int], nn.Module]


def level_mixers(mixer: Callable[[int, int, int, int], nn.Module], num_levels: int) -> List[MixerFactory]:
    """The per-level factories `mixer_layers[i](dim, num_heads, block)` of one `mixer(level, dim, num_heads, block)`
    (the form every family writes: its choice of mixer depends on the level)."""
    return [partial(mixer, level) for level in range(num_levels)]


@register_notrace_function
def stem_input(x: torch.Tensor, in_chans: int, model: str, minimum: int = 1) -> torch.Tensor:
    """The stems' input check (a ValueError naming the fix unless x is an NCHW batch with `in_chans` channels), and
    zero padding bottom/right to at least `minimum` px. An FX leaf: it decides on sizes."""
    if not torch.jit.is_scripting():
        if x.ndim != 4 or x.shape[1] != in_chans:
            raise ValueError(
                f'{model} expects an NCHW image batch with {in_chans} channels (the model\'s in_chans), got shape '
                f'{tuple(x.shape)}. Create the model with in_chans={x.shape[1] if x.ndim == 4 else "<C>"} or convert '
                f'the input.')
    H, W = x.shape[2], x.shape[3]
    if H < minimum or W < minimum:
        x = F.pad(x, (0, max(0, minimum - W), 0, max(0, minimum - H)))
    return x


torch.fx.wrap('stem_input')  # a leaf for plain torch.fx.symbolic_trace too (timm's tracer knows it already)


class SwinPatchEmbed(nn.Module):
    """Swin stem: zero-pad bottom/right to a multiple of 4, non-overlapping 4x4 stride-4 conv, LayerNorm.

    NCHW in, NHWC out.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 96, norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
                 patch_size: int = 4):
        super().__init__()
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = stem_input(x, self.in_chans, 'This Swin-layout model')
        H, W = x.shape[2], x.shape[3]
        x = F.pad(x, (0, -W % self.patch_size, 0, -H % self.patch_size))
        x = self.proj(x).permute(0, 2, 3, 1)  # [B, C, H/4, W/4] -> [B, H/4, W/4, C]
        return self.norm(x)


class ConvStem(nn.Module):
    """CSWin stem: 7x7 stride-4 conv with padding 2, then LayerNorm. NCHW in, NHWC out.

    Inputs below 3 px on an axis (where the conv has no output) are zero-padded bottom/right to 3 px; from 3 px on the
    stem runs as the official one.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 64, norm_layer: Callable[..., nn.Module] = nn.LayerNorm):
        super().__init__()
        self.in_chans = in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=2)
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = stem_input(x, self.in_chans, 'This CSWin-layout model', minimum=3)
        x = self.proj(x).permute(0, 2, 3, 1)  # [B, C, H/4, W/4] -> [B, H/4, W/4, C]
        return self.norm(x)


class ConvMerge(nn.Module):
    """CSWin downsampler: 3x3 stride-2 conv (with bias, padding 1) doubling the channels, then LayerNorm. NHWC."""

    def __init__(self, dim: int, norm_layer: Callable[..., nn.Module] = nn.LayerNorm):
        super().__init__()
        self.conv = nn.Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1)
        self.norm = norm_layer(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # NHWC -> NCHW -> conv -> NHWC
        return self.norm(x)


class MixerBlock(nn.Module):
    """Pre-norm transformer block around a token mixer: mixer then MLP, each with optional layer scale
    (`gamma1`/`gamma2`) and drop path. A mixer with `takes_block_input = True` also gets the block input before
    `norm1` (InLine-CSwin pools it)."""
    mixer_takes_input: torch.jit.Final[bool]

    def __init__(
            self,
            dim: int,
            mixer: nn.Module,
            mlp_ratio: float = 4.,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            layer_scale: Optional[float] = None,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = mixer
        self.mixer_takes_input = bool(getattr(mixer, 'takes_block_input', False))
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        # Plain parameters (not timm's LayerScale module) keep the `gamma1`/`gamma2` keys of the official checkpoints.
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(dim))
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(dim))
        else:
            self.gamma1 = self.gamma2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attn(self.norm1(x), x) if self.mixer_takes_input else self.attn(self.norm1(x))
        x = x + self.drop_path(y if self.gamma1 is None else self.gamma1 * y)
        y = self.mlp(self.norm2(x))
        x = x + self.drop_path(y if self.gamma2 is None else self.gamma2 * y)
        return x


class LayoutLevel(ContractStage):
    """One level: blocks at constant resolution, then (except for the last level) the downsampler."""

    def __init__(
            self,
            dim: int,
            depth: int,
            num_heads: int,
            mixer_layer: MixerFactory,
            downsample_layer: Optional[Callable[..., nn.Module]],
            mlp_ratio: float = 4.,
            proj_drop: float = 0.,
            drop_path: Sequence[float] = (),
            layer_scale: Optional[float] = None,
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ):
        super().__init__(downsample_first=False)
        self.blocks = nn.Sequential(*[
            MixerBlock(
                dim,
                mixer_layer(dim, num_heads, i),
                mlp_ratio=mlp_ratio,
                proj_drop=proj_drop,
                drop_path=drop_path[i],
                layer_scale=layer_scale,
                norm_layer=norm_layer,
            )
            for i in range(depth)])
        self.downsample = nn.Identity() if downsample_layer is None else downsample_layer(dim, norm_layer=norm_layer)


class HierarchicalTransformer(HierarchicalContract, nn.Module):
    """A four-level (any number of levels) channels-last transformer around per-level token mixers; the layouts below
    fix its stem and downsampler. See the module docstring for the mixer interface and the state-dict layout; the timm
    contract comes from `HierarchicalContract`."""

    contract_stem = 'patch_embed'
    contract_stages = 'levels'
    no_weight_decay_suffixes = ('.rpb', 'relative_position_bias_table')  # the mixers' bias tables (NA, Swin)

    def __init__(
            self,
            mixer_layers: Sequence[MixerFactory],
            stem_layer: Callable[..., nn.Module],
            downsample_layer: Callable[..., nn.Module],
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 96,
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            mlp_ratio: float = 4.,
            layer_scale: Optional[float] = None,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
            output_norms: bool = False,
    ):
        """
        Args:
            mixer_layers: One mixer factory per level, `(dim, num_heads, block) -> module` (NHWC in and out).
            stem_layer: Stride-4 stem `(in_chans, embed_dim, norm_layer)`, NCHW in, NHWC out.
            downsample_layer: Level-closing downsampler `(dim, norm_layer)` to 2 * dim channels, NHWC.
            in_chans: Input image channels.
            num_classes: Classifier outputs (0: no classifier).
            global_pool: Head pooling ('avg', 'max', ... or '' for none).
            embed_dim: Channels of the first level; doubled at every level.
            depths: Blocks per level.
            num_heads: Attention heads per level.
            mlp_ratio: MLP hidden width / dim.
            layer_scale: Initial layer-scale value; None disables layer scale.
            drop_rate: Dropout after the stem and before the classifier.
            proj_drop_rate: Dropout in the MLP (mixers take their own).
            drop_path_rate: Stochastic depth rate, increased linearly over all blocks.
            norm_layer: Norm layer (channels-last).
            output_norms: Add one LayerNorm per level output for dense tasks (`out_norms`; the last level uses `norm`).
        """
        super().__init__()
        num_levels = len(depths)
        if len(num_heads) != num_levels or len(mixer_layers) != num_levels:
            raise ValueError(
                f'num_heads={tuple(num_heads)} and the mixers ({len(mixer_layers)}) need one entry per level of '
                f'depths={tuple(depths)}.')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_levels = num_levels  # before any pruning: the last level's output norm is `norm`
        self.output_fmt = 'NHWC'
        dims = [int(embed_dim * 2 ** i) for i in range(num_levels)]
        self.num_features = self.head_hidden_size = dims[-1]

        self.patch_embed = stem_layer(in_chans=in_chans, embed_dim=embed_dim, norm_layer=norm_layer)
        self.pos_drop = nn.Dropout(p=drop_rate)

        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu').split(list(depths))]
        self.levels = nn.ModuleList()
        self.feature_info = []
        for i in range(num_levels):
            self.levels.append(LayoutLevel(
                dim=dims[i],
                depth=depths[i],
                num_heads=num_heads[i],
                mixer_layer=mixer_layers[i],
                downsample_layer=downsample_layer if i < num_levels - 1 else None,
                mlp_ratio=mlp_ratio,
                proj_drop=proj_drop_rate,
                drop_path=dpr[i],
                layer_scale=layer_scale,
                norm_layer=norm_layer,
            ))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f'levels.{i}.blocks'))

        self.norm = norm_layer(self.num_features)
        self.out_norms = nn.ModuleList([norm_layer(d) for d in dims[:-1]]) if output_norms else None
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt=self.output_fmt)
        self.apply(self._init_weights)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_drop(self.patch_embed(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for level in self.levels:
            x = level(x)
        return self.norm(x)


def _fixed_layout(model: nn.Module, layout: str, kwargs: Dict[str, Any], **fixed: Any) -> Dict[str, Any]:
    """`kwargs` with the layout's own pieces (`stem_layer`, `downsample_layer`), which the caller may not replace."""
    for name in fixed:
        if name in kwargs:
            raise TypeError(f'{type(model).__name__} fixes {name!r} (the {layout} layout).')
    return dict(kwargs, **fixed)


class SwinLayout(HierarchicalTransformer):
    """The Swin layout: 4x4 patch embedding, Swin's PatchMerging closing each level, mlp_ratio 4 by default."""

    def __init__(self, mixer_layers: Sequence[MixerFactory], **kwargs):
        """
        Args:
            mixer_layers: One mixer factory per level (see the module docstring).
            **kwargs: `HierarchicalTransformer` arguments other than the stem and downsampler.
        """
        super().__init__(mixer_layers, **_fixed_layout(
            self, 'Swin', kwargs, stem_layer=SwinPatchEmbed, downsample_layer=PatchMerging))


class CSWinLayout(HierarchicalTransformer):
    """The CSWin layout: 7x7 stride-4 conv stem (padding 2), 3x3 stride-2 conv merges closing each level."""

    def __init__(self, mixer_layers: Sequence[MixerFactory], **kwargs):
        """
        Args:
            mixer_layers: One mixer factory per level (see the module docstring).
            **kwargs: `HierarchicalTransformer` arguments other than the stem and downsampler.
        """
        super().__init__(mixer_layers, **_fixed_layout(
            self, 'CSWin', kwargs, stem_layer=ConvStem, downsample_layer=ConvMerge))


def build_layout_model(
        model_cls: Type[nn.Module],
        variant: str,
        pretrained: bool,
        filter_fn: Callable[[Dict[str, Any], nn.Module], Dict[str, torch.Tensor]],
        variant_args: Dict[str, Any],
        **kwargs,
) -> nn.Module:
    """`build_hierarchical_model` of a registered layout variant (its `variant_args` overridden by the caller's
    kwargs): `features_only` returns NCHW maps through `forward_intermediates` with one LayerNorm per output
    (`output_norms`), as the official dense-task backbones."""
    return build_hierarchical_model(
        model_cls, variant, pretrained, filter_fn, dict(variant_args, **kwargs), dense_norms='output_norms',
        channels_last=True)
