""" Swin+VSA: the Swin Transformer with varied-size window attention

A reconstruction, from the paper, of the Swin-T+VSA and Swin-S+VSA models of
    - `VSA: Learning Varied-Size Window Attention in Vision Transformers` (ECCV 2022) - https://arxiv.org/abs/2204.08446

**Neither code nor weights were ever released**: the official repository (ViTAE-Transformer/ViTAE-VSA, no license)
lists Swin+VSA as "coming soon" and ships only the ViTAEv2 models. The paper's recipe is Swin-T/S with the window
attention of every block replaced by VSA; this file builds exactly that on the Swin layout
(`hiervit.backbones.layers.skeleton.SwinLayout`: 4x4 patch embedding, Swin's PatchMerging, pre-norm blocks, MLP
ratio 4, final LayerNorm), with `hiervit.backbones.layers.vsa.VSAttention` as the token mixer. Assumptions (the paper
gives no code): no cyclic shift (VSA's sampled windows overlap the neighbouring default windows, and the released
ViTAEv2-VSA models use no shift either), no convolutional position embedding (Swin's relative position bias, which
VSA keeps on the default window, is the only one), the VSA padding and offset rule of the released classification
code in every use, Swin's truncated-normal init for every Linear but the VSR branches, which keep PyTorch's default
(random) init as in the released VSA models, and Swin's drop path (T 0.2, S 0.3).
"""
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model

from hiervit.backbones._pretrained import check_checkpoint_keys, model_description
from hiervit.backbones.layers.skeleton import MixerFactory, SwinLayout, build_layout_model
from hiervit.backbones.layers.vsa import VSAttention

__all__ = ['SwinVSA']


class SwinVSA(SwinLayout):
    """The Swin layout with varied-size window attention as the token mixer."""

    def __init__(
            self,
            embed_dim: int = 96,
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            window_size: int = 7,
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
            window_size: VSA default window.
            mlp_ratio: MLP hidden width / dim.
            qkv_bias: Bias in the qkv projections.
            qk_scale: Attention logit scale override (head_dim ** -0.5 when None).
            proj_drop_rate: Dropout after the attention projection and in the MLP.
            attn_backend: Force a backend of the sampled-window op (None: the op's dispatcher chooses).
            **kwargs: Any other `HierarchicalTransformer` argument (`num_classes`, `drop_path_rate`, ...).
        """
        for name in ('stem_layer', 'downsample_layer'):
            if name in kwargs:
                raise TypeError(f'SwinVSA fixes {name!r} (the Swin layout).')

        def make(dim: int, heads: int, block: int) -> nn.Module:
            return VSAttention(
                dim, heads, window_size=window_size, qkv_bias=qkv_bias, qk_scale=qk_scale, proj_drop=proj_drop_rate,
                backend=attn_backend)

        mixers: Sequence[MixerFactory] = [make] * len(depths)
        super().__init__(
            mixers, embed_dim=embed_dim, depths=depths, num_heads=num_heads, mlp_ratio=mlp_ratio,
            proj_drop_rate=proj_drop_rate, **kwargs)
        self.window_size = window_size
        for m in self.modules():
            if isinstance(m, VSAttention):
                m.reset_vsr_parameters()


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: SwinVSA) -> Dict[str, torch.Tensor]:
    """There is no official checkpoint: unwrap a training checkpoint of this model (EMA weights first, `module.`
    prefixes) or raise a ValueError naming the keys that do not fit."""
    for key in ('state_dict_ema', 'model_ema', 'state_dict', 'model'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    out = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}
    first_conv = (getattr(model, 'pretrained_cfg', None) or {}).get('first_conv', 'patch_embed.proj') + '.weight'
    check_checkpoint_keys(
        out, model.state_dict(), model_description(model, 'Swin+VSA'), reshapable=(first_conv,),
        norms_arg='output_norms',
        variants='No official Swin+VSA checkpoint exists; only state dicts of these models load (swin_vsa_tiny and '
                 'swin_vsa_small differ in depths).')
    return out


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': .9, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head.fc', 'license': 'apache-2.0',
        'paper_ids': 'arXiv:2204.08446',
        'paper_name': 'VSA: Learning Varied-Size Window Attention in Vision Transformers',
        'notes': ('no weights: Swin+VSA code and weights were never released ("coming soon" in '
                  'ViTAE-Transformer/ViTAE-VSA); a reconstruction from the paper, see hiervit.backbones.swin_vsa',),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'swin_vsa_tiny.untrained': _cfg(),
    'swin_vsa_small.untrained': _cfg(),
})

# Swin-T / Swin-S (Swin's own configs, drop path included) with VSA in every block.
_VARIANT_ARGS: Dict[str, Dict[str, Any]] = {
    'swin_vsa_tiny': dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    'swin_vsa_small': dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
}


def _create_variant(variant: str, pretrained: bool, kwargs: Dict[str, Any]) -> SwinVSA:
    return build_layout_model(SwinVSA, variant, pretrained, checkpoint_filter_fn, _VARIANT_ARGS[variant], **kwargs)


@register_model
def swin_vsa_tiny(pretrained: bool = False, **kwargs) -> SwinVSA:
    """Swin-T+VSA @ 224 (paper: 82.24 top-1 on ImageNet-1k); no released weights."""
    return _create_variant('swin_vsa_tiny', pretrained, kwargs)


@register_model
def swin_vsa_small(pretrained: bool = False, **kwargs) -> SwinVSA:
    """Swin-S+VSA @ 224 (paper: 83.6 top-1 on ImageNet-1k); no released weights."""
    return _create_variant('swin_vsa_small', pretrained, kwargs)
