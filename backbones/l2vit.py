""" L²ViT: The Linear Attention Resurrection in Vision Transformer

A timm-compatible implementation of:
    The Linear Attention Resurrection in Vision Transformer (L²ViT)
    - https://arxiv.org/abs/2501.16182

Architecture and released weights from https://github.com/ChuanyangZheng/L2ViT (classification/models/l2vit.py with
`block_type='mix_local_enhanced_vit'`, `conv_stem=True`; object_detection/ and semantic_segmentation/ backbones).
Original code: Copyright (c) Chuanyang Zheng, released under the MIT license.

The model computes what the released model computes, so the released classification weights (EMA) and the backbone
part of the released mmdet/mmseg weights load through `checkpoint_filter_fn`:
  * conv stem: Conv3x3 s2, BN, ReLU, Conv3x3 s2, BN (the input zero-padded bottom/right to a multiple of 4 first),
    then LayerNorm; between stages LayerNorm, zero-pad to even, Conv2x2 s2;
  * inside a stage the blocks alternate: even blocks local window attention (LWA: 3x3 depthwise CPE, window
    attention without bias or shift through `hiervit.kernels.window`, the normed map zero-padded bottom/right to the
    window *before* the qkv projection as released, a second CPE, MLP), odd blocks linear global attention (LGA: CPE,
    ReLU-kernel linear attention with the `clamp` normaliser of `hiervit.kernels.linear` (clamp 100, learnable
    per-head temperature), the local concentration module DWConv7x7-GELU-BN-DWConv7x7, MLP);
  * final LayerNorm, token mean, linear head. The dense backbones add one LayerNorm per output (`out_norms=True`).
"""
from typing import Any, Dict, Sequence, Set, Tuple, Union

from torch.jit import Final

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, Mlp, calculate_drop_path_rates, trunc_normal_
from timm.models import generate_default_cfgs, register_model, register_notrace_function

from hiervit.backbones._pretrained import build_with_official_layouts, check_checkpoint_keys, model_description
from hiervit.backbones.layers.contract import ContractStage, HierarchicalContract
from hiervit.kernels.linear import linear_attention_op
from hiervit.kernels.window import window_attention_op

__all__ = ['L2ViT']


@register_notrace_function  # reason: validates concrete shapes (public name: FX only auto-wraps non-underscore names)
def check_image_input(x: torch.Tensor, in_chans: int) -> None:
    """Raise a ValueError/TypeError naming the fix when `x` is not an NCHW batch with `in_chans` channels."""
    if torch.jit.is_scripting():  # typed as a Tensor there; the messages below do not compile
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'L2ViT expects a torch.Tensor image batch, got {type(x).__name__}.')
    if x.ndim != 4:
        raise ValueError(f'L2ViT expects an NCHW image batch (4 dims), got shape {tuple(x.shape)}.')
    if x.shape[1] != in_chans:
        raise ValueError(
            f'Input has {x.shape[1]} channels but the model was built with in_chans={in_chans}; '
            f'create it with in_chans={x.shape[1]} (pretrained stems are adapted) or convert the input.')


@register_notrace_function  # reason: the padding depends on the concrete size
def pad_to_multiple(x: torch.Tensor, multiple: int, channels_last: bool) -> torch.Tensor:
    """Zero-pad the spatial axes bottom/right to a multiple of `multiple` (NHWC if `channels_last`, else NCHW)."""
    if channels_last:
        pad_b, pad_r = -x.shape[1] % multiple, -x.shape[2] % multiple
        pad = [0, 0, 0, pad_r, 0, pad_b]
    else:
        pad_b, pad_r = -x.shape[2] % multiple, -x.shape[3] % multiple
        pad = [0, pad_r, 0, pad_b]
    if not (pad_b or pad_r):
        return x
    return F.pad(x, pad)


@register_notrace_function  # reason: the crop depends on the concrete size
def crop_to(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Crop an NHWC map bottom/right to H x W (the inverse of `pad_to_multiple`)."""
    return x if (x.shape[1], x.shape[2]) == (H, W) else x[:, :H, :W]


# leaves for plain torch.fx.symbolic_trace too (timm's tracer knows them already)
torch.fx.wrap('check_image_input')
torch.fx.wrap('pad_to_multiple')
torch.fx.wrap('crop_to')


class CPE(nn.Module):
    """Convolutional position encoding: a 3x3 depthwise conv of the NHWC map (added by the block)."""

    def __init__(self, dim: int, kernel_size: int = 3, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class LocalWindowAttention(nn.Module):
    """Multi-head attention inside non-overlapping `window_size` windows: no relative bias, no shift.

    The map is zero-padded bottom/right to the window *before* the qkv projection, as released (padded tokens take
    part with the qkv bias as their q, k, v), and cropped after the output projection.
    """

    num_heads: Final[int]
    window_size: Final[int]
    scale: Final[float]

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, qkv_bias: bool = True, device=None,
                 dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if dim % num_heads:
            raise ValueError(f'dim={dim} must be divisible by num_heads={num_heads}.')
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, W, C] (NHWC) -> [B, H, W, C]."""
        B, H, W, C = x.shape
        x = pad_to_multiple(x, self.window_size, channels_last=True)
        Hp, Wp = x.shape[1], x.shape[2]
        # [B, Hp, Wp, 3C] -> 3 x [B, Hp, Wp, heads, hd] (views)
        q, k, v = self.qkv(x).reshape(B, Hp, Wp, 3, self.num_heads, C // self.num_heads).unbind(3)
        w = self.window_size
        out = window_attention_op(q, k, v, [w, w], [0, 0], [0, 0, 0, 0], True, None, self.scale)
        out = self.proj(out.reshape(B, Hp, Wp, C))
        return crop_to(out, H, W)


class LinearGlobalAttention(nn.Module):
    """L²ViT's linear attention over the whole map: ReLU feature maps, then
    `temperature * relu(q) (relu(k)^T v) / clamp(relu(q) . sum(relu(k)), min=100)` per head."""

    num_heads: Final[int]
    clamp_min: Final[float]

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, clamp_min: float = 100., device=None,
                 dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if dim % num_heads:
            raise ValueError(f'dim={dim} must be divisible by num_heads={num_heads}.')
        self.num_heads = num_heads
        self.clamp_min = clamp_min
        self.temperature = nn.Parameter(torch.full((num_heads, 1, 1), (dim // num_heads) ** -0.5, **dd))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, W, C] (NHWC) -> [B, H, W, C]."""
        B, H, W, C = x.shape
        # [B, N, 3, heads, hd] -> 3 x [B, heads, N, hd]
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = linear_attention_op(
            F.relu(q), F.relu(k), v, self.temperature.reshape(-1), 'clamp', 1e-6, self.clamp_min, 1.0)
        return self.proj(out.transpose(1, 2).reshape(B, H, W, C))


class LocalConcentration(nn.Module):
    """The local concentration module (LCM): DWConv7x7, GELU, BatchNorm, DWConv7x7 on the NHWC map."""

    def __init__(self, dim: int, kernel_size: int = 7, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.conv1 = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, **dd)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(dim, **dd)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
        x = self.conv2(self.bn(self.act(self.conv1(x))))
        return x.permute(0, 2, 3, 1)


class LWABlock(nn.Module):
    """Local window attention block: CPE, pre-norm window attention, CPE, pre-norm MLP (NHWC in and out)."""

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, mlp_ratio: float = 4., qkv_bias: bool = True,
                 drop_path: float = 0., device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.cpe = nn.ModuleList([CPE(dim, **dd), CPE(dim, **dd)])
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.attn = LocalWindowAttention(dim, num_heads, window_size, qkv_bias=qkv_bias, **dd)
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.cpe[0](x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.cpe[1](x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class LGABlock(nn.Module):
    """Linear global attention block: CPE, pre-norm linear attention, pre-norm LCM, pre-norm MLP (NHWC)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4., qkv_bias: bool = True,
                 drop_path: float = 0., device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.cpe = nn.ModuleList([CPE(dim, **dd)])
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.attn = LinearGlobalAttention(dim, num_heads, qkv_bias=qkv_bias, **dd)
        self.norm3 = nn.LayerNorm(dim, **dd)
        self.lcm = LocalConcentration(dim, **dd)
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.cpe[0](x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.lcm(self.norm3(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvStem(nn.Module):
    """Conv3x3 s2, BN, ReLU, Conv3x3 s2, BN, then LayerNorm; NCHW image in, NHWC map out (stride 4)."""

    def __init__(self, in_chans: int, dim: int, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1, **dd),
            nn.BatchNorm2d(dim // 2, **dd),
            nn.ReLU(),
            nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1, **dd),
            nn.BatchNorm2d(dim, **dd),
        )
        self.norm = nn.LayerNorm(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(pad_to_multiple(x, 4, channels_last=False))  # released: pad to the patch size 4 first
        return self.norm(x.permute(0, 2, 3, 1))


class Downsample(nn.Module):
    """LayerNorm, zero-pad to even, Conv2x2 s2 (NHWC in and out)."""

    def __init__(self, in_dim: int, dim: int, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm = nn.LayerNorm(in_dim, **dd)
        self.proj = nn.Conv2d(in_dim, dim, 2, stride=2, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_multiple(self.norm(x).permute(0, 3, 1, 2), 2, channels_last=False)
        return self.proj(x).permute(0, 2, 3, 1)


class L2ViTStage(ContractStage):
    """Optional downsample, then blocks alternating LWA (even index) and LGA (odd index)."""

    def __init__(
            self,
            in_dim: int,
            dim: int,
            depth: int,
            num_heads: int,
            downsample: bool = True,
            window_size: int = 7,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            drop_path: Union[float, Sequence[float]] = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__(downsample_first=True)
        dd = {'device': device, 'dtype': dtype}
        self.downsample = Downsample(in_dim, dim, **dd) if downsample else nn.Identity()
        dpr = drop_path if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.Sequential(*[
            LWABlock(dim, num_heads, window_size, mlp_ratio, qkv_bias, dpr[i], **dd) if i % 2 == 0 else
            LGABlock(dim, num_heads, mlp_ratio, qkv_bias, dpr[i], **dd)
            for i in range(depth)
        ])


class L2ViT(HierarchicalContract, nn.Module):
    """L²ViT: conv stem, four stages of alternating local-window and linear-global attention, LayerNorm, head.

    Stages run on NHWC maps (`output_fmt = 'NHWC'` for `forward_features`); `forward_intermediates` returns NCHW by
    default, with strides 4/8/16/32. `out_norms=True` adds the per-output LayerNorms of the released mmdet/mmseg
    backbone (`norm{i}`); `forward_intermediates(norm=True)` then applies them. Without them, `norm=True` applies the
    final norm to the last stage output only, as in timm.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Tuple[int, ...] = (2, 2, 6, 2),
            embed_dims: Tuple[int, ...] = (96, 192, 384, 768),
            num_heads: Tuple[int, ...] = (3, 6, 12, 24),
            window_size: int = 7,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            out_norms: bool = False,
            head_init_scale: float = 1.,
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
            depths: Blocks per stage (even blocks LWA, odd blocks LGA).
            embed_dims: Channels per stage.
            num_heads: Attention heads per stage.
            window_size: Local window side (7; 12 for the released 384 model).
            mlp_ratio: MLP expansion.
            qkv_bias: Bias in the qkv projections.
            out_norms: Add the dense-task per-output LayerNorms.
            head_init_scale: Multiplies the initial classifier weights (released default 1).
            drop_rate: Head dropout rate.
            drop_path_rate: Stochastic depth rate, linear over all blocks.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        num_stages = len(depths)
        if not (len(embed_dims) == len(num_heads) == num_stages):
            raise ValueError(
                f'depths, embed_dims and num_heads need one entry per stage, got {len(depths)}, {len(embed_dims)}, '
                f'{len(num_heads)}.')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.window_size = window_size
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.drop_rate = drop_rate
        self.output_fmt = 'NHWC'

        self.stem = ConvStem(in_chans, embed_dims[0], **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages = []
        self.feature_info = []
        for i in range(num_stages):
            stages.append(L2ViTStage(
                embed_dims[i - 1] if i > 0 else embed_dims[0],
                embed_dims[i],
                depths[i],
                num_heads[i],
                downsample=i > 0,
                window_size=window_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=dpr[i],
                **dd,
            ))
            self.feature_info += [dict(num_chs=embed_dims[i], reduction=2 ** (i + 2), module=f'stages.{i}')]
        self.stages = nn.Sequential(*stages)
        self.out_norms = nn.ModuleList([nn.LayerNorm(d, **dd) for d in embed_dims]) if out_norms else None
        self.norm = nn.LayerNorm(self.num_features, **dd)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt='NHWC', **dd)
        self.apply(self._init_weights)
        if isinstance(self.head.fc, nn.Linear):
            with torch.no_grad():
                self.head.fc.weight.mul_(head_init_scale)
                self.head.fc.bias.mul_(head_init_scale)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Released init: truncated-normal weights, zero bias for every Linear and Conv2d.
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        # The release applies its optimizer factory's defaults: 1-d parameters and biases are exempt (timm's factory
        # does that by itself); the [heads, 1, 1] temperatures are not 1-d there, so they decay as released.
        return set()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, self.in_chans)
        return self.stem(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.forward_stem(x))
        return self.norm(x)


def _convert_key(k: str) -> str:
    """Map one released key (classification `L2ViT` or the mmdet/mmseg backbone) to this module's names."""
    parts = k.split('.')
    if parts[0] == 'downsample_layers':
        i, rest = int(parts[1]), parts[2:]
        if i == 0:  # stem: downsample_layers.0.proj.proj.{0,1,3,4}.*, downsample_layers.0.norm.*
            return '.'.join(['stem', 'proj'] + rest[2:] if rest[:2] == ['proj', 'proj'] else ['stem'] + rest)
        return '.'.join(['stages', str(i), 'downsample'] + rest)
    if parts[0] == 'stages':
        rest = '.'.join(parts[3:]).replace('local_mp.', 'lcm.')
        return f'stages.{parts[1]}.blocks.{parts[2]}.{rest}'
    if len(parts) == 2 and parts[0][:4] == 'norm' and parts[0][4:].isdigit():  # dense backbone `norm{i}`
        return f'out_norms.{parts[0][4:]}.{parts[1]}'
    if parts[0] == 'head':
        return '.'.join(['head', 'fc'] + parts[1:])
    return k


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: L2ViT) -> Dict[str, torch.Tensor]:
    """Convert released L²ViT weights to this model's names and check them against `model`.

    Accepts the released classification checkpoints (`{'model': ..., 'model_ema': ...}`: the EMA weights are taken
    when present, as the release evaluates and publishes them), the mmdet/mmseg checkpoints (`{'state_dict': ...}`
    with a `backbone.` prefix; neck and heads are dropped, `norm{i}` become `out_norms.{i}`) and already-converted
    state dicts. Modules a source does not have keep the model's initial values: the classifier and final norm for
    dense-task checkpoints, the output norms for classification checkpoints and the ones a dense config leaves out
    (RetinaNet uses outputs 1-3). Any other missing, unexpected or mis-shaped key raises a ValueError.
    """
    for wrapper in ('model_ema', 'state_dict_ema', 'model', 'state_dict'):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
            break
    state_dict = dict(state_dict)
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    if any(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    if any(k.startswith('downsample_layers.') for k in state_dict):
        state_dict = {_convert_key(k): v for k, v in state_dict.items()}

    target = model.state_dict()
    for prefix in ('norm.', 'head.'):
        if not any(k.startswith(prefix) for k in state_dict):
            state_dict.update({k: v for k, v in target.items() if k.startswith(prefix)})
    state_dict.update({k: v for k, v in target.items() if k.startswith('out_norms.') and k not in state_dict})

    # The classifier and the first conv may legitimately differ (num_classes / in_chans adaptation happens later in
    # timm's load_pretrained); everything else must match exactly.
    check_checkpoint_keys(state_dict, target, model_description(model, 'L2ViT'), reshapable=('stem.proj.0.weight',),
                          norms_arg='out_norms')
    return state_dict


def _create_l2vit(variant: str, pretrained: bool = False, **kwargs) -> L2ViT:
    out_indices = kwargs.pop('out_indices', tuple(range(len(kwargs.get('depths', (2, 2, 6, 2))))))
    feature_cfg = dict(out_indices=out_indices, feature_cls=kwargs.pop('feature_cls', 'getter'),
                       **kwargs.pop('feature_cfg', {}))
    if feature_cfg['feature_cls'] == 'fx':
        feature_cfg['output_fmt'] = 'NHWC'  # the graph returns the stages' own (channels-last) maps
    if kwargs.get('features_only', False) and feature_cfg['feature_cls'] == 'getter':
        # dense-task backbones: one LayerNorm per output, as the released mmdet/mmseg backbone (`norm{i}`); the
        # getter wrapper runs forward_intermediates(norm=True), NCHW
        kwargs.setdefault('out_norms', True)
        feature_cfg.setdefault('norm', True)
    return build_with_official_layouts(L2ViT, variant, pretrained, checkpoint_filter_fn, feature_cfg=feature_cfg,
                                       **kwargs)


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': 0.875,  # released eval: resize 256, center crop 224 (datasets.py, crop_pct 224 / 256)
        'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.proj.0',
        'classifier': 'head.fc',
        'license': 'mit',
        'origin_url': 'https://github.com/ChuanyangZheng/L2ViT',
        'paper_ids': 'arXiv:2501.16182',
        'paper_name': 'The Linear Attention Resurrection in Vision Transformer',
        **kwargs,
    }


_RELEASE = 'https://github.com/ChuanyangZheng/L2ViT/releases/download/v1.0/'
_EMA_NOTE = ('Released "checkpoint-best-ema" file: it holds the training weights (model) and the EMA weights '
             '(model_ema); checkpoint_filter_fn loads model_ema.',)
_FT_NOTE = ('Released 22k->1k fine-tune "checkpoint-best" file with model and model_ema; checkpoint_filter_fn loads '
            'model_ema (an assumption: the release does not say which one the table reports).',)

default_cfgs = generate_default_cfgs({
    'l2vit_tiny.in1k': _cfg(url=_RELEASE + 'L2ViT-Tiny-checkpoint-best-ema.pth', notes=_EMA_NOTE),
    'l2vit_small.in1k': _cfg(url=_RELEASE + 'L2ViT-Small-checkpoint-best-ema.pth', notes=_EMA_NOTE),
    'l2vit_base.in22k_ft_in1k': _cfg(
        url=_RELEASE + 'L2ViT-Base-22k21k-finetune-224-checkpoint-best.pth', notes=_FT_NOTE),
    'l2vit_base.in1k': _cfg(url=_RELEASE + 'L2ViT-Base-checkpoint-best-ema.pth', notes=_EMA_NOTE),
    'l2vit_base.in22k': _cfg(
        url=_RELEASE + 'L2ViT-Base-22k-pretrain-checkpoint-best.pth', num_classes=21841,
        notes=('ImageNet-22k pre-training weights (21841 classes, the release\'s own class order: '
               'custom_map22kto1k.txt maps them to ImageNet-1k).',)),
    # released eval at 384 warps (resize to 384 x 384, no crop)
    'l2vit_base_384.in22k_ft_in1k': _cfg(
        url=_RELEASE + 'L2ViT-Base-22k21k-finetune-384-checkpoint-best.pth', input_size=(3, 384, 384),
        pool_size=(12, 12), crop_pct=1.0, crop_mode='squash', notes=_FT_NOTE),
})


@register_model
def l2vit_tiny(pretrained: bool = False, **kwargs) -> L2ViT:
    """L²ViT-T @ 224x224, ImageNet-1k (83.1 top-1, 29M params, 4.7 GMACs)."""
    model_args = dict(depths=(2, 2, 6, 2), embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24))
    return _create_l2vit('l2vit_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def l2vit_small(pretrained: bool = False, **kwargs) -> L2ViT:
    """L²ViT-S @ 224x224, ImageNet-1k (84.1 top-1, 50M params, 9.0 GMACs)."""
    model_args = dict(depths=(2, 2, 18, 2), embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24))
    return _create_l2vit('l2vit_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def l2vit_base(pretrained: bool = False, **kwargs) -> L2ViT:
    """L²ViT-B @ 224x224, ImageNet-1k (84.4 top-1) or 22k -> 1k (86.0), 89M params, 15.9 GMACs."""
    model_args = dict(depths=(2, 2, 18, 2), embed_dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32))
    return _create_l2vit('l2vit_base', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def l2vit_base_384(pretrained: bool = False, **kwargs) -> L2ViT:
    """L²ViT-B @ 384x384, window 12, ImageNet-22k -> 1k (87.0 top-1, 89M params, 47.5 GMACs)."""
    model_args = dict(
        depths=(2, 2, 18, 2), embed_dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32), window_size=12)
    return _create_l2vit('l2vit_base_384', pretrained=pretrained, **dict(model_args, **kwargs))
