"""DaViT (timm's `davit_*`, official weights) as an mmdet/mmseg backbone, with the official dense backbones'
output norms.

timm already ships the DaViT architecture and its ImageNet weights; this adds only what the official detection and
segmentation backbones (dingmyu/davit `mmdet/mmdet/models/backbones/davit.py`, `mmseg/mmseg/models/backbones/davit.py`,
MIT) have on top: one LayerNorm over channels per output (`norm{i}` there, `model.out_norms.{i}` here), and the
conversion of their checkpoints (`backbone.patch_embeds.*`, `backbone.main_blocks.*`, `backbone.norm{i}.*`).
"""
import re
from typing import Any, Callable, Dict, Optional, Tuple

import timm
import torch
import torch.nn as nn
from timm.layers import LayerNorm2d
from timm.models.davit import checkpoint_filter_fn as timm_davit_filter_fn

from hiervit.backbones._pretrained import check_checkpoint_keys, model_description
from hiervit.registry import MODELS

from .backbone import TimmBackbone

__all__ = ['DaViT', 'convert_davit_checkpoint']

_OUT_NORM = re.compile(r'^norm(\d+)\.')


def convert_davit_checkpoint(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Convert a DaViT checkpoint to timm's keys plus `out_norms.{i}`, checked against `model` (with `out_norms`).

    Accepts timm's layout, the official classification layout (`patch_embeds`, `main_blocks`, `norms`, `head`) and
    the official mmdet/mmseg backbone layout (`norm{i}` output norms, optionally under `backbone.` in a detector or
    segmentor checkpoint; neck and heads are dropped). Parts a source lacks keep the model's initial values (they are
    taken from `model`): the output norms for classification checkpoints, the classifier for dense ones, `norm0` for
    the official RetinaNet ones (trained without it). Any other missing, unexpected or mis-shaped key raises.
    """
    for wrapper in ('state_dict', 'model'):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    # timm's filter renames the official classification keys (and passes timm-layout checkpoints through); its
    # `norms.` -> `head.norm.` rule would also rewrite `out_norms.`, so the output norms are renamed afterwards.
    converted = timm_davit_filter_fn(dict(state_dict), model)
    converted = {_OUT_NORM.sub(r'out_norms.\1.', k): v for k, v in converted.items()}

    target = model.state_dict()
    for prefix in ['head.'] + [f'out_norms.{i}.' for i in range(len(getattr(model, 'out_norms', ())))]:
        if not any(k.startswith(prefix) for k in converted):
            converted.update({k: v for k, v in target.items() if k.startswith(prefix)})
    # the classifier and the first conv are adapted to num_classes / in_chans afterwards
    check_checkpoint_keys(converted, target, model_description(model, 'DaViT'), reshapable=('stem.conv.weight',))
    return converted


@MODELS.register_module()
class DaViT(TimmBackbone):
    """TimmBackbone for timm's DaViT (`davit_tiny/small/base/...`) with one LayerNorm per output, as the official
    mmdet/mmseg backbones (`norm{i}`; LayerNorm over channels, eps 1e-5).

    Args:
        model_name: A timm DaViT name.
        out_norms: Add the per-output LayerNorms (the official dense backbones have them).
        **kwargs: TimmBackbone arguments (`out_indices`, `frozen_stages`, `norm_eval`, `with_cp`, `init_cfg`) and
            DaViT kwargs (`drop_path_rate`, `window_size`, ...). `init_cfg=dict(type='Pretrained', checkpoint=...)`
            takes a file or URL (timm, official classification or official detection/segmentation layout) or
            `'timm/<model>.<tag>'` for timm's own pretrained weights (e.g. 'timm/davit_tiny.msft_in1k'; see
            `TimmBackbone`).

    Official drop path differs in training only: it is linear over all 2 x sum(depths) sub-blocks there, per pair of
    blocks in timm.
    """

    def __init__(self, model_name: str = 'davit_tiny', out_norms: bool = True, **kwargs):
        if not (isinstance(model_name, str) and model_name.startswith('davit_')):
            raise ValueError(f'hiervit.DaViT needs a timm DaViT model_name (davit_tiny, ...), got {model_name!r}.')
        self._add_out_norms = out_norms
        super().__init__(model_name=model_name, **kwargs)

    def _create_model(self) -> nn.Module:
        model = timm.create_model(self.model_name, **self._create_kwargs)
        if self._add_out_norms:
            # an attribute of the timm model, so the state dict, pruning and freezing see `out_norms.{i}` as for
            # hiervit's own families (see TimmBackbone)
            model.out_norms = nn.ModuleList([LayerNorm2d(info['num_chs']) for info in model.feature_info])
        return model

    def _filter_fn(self) -> Optional[Callable[[Dict[str, Any], nn.Module], Dict[str, torch.Tensor]]]:
        return convert_davit_checkpoint

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        outs = super().forward(x)
        norms = getattr(self.model, 'out_norms', None)
        if norms is None:
            return outs
        return tuple(norms[i](o) for i, o in zip(self.out_indices, outs))
