""" ViTAEv2-VSA: ViTAEv2 with varied-size window attention

A timm implementation of the ViTAEv2+VSA models of
    - `VSA: Learning Varied-Size Window Attention in Vision Transformers` (ECCV 2022) - https://arxiv.org/abs/2204.08446
    - `ViTAEv2: Vision Transformer Advanced by Exploring Inductive Bias for Image Recognition and Beyond` (IJCV 2023)
      - https://arxiv.org/abs/2202.10108

Weights from https://github.com/ViTAE-Transformer/ViTAE-VSA. That repository carries **no license** (its README says
"for research purpose only"): this file is written from the papers and from facts of the released code (key names,
shapes, the rules below); none of its code is copied, and the weights' terms are the authors'.

Structure (four stages at strides 4, 8, 16, 32, each a reduction cell followed by normal cells; tokens channels-last):

* Reduction cell (RC): the pyramid reduction module (PRM), parallel `k x k` convolutions of stride r (4, 2, 2, 2) with
  dilations (1, 2, 3, 4), (1, 2, 3), (1, 2), (1, 2) and kernels 7, 3, 3, 3, each followed by GELU, concatenated along
  channels; a residual 7x7 depthwise position conv (CPE); LayerNorm; VSA from the PRM width to the stage width; plus the
  parallel convolution module (PCM, three grouped 3x3 convs with BN + SiLU between, realising the stride on the cell
  input; "wide" PCM doubles its hidden width); then `+ MLP(LN(x))` with MLP ratio 1. No residual around the attention.
* Normal cell (NC): `x = x + DP(VSA(LN(x + CPE(x)))) + DP(PCM(x))`, then `x = x + DP(MLP(LN(x)))`, PCM with hidden width
  `mlp_ratio * dim`; LayerNorm eps 1e-6 (the reduction cells' norms use PyTorch's default 1e-5, as released).
* No final norm: global average pool, then the classifier.

Rules chosen where the released code is fixed to one input size (the classification code asserts its build size,
builds its sampling grid on CUDA at construction, and pads inside VSA at the bottom/right; the detection backbone
computes the grid per call and pads centred):

* the sampling grid is computed per forward from the map size, so any input size works, on any device;
* VSA padding: bottom/right with the classification code's offset divisors for the classification models; centred
  with the detection code's (swapped) divisors for `features_only=True` and the mm backbone, what the detection
  checkpoints were trained with (`vsa_padding`, `vsa_offset_rule`); no padding happens at 224 px or at multiples of 224;
* PRM padding: the official `ceil(((k - 1) d + 1 - r) / 2)`, plus the official extra pixel on each side when the map is
  not a multiple of the stride, wherever that gives the PCM branch's size (`ceil(L / r)`; the official code fails
  otherwise); at 224 px and the detection inputs (multiples of 32) nothing extra is padded;
* stochastic depth: the released schedule (`official_dpr=True`), whose per-stage slices of
  `linspace(0, rate, sum(depths))` start at the previous stage's depth instead of the running sum.
"""
import math
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, Mlp, register_notrace_function, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from hiervit.backbones._pretrained import (
    check_checkpoint_keys, convert_official_on_load, model_description, prefetch_pretrained,
)
from hiervit.backbones.layers.contract import ContractStage, HierarchicalContract
from hiervit.backbones.layers.skeleton import stem_input
from hiervit.backbones.layers.vsa import VSAttention

__all__ = ['ViTAEv2VSA', 'ReductionCell', 'NormalCell', 'PyramidReduction']


@register_notrace_function
def prm_padding(H: int, W: int, stride: int) -> List[int]:
    """Extra zero padding `[left, right, top, bottom]` of a PRM input (see the module docstring). An FX leaf."""
    pad: List[int] = []
    for size in (W, H):
        # every PRM conv maps L to floor((L + 1) / r) with its own padding; the official +1 gives floor((L + 3) / r)
        target = -(-size // stride)
        extra = 1 if (size + 1) // stride < target and (size + 3) // stride == target else 0
        pad += [extra, extra]
    return pad


# leaves for plain torch.fx.symbolic_trace too (timm's tracer knows them already); fx.wrap acts per calling module
torch.fx.wrap('prm_padding')
torch.fx.wrap('stem_input')


class PyramidReduction(nn.Module):
    """PRM: parallel strided dilated convolutions (+ GELU), concatenated along channels. NCHW in and out."""

    def __init__(self, in_chans: int, embed_dim: int, kernel_size: int, stride: int, dilations: Sequence[int]):
        super().__init__()
        self.stride = stride
        self.convs = nn.ModuleList([
            nn.Conv2d(in_chans, embed_dim, kernel_size, stride=stride, dilation=d,
                      padding=math.ceil(((kernel_size - 1) * d + 1 - stride) / 2))
            for d in dilations])
        self.out_chans = embed_dim * len(dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, prm_padding(x.shape[2], x.shape[3], self.stride))
        outs: List[torch.Tensor] = []
        for conv in self.convs:
            outs.append(F.gelu(conv(x)))
        return torch.cat(outs, dim=1)


def _pcm(in_chans: int, mid1: int, mid2: int, out_chans: int, strides: Sequence[int], groups: int) -> nn.Sequential:
    """PCM: three grouped 3x3 convs in -> mid1 -> mid2 -> out with BN + SiLU between (indices 0..6 as the official
    `PCM.*` keys). NCHW."""
    return nn.Sequential(
        nn.Conv2d(in_chans, mid1, 3, stride=strides[0], padding=1, groups=groups),
        nn.BatchNorm2d(mid1),
        nn.SiLU(inplace=True),
        nn.Conv2d(mid1, mid2, 3, stride=strides[1], padding=1, groups=groups),
        nn.BatchNorm2d(mid2),
        nn.SiLU(inplace=True),
        nn.Conv2d(mid2, out_chans, 3, stride=strides[2], padding=1, groups=groups),
    )


class ReductionCell(nn.Module):
    """RC: PRM (+ CPE) -> LN -> VSA to the stage width, plus the strided PCM of the input, then `+ MLP(LN(x))`.

    Channels-last in (the image or the previous stage) and out, `[B, H, W, C]` -> `[B, H / r, W / r, token_dim]`.
    """

    def __init__(
            self,
            in_chans: int,
            embed_dim: int,
            token_dim: int,
            stride: int,
            kernel_size: int,
            dilations: Sequence[int],
            num_heads: int,
            groups: int,
            wide_pcm: bool = False,
            window_size: int = 7,
            cpe: bool = True,
            mlp_ratio: float = 1.,
            proj_drop: float = 0.,
            vsa_padding: str = 'corner',
            vsa_offset_rule: str = 'classification',
            attn_backend: Optional[str] = None,
    ):
        super().__init__()
        if stride not in (2, 4):
            raise ValueError(f'ReductionCell strides are 2 or 4 (the PCM is two or three convs), got {stride}.')
        self.prm = PyramidReduction(in_chans, embed_dim, kernel_size, stride, dilations)
        dim = self.prm.out_chans
        self.cpe = nn.Conv2d(dim, dim, 7, padding=3, groups=dim) if cpe else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = VSAttention(
            dim, num_heads, out_dim=token_dim, window_size=window_size, proj_drop=proj_drop, padding=vsa_padding,
            offset_rule=vsa_offset_rule, backend=attn_backend)
        hidden = 2 * token_dim if wide_pcm else embed_dim
        strides = (2, 2, 1) if stride == 4 else (2, 1, 1)
        self.pcm = _pcm(in_chans, hidden, hidden, token_dim, strides, groups)
        self.norm2 = nn.LayerNorm(token_dim)
        self.mlp = Mlp(token_dim, int(token_dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW for the convs
        y = self.prm(x)
        if self.cpe is not None:
            y = y + self.cpe(y)
        y = self.attn(self.norm1(y.permute(0, 2, 3, 1)))  # NCHW -> NHWC
        y = y + self.pcm(x).permute(0, 2, 3, 1)
        return y + self.mlp(self.norm2(y))


class NormalCell(nn.Module):
    """NC: `x + DP(VSA(LN(x + CPE(x)))) + DP(PCM(x))`, then `x + DP(MLP(LN(x)))`. Channels-last in and out."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            groups: int,
            mlp_ratio: float = 4.,
            window_size: int = 7,
            cpe: bool = True,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
            vsa_padding: str = 'corner',
            vsa_offset_rule: str = 'classification',
            attn_backend: Optional[str] = None,
    ):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.cpe = nn.Conv2d(dim, dim, 7, padding=3, groups=dim) if cpe else None
        self.norm1 = norm_layer(dim)
        self.attn = VSAttention(
            dim, num_heads, window_size=window_size, proj_drop=proj_drop, padding=vsa_padding,
            offset_rule=vsa_offset_rule, backend=attn_backend)
        self.pcm = _pcm(dim, hidden, dim, dim, (1, 1, 1), groups)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, hidden, act_layer=nn.GELU, drop=proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_nchw = x.permute(0, 3, 1, 2)
        y = x if self.cpe is None else x + self.cpe(x_nchw).permute(0, 2, 3, 1)
        y = self.attn(self.norm1(y))
        x = x + self.drop_path(y) + self.drop_path(self.pcm(x_nchw).permute(0, 2, 3, 1))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViTAEStage(ContractStage):
    """One stage: the reduction cell (`downsample`), then the normal cells (`blocks`). Channels-last in and out."""

    def __init__(self, reduction: ReductionCell, blocks: List[NormalCell]):
        super().__init__(downsample_first=True)
        self.downsample = reduction
        self.blocks = nn.Sequential(*blocks)


def official_drop_path_rates(rate: float, depths: Sequence[int]) -> List[List[float]]:
    """The released per-stage drop-path rates: slices of `linspace(0, rate, sum(depths))` starting at the previous
    stage's depth (not the running sum), as the official model builds them."""
    dpr = torch.linspace(0, rate, sum(depths), device='cpu').tolist()
    return [dpr[(depths[i - 1] if i else 0):(depths[i - 1] if i else 0) + d] for i, d in enumerate(depths)]


class ViTAEv2VSA(HierarchicalContract, nn.Module):
    """ViTAEv2 with VSA: four stages of a reduction cell and normal cells, average pool, classifier (no final norm).

    The timm contract comes from `HierarchicalContract`; the first reduction cell is the stem (`group_matcher`).
    """
    contract_stem = 'stages.0.downsample'
    contract_stages = 'stages'

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Sequence[int] = (64, 64, 128, 256),
            token_dims: Sequence[int] = (64, 128, 256, 512),
            depths: Sequence[int] = (2, 2, 8, 2),
            num_heads: Sequence[int] = (2, 4, 8, 16),
            rc_heads: Sequence[int] = (2, 2, 4, 8),
            nc_groups: Sequence[int] = (1, 32, 64, 128),
            rc_groups: Sequence[int] = (1, 16, 32, 64),
            strides: Sequence[int] = (4, 2, 2, 2),
            kernel_sizes: Sequence[int] = (7, 3, 3, 3),
            dilations: Sequence[Sequence[int]] = ((1, 2, 3, 4), (1, 2, 3), (1, 2), (1, 2)),
            wide_pcm: bool = False,
            window_size: int = 7,
            mlp_ratio: float = 4.,
            cpe: bool = True,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            official_dpr: bool = True,
            vsa_padding: str = 'corner',
            vsa_offset_rule: str = 'classification',
            attn_backend: Optional[str] = None,
    ):
        """
        Args:
            in_chans: Input image channels.
            num_classes: Classifier outputs (0: no classifier).
            global_pool: Head pooling ('avg', 'max', ... or '' for none).
            embed_dims: PRM channels per dilation (the official `embed_dims`), per stage.
            token_dims: Stage widths (the official `token_dims`).
            depths: Normal cells per stage (`NC_depth`).
            num_heads: Heads of the normal cells (`NC_heads`).
            rc_heads: Heads of the reduction cells (`RC_heads`).
            nc_groups: PCM groups of the normal cells (`NC_group`).
            rc_groups: PCM groups of the reduction cells (`RC_group`).
            strides: Reduction strides (`downsample_ratios`).
            kernel_sizes: PRM kernel sizes.
            dilations: PRM dilations per stage.
            wide_pcm: PCM hidden width 2 * token_dim in the reduction cells (the 48M and B models).
            window_size: VSA default window.
            mlp_ratio: MLP and normal-cell PCM hidden width / dim (reduction cells: 1).
            cpe: Residual 7x7 depthwise position convs before each VSA.
            drop_rate: Dropout before the classifier.
            proj_drop_rate: Dropout after the VSA projections and in the MLPs (the official `drop_rate`).
            drop_path_rate: Stochastic depth of the normal cells.
            official_dpr: The released per-stage drop-path slices (see `official_drop_path_rates`); False: the usual
                linear increase over all normal cells.
            vsa_padding: 'corner' (classification code) or 'center' (detection backbone) padding in VSA.
            vsa_offset_rule: 'classification' or 'detection' offset divisors in VSA.
            attn_backend: Force a backend of the sampled-window op (None: the op's dispatcher chooses).
        """
        super().__init__()
        num_stages = len(depths)
        per_stage = dict(embed_dims=embed_dims, token_dims=token_dims, num_heads=num_heads, rc_heads=rc_heads,
                         nc_groups=nc_groups, rc_groups=rc_groups, strides=strides, kernel_sizes=kernel_sizes,
                         dilations=dilations)
        wrong = [f'{k}={tuple(v)}' for k, v in per_stage.items() if len(v) != num_stages]
        if wrong:
            raise ValueError(f'{", ".join(wrong)}: need one entry per stage of depths={tuple(depths)}.')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = token_dims[-1]
        self.depths = tuple(depths)
        self.official_dpr = official_dpr
        if official_dpr:
            dpr = official_drop_path_rates(drop_path_rate, depths)
        else:
            dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu').split(list(depths))]
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        vsa = dict(vsa_padding=vsa_padding, vsa_offset_rule=vsa_offset_rule, attn_backend=attn_backend)

        self.stages = nn.ModuleList()
        self.feature_info = []
        reduction, prev = 1, in_chans
        for i in range(num_stages):
            rc = ReductionCell(
                prev, embed_dims[i], token_dims[i], strides[i], kernel_sizes[i], dilations[i], rc_heads[i],
                rc_groups[i], wide_pcm=wide_pcm, window_size=window_size, cpe=cpe, proj_drop=proj_drop_rate, **vsa)
            blocks = [
                NormalCell(
                    token_dims[i], num_heads[i], nc_groups[i], mlp_ratio=mlp_ratio, window_size=window_size, cpe=cpe,
                    proj_drop=proj_drop_rate, drop_path=dpr[i][j], norm_layer=norm_layer, **vsa)
                for j in range(depths[i])]
            self.stages.append(ViTAEStage(rc, blocks))
            reduction *= strides[i]
            prev = token_dims[i]
            self.feature_info.append(dict(num_chs=token_dims[i], reduction=reduction, module=f'stages.{i}'))
        self.output_fmt = 'NHWC'
        self.norm = nn.Identity()  # no final norm (the contract's `norm`)
        self.out_norms = None  # the official dense backbone adds no output norms
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt=self.output_fmt)
        self._init_weights()

    def _init_weights(self) -> None:
        # As released: truncated-normal Linear layers (MLPs, head); the VSA projections and VSR branches are 1x1
        # convs there and keep PyTorch's default init, which `reset_parameters` of a Linear of that fan-in equals.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, VSAttention):
                for proj in (m.qkv, m.proj, m.sampling_offsets, m.sampling_scales):
                    proj.reset_parameters()

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith('relative_position_bias_table')}

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        # the first reduction cell is the stem: the image goes in channels-last
        return stem_input(x, self.in_chans, 'ViTAEv2-VSA').permute(0, 2, 3, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)


_OFFICIAL_SUBKEYS = (('.PRM.convs.', '.prm.convs.'), ('.pos.', '.cpe.'), ('.PCM.', '.pcm.'))


def _official_key(k: str) -> str:
    """An official key (`layers.{i}.RC.*`, `layers.{i}.NC.{j}.*`, `head.*`) in this model's layout."""
    if k.startswith('head.'):
        return 'head.fc.' + k[len('head.'):]
    if not k.startswith('layers.'):
        return k
    _, stage, cell, rest = k.split('.', 3)
    if cell == 'RC':
        k = f'stages.{stage}.downsample.{rest}'
    else:  # NC.{j}.*
        block, rest = rest.split('.', 1)
        k = f'stages.{stage}.blocks.{block}.{rest}'
    for old, new in _OFFICIAL_SUBKEYS:
        k = k.replace(old, new)
    if '.prm.convs.' in k:  # official `convs.{d}.0.*` (conv + GELU in a Sequential)
        head, param = k.rsplit('.', 1)
        k = head[:-len('.0')] + '.' + param if head.endswith('.0') else k
    return k.replace('.sampling_offsets.2.', '.sampling_offsets.').replace('.sampling_scales.2.', '.sampling_scales.')


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: 'ViTAEv2VSA') -> Dict[str, torch.Tensor]:
    """Convert an official ViTAEv2-VSA checkpoint (the classification release, EMA weights first, or the backbone of
    an mmdet checkpoint) to this model's layout, or raise a ValueError saying what does not fit."""
    for key in ('state_dict_ema', 'model_ema', 'state_dict', 'model'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    target = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        if k.endswith('relative_position_index'):
            continue  # a fixed buffer, recomputed by the op
        k = _official_key(k)
        if k in target and v.ndim == 4 and target[k].ndim == 2:
            v = v.flatten(1)  # the official 1x1 convs (qkv, proj, VSR branches) as Linear weights
        out[k] = v
    if 'head.fc.weight' not in target:
        out = {k: v for k, v in out.items() if not k.startswith('head.fc.')}
    elif 'head.fc.weight' not in out:
        raise ValueError('This checkpoint has no classifier (a detection backbone?); create the model with '
                         'num_classes=0 or features_only=True to load it.')
    first_conv = (getattr(model, 'pretrained_cfg', None) or {}).get('first_conv', '') + '.weight'
    # the official dense backbone has no per-output norms, so there is no argument to name for them
    check_checkpoint_keys(
        out, target, model_description(model, 'ViTAEv2-VSA'), reshapable=(first_conv,), norms_arg=None,
        variants='The variants differ in widths, depths, heads and wide_pcm; see '
                 'hiervit.backbones.vitae_vsa._VARIANT_ARGS.')
    return out


def _cfg(url: Any = '', **kwargs) -> Dict[str, Any]:
    # official models.py `_cfg`: crop 0.9, bicubic, ImageNet mean/std
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': .9, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stages.0.downsample.prm.convs.0', 'classifier': 'head.fc',
        'license': 'none (no license file; "for research purpose only")',
        'origin_url': 'https://github.com/ViTAE-Transformer/ViTAE-VSA', 'paper_ids': 'arXiv:2204.08446',
        'paper_name': 'VSA: Learning Varied-Size Window Attention in Vision Transformers', **kwargs,
    }


# The README's OneDrive share links (1drv.ms/u/s!<id>), as OneDrive API downloads; they all end in `/content`, so each
# gets its own cache file name. The files hold `model`, `state_dict_ema`, ...; the EMA weights are the released ones.
_URL = 'https://api.onedrive.com/v1.0/shares/s!{}/root/content'

default_cfgs = generate_default_cfgs({
    'vitaev2_vsa_s.in1k': _cfg(url=(_URL.format('AimBgYV7JjTlgcgB0Xlyc3U4WO11AQ'), 'vitaev2_vsa_s_in1k.pth')),
    'vitaev2_vsa_48m.in1k': _cfg(url=(_URL.format('AimBgYV7JjTlgcgCOt1UwhNQRfO0bw'), 'vitaev2_vsa_48m_in1k.pth')),
    'vitaev2_vsa_b.untrained': _cfg(notes=(
        'no weights: the README lists ViTAEv2-B+VSA (ImageNet-22k pre-trained) as "coming soon"; never released',)),
})

# Architecture arguments of every entrypoint (official models.py) and the official ImageNet drop path (training
# scripts: S the main.py default 0.1, 48M --drop-path 0.25; B: no script released, the 48M value is assumed).
_VARIANT_ARGS: Dict[str, Dict[str, Any]] = {
    'vitaev2_vsa_s': dict(
        embed_dims=(64, 64, 128, 256), token_dims=(64, 128, 256, 512), depths=(2, 2, 8, 2), num_heads=(2, 4, 8, 16),
        rc_heads=(2, 2, 4, 8), wide_pcm=False, drop_path_rate=0.1),
    'vitaev2_vsa_48m': dict(
        embed_dims=(96, 96, 192, 384), token_dims=(96, 192, 384, 768), depths=(2, 2, 11, 2), num_heads=(3, 6, 12, 24),
        rc_heads=(3, 6, 12, 24), wide_pcm=True, drop_path_rate=0.25),
    'vitaev2_vsa_b': dict(
        embed_dims=(128, 128, 256, 512), token_dims=(128, 256, 512, 1024), depths=(2, 2, 12, 2),
        num_heads=(4, 8, 16, 32), rc_heads=(4, 8, 16, 32), wide_pcm=True, drop_path_rate=0.25),
}


def _create_variant(variant: str, pretrained: bool, kwargs: Dict[str, Any]) -> ViTAEv2VSA:
    kwargs = dict(_VARIANT_ARGS[variant], **kwargs)
    if kwargs.get('features_only', False):
        # dense tasks: the detection backbone's padding and offset rule (what its checkpoints were trained with)
        kwargs.setdefault('vsa_padding', 'center')
        kwargs.setdefault('vsa_offset_rule', 'detection')
    out_indices = kwargs.pop('out_indices', tuple(range(len(kwargs['depths']))))
    feature_cfg = dict(out_indices=out_indices, feature_cls=kwargs.pop('feature_cls', 'getter'))
    prefetch_pretrained(variant, pretrained, kwargs)
    model = build_model_with_cfg(
        ViTAEv2VSA, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, feature_cfg=feature_cfg, **kwargs)
    return convert_official_on_load(model, checkpoint_filter_fn)


@register_model
def vitaev2_vsa_s(pretrained: bool = False, **kwargs) -> ViTAEv2VSA:
    """ViTAEv2*-S+VSA @ 224, ImageNet-1k (README: 82.7 top-1)."""
    return _create_variant('vitaev2_vsa_s', pretrained, kwargs)


@register_model
def vitaev2_vsa_48m(pretrained: bool = False, **kwargs) -> ViTAEv2VSA:
    """ViTAEv2*-48M+VSA (wide PCM) @ 224, ImageNet-1k (README: 83.9 top-1)."""
    return _create_variant('vitaev2_vsa_48m', pretrained, kwargs)


@register_model
def vitaev2_vsa_b(pretrained: bool = False, **kwargs) -> ViTAEv2VSA:
    """ViTAEv2*-B+VSA (wide PCM) @ 224; its ImageNet-22k weights were never released."""
    return _create_variant('vitaev2_vsa_b', pretrained, kwargs)
