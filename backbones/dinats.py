""" DiNAT_s: Dilated Neighborhood Attention Transformer in the Swin layout

A timm implementation of the DiNAT_s variants of
    - `Dilated Neighborhood Attention Transformer` - https://arxiv.org/abs/2209.15001

Model structure and weights from https://github.com/SHI-Labs/Neighborhood-Attention-Transformer (classification/
dinats.py; MIT License, Copyright (c) 2022-2023 SHI Lab). DiNAT_s is Swin-T/S/B/L with window self-attention replaced
by NA (even blocks) and DiNA (odd blocks): a non-overlapping 4x4 patch embedding, Swin's PatchMerging at the end of
every level but the last, mlp_ratio 4, no layer scale. It is the Swin layout
(`hiervit.backbones.layers.skeleton.SwinLayout`) with `NeighborhoodAttention2d` as the token mixer; the official
`layers.*` keys become `levels.*` (see `checkpoint_filter_fn`).
"""
from typing import Any, Dict, Optional, Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model

from hiervit.backbones.layers.skeleton import SwinLayout
from hiervit.backbones.nat import _check_dilations, build_nat, convert_official_checkpoint, na_mixers

__all__ = ['DiNATs']


class DiNATs(SwinLayout):
    """DiNAT_s: the Swin layout with (dilated) neighborhood attention as the token mixer."""

    def __init__(
            self,
            embed_dim: int = 96,
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            kernel_size: int = 7,
            dilations: Optional[Sequence[Sequence[int]]] = None,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            proj_drop_rate: float = 0.,
            attn_backend: Optional[str] = None,
            **kwargs,
    ):
        """
        Args:
            embed_dim: Channels of the first level; doubled at every level.
            depths: Blocks per level.
            num_heads: Attention heads per level.
            kernel_size: Neighbourhood size (odd) in every level.
            dilations: Per level, per block dilation; None = 1 everywhere.
            mlp_ratio: MLP hidden width / dim.
            qkv_bias: Bias in the qkv projections.
            qk_scale: Attention logit scale override (head_dim ** -0.5 when None).
            proj_drop_rate: Dropout after the attention projection and in the MLP (the official `drop_rate`).
            attn_backend: Force a neighborhood-attention backend (None: the op's dispatcher chooses).
            **kwargs: Any other `HierarchicalTransformer` argument (`num_classes`, `drop_path_rate`, `layer_scale`).
        """
        dilations = _check_dilations(dilations, depths)

        super().__init__(
            na_mixers(kernel_size, dilations, qkv_bias, qk_scale, proj_drop_rate, attn_backend), embed_dim=embed_dim,
            depths=depths, num_heads=num_heads, mlp_ratio=mlp_ratio, proj_drop_rate=proj_drop_rate, **kwargs)
        self.kernel_size = kernel_size
        self.dilations = dilations


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: DiNATs) -> Dict[str, torch.Tensor]:
    """Convert an official DiNAT_s checkpoint (classification, or the backbone of an mmdet/mmseg one)."""
    return convert_official_checkpoint(state_dict, model, 'layers.', _VARIANT_ARGS)


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    # The official models had no default_cfg, so timm 0.5's data defaults applied: bicubic, crop 0.875, ImageNet stats.
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': .875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head.fc', 'license': 'mit',
        'origin_url': 'https://github.com/SHI-Labs/Neighborhood-Attention-Transformer',
        'paper_ids': 'arXiv:2209.15001', **kwargs,
    }


# URLs as in the official dinats.py and detection/DiNAT.md; classification/DiNAT.md links the same files without the
# `in` (`dinat_s_tiny_1k_224.pth`), which of the two the server still has could not be checked offline.
_URL = 'https://shi-labs.com/projects/dinat/checkpoints/'

default_cfgs = generate_default_cfgs({
    'dinat_s_tiny.shi_in1k': _cfg(url=_URL + 'imagenet1k/dinat_s_tiny_in1k_224.pth'),
    'dinat_s_small.shi_in1k': _cfg(url=_URL + 'imagenet1k/dinat_s_small_in1k_224.pth'),
    'dinat_s_base.shi_in1k': _cfg(url=_URL + 'imagenet1k/dinat_s_base_in1k_224.pth'),
    'dinat_s_large.shi_in22k_ft_in1k': _cfg(url=_URL + 'imagenet1k/dinat_s_large_in1k_224.pth'),
    'dinat_s_large_384.shi_in22k_ft_in1k': _cfg(
        url=_URL + 'imagenet1k/dinat_s_large_in1k_384.pth', input_size=(3, 384, 384), pool_size=(12, 12),
        crop_pct=1.0),
    'dinat_s_large_21k.shi_in22k': _cfg(url=_URL + 'imagenet22k/dinat_s_large_in22k_224.pth', num_classes=21841),
})

_DILATIONS_T = ([1, 8], [1, 4], [1, 2] * 3, [1, 1])
_DILATIONS_224 = ([1, 8], [1, 4], [1, 2] * 9, [1, 1])
_DILATIONS_384 = ([1, 13], [1, 6], [1, 3] * 9, [1, 1])

# Architecture arguments of every entrypoint (the official ones, including drop_path_rate).
_VARIANT_ARGS: Dict[str, Dict[str, Any]] = {
    'dinat_s_tiny': dict(
        depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), embed_dim=96, drop_path_rate=0.2, dilations=_DILATIONS_T),
    'dinat_s_small': dict(
        depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), embed_dim=96, drop_path_rate=0.3, dilations=_DILATIONS_224),
    'dinat_s_base': dict(
        depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), embed_dim=128, drop_path_rate=0.5, dilations=_DILATIONS_224),
    'dinat_s_large': dict(
        depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), embed_dim=192, drop_path_rate=0.35,
        dilations=_DILATIONS_224),
    'dinat_s_large_384': dict(
        depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), embed_dim=192, drop_path_rate=0.35,
        dilations=_DILATIONS_384),
    'dinat_s_large_21k': dict(
        depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), embed_dim=192, drop_path_rate=0.2,
        dilations=_DILATIONS_224),
}


def _create_variant(variant: str, pretrained: bool, kwargs: Dict[str, Any]) -> DiNATs:
    return build_nat(DiNATs, variant, pretrained, checkpoint_filter_fn, _VARIANT_ARGS[variant], **kwargs)


@register_model
def dinat_s_tiny(pretrained: bool = False, **kwargs) -> DiNATs:
    """DiNAT_s-Tiny @ 224, ImageNet-1k."""
    return _create_variant('dinat_s_tiny', pretrained, kwargs)


@register_model
def dinat_s_small(pretrained: bool = False, **kwargs) -> DiNATs:
    """DiNAT_s-Small @ 224, ImageNet-1k."""
    return _create_variant('dinat_s_small', pretrained, kwargs)


@register_model
def dinat_s_base(pretrained: bool = False, **kwargs) -> DiNATs:
    """DiNAT_s-Base @ 224, ImageNet-1k."""
    return _create_variant('dinat_s_base', pretrained, kwargs)


@register_model
def dinat_s_large(pretrained: bool = False, **kwargs) -> DiNATs:
    """DiNAT_s-Large @ 224, ImageNet-22k pretrained, ImageNet-1k fine-tuned."""
    return _create_variant('dinat_s_large', pretrained, kwargs)


@register_model
def dinat_s_large_384(pretrained: bool = False, **kwargs) -> DiNATs:
    """DiNAT_s-Large @ 384 (384 dilations), ImageNet-22k pretrained, ImageNet-1k fine-tuned."""
    return _create_variant('dinat_s_large_384', pretrained, kwargs)


@register_model
def dinat_s_large_21k(pretrained: bool = False, **kwargs) -> DiNATs:
    """DiNAT_s-Large @ 224, ImageNet-22k (21841 classes)."""
    return _create_variant('dinat_s_large_21k', pretrained, kwargs)
