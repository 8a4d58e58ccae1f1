"""The PVT and PVTv2 layouts (Pyramid Vision Transformer v1 / v2) that take a token mixer per stage.

Families that replace PVT's spatial-reduction attention (FLatten-PVT, InLine-PVT, ...) are one of these layouts with
their mixer. The layout owns everything but the mixer, written once here:

* PVT v1 (`PVTLayout(v2=False)`, arXiv 2102.12122): every stage opens with a non-overlapping patch embedding (conv
  with kernel = stride = 4 in the first stage, 2 after, then LayerNorm) and adds a learnable absolute position embedding
  (`pos_embed`, one vector per token of the build-size map, bilinearly interpolated at other sizes, exact at the
  build size); blocks are pre-norm `x + attn(norm1(x))`, `x + mlp(norm2(x))` with a plain MLP.
* PVTv2 (`v2=True`, arXiv 2106.13797): overlapping patch embeddings (7x7 stride 4, then 3x3 stride 2, padding
  k // 2, then LayerNorm), no position embedding, the MLP with a 3x3 depthwise conv after fc1 (timm's
  `MlpWithDepthwiseConv`), and a LayerNorm closing every stage.

Both follow the LeapLab releases (FLatten, InLine) that the families here load: no class token, the head averages
the last stage's tokens, and (v1) no final norm is applied (`final_norm=True` adds one).

The mixer interface is the one of `hiervit.backbones.layers.skeleton`:

    mixer_layers[i](dim, num_heads, block) -> nn.Module    # one factory per stage; `block` = index in the stage

mapping a channels-last map `[B, H, W, dim]` to `[B, H, W, dim]` for any H, W >= 1. Mixers that need the build-size
map of their stage (position encodings, spatial-reduction sizes) take it from `pvt_stage_sizes(img_size)`.

The model is built on the shared contract (`hiervit.backbones.layers.contract.HierarchicalContract`): the first
stage's embedding is the stem, every other stage opens with its embedding as `downsample`. State-dict layout:
`patch_embed.{proj,norm,pos_embed}`, `stages.{i}.downsample.{proj,norm,pos_embed}` (i > 0), `stages.{i}.blocks.{j}.
{norm1,attn.*,norm2,mlp.*}`, `stages.{i}.norm` (v2), `norm` (only with `final_norm`), `head.fc`. The official
`patch_embed{i}`, `pos_embed{i}`, `block{i}`, `norm{i}` keys map one to one (`pvt_official_key`).
"""
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath, register_notrace_function, to_2tuple, trunc_normal_
from timm.models import checkpoint_seq
from timm.models.pvt_v2 import MlpWithDepthwiseConv

from hiervit.backbones.layers.contract import ContractStage, HierarchicalContract
from hiervit.backbones.layers.skeleton import MixerBlock, MixerFactory, stem_input

__all__ = [
    'PVTLayout', 'PVTStage', 'PVTPatchEmbed', 'PVTv2PatchEmbed', 'PVTv2Block', 'pvt_patch_embed', 'pvt_stage_sizes',
    'resize_abs_pos_embed', 'pad_to_multiple', 'pvt_official_key',
]


def pvt_stage_sizes(img_size: Union[int, Sequence[int]], num_stages: int = 4) -> List[Tuple[int, int]]:
    """Map size of every stage at the build size (stride 4, then halved), as the official models size their
    position embeddings."""
    h, w = to_2tuple(img_size)
    return [(h // 4 // 2 ** i, w // 4 // 2 ** i) for i in range(num_stages)]


@register_notrace_function
def resize_abs_pos_embed(pos_embed: torch.Tensor, size: List[int], H: int, W: int) -> torch.Tensor:
    """`pos_embed [1, h * w, C]` of the build-size map `size` as `[1, H, W, C]`: exact at the build size, bilinear
    (as the official PVT) otherwise. An FX leaf: it decides on sizes."""
    grid = pos_embed.reshape(1, size[0], size[1], pos_embed.shape[-1])
    if size[0] == H and size[1] == W:
        return grid
    grid = F.interpolate(grid.permute(0, 3, 1, 2), size=(H, W), mode='bilinear', align_corners=False)
    return grid.permute(0, 2, 3, 1)


torch.fx.wrap('resize_abs_pos_embed')  # a leaf for plain torch.fx.symbolic_trace too


@register_notrace_function
def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad an NCHW map bottom/right to whole multiples of `multiple` rows and columns, at least one (x itself
    when it divides). An FX leaf: it decides on sizes."""
    H, W = x.shape[2], x.shape[3]
    pad_h, pad_w = -H % multiple if H > 0 else multiple, -W % multiple if W > 0 else multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h))


torch.fx.wrap('pad_to_multiple')
torch.fx.wrap('stem_input')  # imported from the skeleton: a leaf under this module's name too


class PVTPatchEmbed(nn.Module):
    """PVT v1 patch embedding: conv with kernel = stride = `patch_size`, LayerNorm, then the optional absolute
    position embedding (`pos_embed`, one vector per token of the build-size map `pos_size`). NHWC out; NCHW in
    (`nhwc_in=False`, the image) or NHWC. A map that does not divide is zero-padded bottom/right to whole patches
    (ceil(H / patch) tokens, as the Swin layout; the official conv drops the remainder instead, the same at the sizes
    the official models take: multiples of 32)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, pos_size: Optional[Tuple[int, int]] = None,
                 nhwc_in: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.nhwc_in = nhwc_in
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)
        self.pos_size = list(pos_size) if pos_size is not None else [0, 0]
        if pos_size is not None:
            self.pos_embed = nn.Parameter(torch.zeros(1, pos_size[0] * pos_size[1], embed_dim))
            trunc_normal_(self.pos_embed, std=.02)
        else:
            self.pos_embed = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc_in:
            x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
        x = self.norm(self.proj(pad_to_multiple(x, self.patch_size)).permute(0, 2, 3, 1))  # -> [B, H', W', C]
        if self.pos_embed is not None:
            x = x + resize_abs_pos_embed(self.pos_embed, self.pos_size, x.shape[1], x.shape[2])
        return x


class PVTv2PatchEmbed(nn.Module):
    """PVTv2's overlapping patch embedding (as timm's `OverlapPatchEmbed`: conv with padding k // 2, LayerNorm), NHWC
    out; NCHW in (`nhwc_in=False`, the image) or NHWC."""

    def __init__(self, patch_size: int, stride: int, in_chans: int, embed_dim: int, nhwc_in: bool = True):
        super().__init__()
        self.nhwc_in = nhwc_in
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc_in:
            x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # -> [B, H', W', C]


class PVTv2Block(nn.Module):
    """PVTv2 block around a token mixer: `x + attn(norm1(x))`, `x + mlp(norm2(x))` with the depthwise-conv MLP.
    NHWC in and out."""

    def __init__(
            self,
            dim: int,
            mixer: nn.Module,
            mlp_ratio: float = 4.,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = mixer
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = MlpWithDepthwiseConv(dim, int(dim * mlp_ratio), drop=proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = x + self.drop_path(self.attn(self.norm1(x)))
        y = self.mlp(self.norm2(x).reshape(B, H * W, C), [H, W]).reshape(B, H, W, C)
        return x + self.drop_path(y)


def pvt_patch_embed(v2: bool, first: bool, in_chans: int, dim: int,
                    pos_size: Optional[Tuple[int, int]] = None) -> nn.Module:
    """The patch embedding opening a stage: stride 4 for the first (the model's stem, NCHW image in), 2 after."""
    if v2:
        return PVTv2PatchEmbed(7 if first else 3, 4 if first else 2, in_chans, dim, nhwc_in=not first)
    return PVTPatchEmbed(4 if first else 2, in_chans, dim, pos_size=pos_size, nhwc_in=not first)


class PVTStage(ContractStage):
    """One PVT / PVTv2 stage, NHWC in and out: the patch embedding (`downsample`; identity in the first stage, whose
    embedding is the model's stem), the blocks, and (v2) the closing LayerNorm (`norm`), part of the stage output."""

    def __init__(
            self,
            in_chans: int,
            dim: int,
            depth: int,
            num_heads: int,
            mixer_layer: MixerFactory,
            first: bool,
            v2: bool,
            pos_size: Optional[Tuple[int, int]] = None,
            mlp_ratio: float = 4.,
            proj_drop: float = 0.,
            drop_path: Sequence[float] = (),
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ):
        """
        Args:
            in_chans: Channels of the stage input.
            dim: Channels of the stage.
            depth: Blocks.
            num_heads: Attention heads (passed to the mixer factory).
            mixer_layer: The stage's mixer factory `(dim, num_heads, block) -> module`.
            first: The first stage (its embedding is the model's stem).
            v2: PVTv2 pieces (overlapping embedding, depthwise-conv MLP, closing norm) instead of PVT v1's.
            pos_size: v1: the build-size map of the stage's absolute position embedding.
            mlp_ratio: MLP hidden width / dim.
            proj_drop: Dropout in the MLP.
            drop_path: Stochastic depth rate per block.
            norm_layer: Block (and v2 closing) norm.
        """
        super().__init__(downsample_first=True)
        self.downsample = nn.Identity() if first else pvt_patch_embed(v2, False, in_chans, dim, pos_size)
        blocks = []
        for i in range(depth):
            mixer = mixer_layer(dim, num_heads, i)
            if v2:
                blocks.append(PVTv2Block(dim, mixer, mlp_ratio, proj_drop, drop_path[i], norm_layer))
            else:
                blocks.append(MixerBlock(dim, mixer, mlp_ratio=mlp_ratio, proj_drop=proj_drop,
                                         drop_path=drop_path[i], norm_layer=norm_layer))
        self.blocks = nn.Sequential(*blocks)
        self.norm = norm_layer(dim) if v2 else nn.Identity()

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        # ContractStage.forward_blocks plus the closing norm, spelled out: TorchScript cannot call super()
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)


class PVTLayout(HierarchicalContract, nn.Module):
    """The PVT v1 layout (`v2=False`) or PVTv2 layout (`v2=True`) around per-stage token mixers; see the module
    docstring for the pieces, the mixer interface and the state-dict layout."""

    contract_stem = 'patch_embed'
    contract_stages = 'stages'

    def __init__(
            self,
            mixer_layers: Sequence[MixerFactory],
            v2: bool = False,
            img_size: Union[int, Sequence[int]] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Sequence[int] = (64, 128, 320, 512),
            depths: Sequence[int] = (2, 2, 2, 2),
            num_heads: Sequence[int] = (1, 2, 5, 8),
            mlp_ratios: Sequence[float] = (8., 8., 4., 4.),
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-6),
            final_norm: bool = False,
    ):
        """
        Args:
            mixer_layers: One mixer factory per stage, `(dim, num_heads, block) -> module` (NHWC in and out).
            v2: The PVTv2 layout instead of PVT v1.
            img_size: Build size: fixes the v1 position embeddings (interpolated at other sizes).
            in_chans: Input image channels.
            num_classes: Classifier outputs (0: no classifier).
            global_pool: Head pooling ('avg', 'max', ... or '' for none).
            embed_dims: Channels per stage.
            depths: Blocks per stage.
            num_heads: Attention heads per stage.
            mlp_ratios: MLP hidden width / dim per stage.
            drop_rate: Dropout after the stem and before the classifier.
            proj_drop_rate: Dropout in the MLPs (mixers take their own).
            drop_path_rate: Stochastic depth rate, increased linearly over all blocks.
            norm_layer: Block norm (LayerNorm with eps 1e-6, as released; the embeddings' norms keep eps 1e-5).
            final_norm: A norm on the last stage output (the LeapLab releases apply none).
        """
        super().__init__()
        n = len(depths)
        if not (len(embed_dims) == len(num_heads) == len(mlp_ratios) == len(mixer_layers) == n):
            raise ValueError(
                f'embed_dims={tuple(embed_dims)}, num_heads={tuple(num_heads)}, mlp_ratios={tuple(mlp_ratios)} and '
                f'the mixers ({len(mixer_layers)}) need one entry per stage of depths={tuple(depths)}.')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.output_fmt = 'NHWC'
        self.num_features = self.head_hidden_size = embed_dims[-1]
        sizes = pvt_stage_sizes(img_size, n)
        self.patch_embed = pvt_patch_embed(v2, True, in_chans, embed_dims[0], None if v2 else sizes[0])
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu').split(list(depths))]
        stages = []
        self.feature_info = []
        for i in range(n):
            stages.append(PVTStage(
                in_chans=embed_dims[i - 1] if i else embed_dims[0],
                dim=embed_dims[i],
                depth=depths[i],
                num_heads=num_heads[i],
                mixer_layer=mixer_layers[i],
                first=i == 0,
                v2=v2,
                pos_size=None if v2 else sizes[i],
                mlp_ratio=mlp_ratios[i],
                proj_drop=proj_drop_rate,
                drop_path=dpr[i],
                norm_layer=norm_layer,
            ))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=4 * 2 ** i, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.norm = norm_layer(self.num_features) if final_norm else nn.Identity()
        self.out_norms = None
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt=self.output_fmt)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        # the official no_weight_decay names only a class token these models do not have: nothing is exempted
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        matcher = super().group_matcher(coarse)
        if not coarse:
            # the v2 stages' closing norms, after their stage's blocks
            blocks = matcher['blocks']
            matcher['blocks'] = blocks[:-1] + [(r'^stages\.(\d+)\.norm', (99997,))] + blocks[-1:]
        return matcher

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = stem_input(x, self.in_chans, 'This PVT-layout model')
        return self.pos_drop(self.patch_embed(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stages(self.forward_stem(x)))


def pvt_official_key(k: str) -> str:
    """An official (LeapLab PVT / PVTv2 release) key in this layout: `patch_embed1` / `pos_embed1` -> the stem
    `patch_embed` (`.pos_embed`), `patch_embed{i}` / `pos_embed{i}` -> `stages.{i - 1}.downsample` (`.pos_embed`),
    `block{i}` -> `stages.{i - 1}.blocks`, `norm{i}` -> `stages.{i - 1}.norm`, the MLP's `dwconv.dwconv` -> `dwconv`,
    `head` -> `head.fc`; other keys are returned as they are."""
    head, _, rest = k.partition('.')
    for prefix in ('patch_embed', 'pos_embed', 'block', 'norm'):
        if head.startswith(prefix) and head[len(prefix):].isdigit():
            stage = int(head[len(prefix):]) - 1
            if prefix == 'block':
                return f'stages.{stage}.blocks.' + rest.replace('mlp.dwconv.dwconv.', 'mlp.dwconv.')
            if prefix == 'norm':
                return f'stages.{stage}.norm.{rest}'
            embed = 'patch_embed' if stage == 0 else f'stages.{stage}.downsample'
            return f'{embed}.{rest}' if prefix == 'patch_embed' else f'{embed}.pos_embed'
    if head == 'head':
        return f'head.fc.{rest}'
    return k
