"""Optimizer-wrapper constructor adding timm-derived layer decay and no-weight-decay rules to a detector/segmentor.

mmengine's `paramwise_cfg.custom_keys` matches substrings of parameter names, which expresses the papers' settings
(`'rpb'`/`'norm'`: `decay_mult=0`), but not layer-wise lr decay, and it cannot ask the backbone which parameters it
exempts. This constructor keeps everything `DefaultOptimWrapperConstructor` does (custom_keys, bias/norm mults, ...)
and then adjusts each backbone parameter's group from the backbone itself (`model.backbone`, the `TimmBackbone`):
  * `layer_decay_rate`: lr x rate ** (num_layers - depth - 1), depth from the timm model's `group_matcher`
    (`TimmBackbone.get_layer_depth`, mmpretrain's protocol); neck and heads keep the base lr;
  * `layer_decay_type='stage_wise'` with `num_layers` (mmseg 0.x's ConvNeXt `LearningRateDecayOptimizerConstructor`
    `decay_type='stage_wise'`, used by the ConvNeXt and VWFormer segmentation configs): lr x rate ** (num_layers + 1
    - depth) with depth 0 for the stem, i + 1 for stage i (the model's coarse `group_matcher`; timm keeps each
    stage's downsampling inside the stage, mmcls ConvNeXt's `downsample_layers` are depth 0) and no decay for the
    rest (output norms, neck, heads);
  * `timm_no_weight_decay` (default True): weight decay 0 for what timm's optimizer factory exempts, i.e. 1-d
    parameters, biases and the model's `no_weight_decay()` names (fnmatch patterns allowed).
"""
import fnmatch
from typing import Dict, List, Optional

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS, OPTIMIZERS

from hiervit.registry import OPTIM_WRAPPER_CONSTRUCTORS

__all__ = ['LayerDecayOptimWrapperConstructor']


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """`DefaultOptimWrapperConstructor` plus `paramwise_cfg` keys `layer_decay_rate` and `timm_no_weight_decay`."""

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        self.layer_decay_rate = float(paramwise_cfg.pop('layer_decay_rate', 1.0))
        self.layer_decay_type = paramwise_cfg.pop('layer_decay_type', 'layer_wise')
        self.num_layers = paramwise_cfg.pop('num_layers', None)
        if self.layer_decay_type not in ('layer_wise', 'stage_wise'):
            raise ValueError(f"paramwise_cfg.layer_decay_type must be 'layer_wise' or 'stage_wise', got "
                             f'{self.layer_decay_type!r}')
        if self.layer_decay_type == 'stage_wise' and not isinstance(self.num_layers, int):
            raise ValueError("paramwise_cfg.layer_decay_type='stage_wise' needs an int num_layers (the official "
                             f"configs' value, e.g. 6), got {self.num_layers!r}")
        self.timm_no_weight_decay = bool(paramwise_cfg.pop('timm_no_weight_decay', True))
        if not 0. < self.layer_decay_rate <= 1.:
            raise ValueError(f'paramwise_cfg.layer_decay_rate must be in (0, 1], got {self.layer_decay_rate}')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def __call__(self, model: nn.Module) -> OptimWrapper:
        if hasattr(model, 'module'):
            model = model.module
        backbone = getattr(model, 'backbone', model)
        if not hasattr(backbone, 'get_layer_depth'):
            raise TypeError(
                f'{type(self).__name__} needs a backbone with get_layer_depth() (hiervit.TimmBackbone); '
                f'got {type(backbone).__name__}.')
        prefix = 'backbone.' if backbone is not model else ''
        names: Dict[int, str] = {id(p): n for n, p in model.named_parameters()}
        no_wd = {prefix + n for n in backbone.no_weight_decay()} if self.timm_no_weight_decay else set()

        params: List[dict] = []
        self.add_params(params, model)
        for group in params:
            # DefaultOptimWrapperConstructor makes one group per parameter.
            (param,) = group['params']
            name = names[id(param)]
            if not name.startswith(prefix):
                continue
            if self.layer_decay_rate < 1.:
                if self.layer_decay_type == 'stage_wise':
                    stage = backbone.get_stage(name, prefix=prefix)
                    depth, num_layers = stage + 1 if stage < backbone.num_stages else self.num_layers + 1, \
                        self.num_layers + 2
                else:
                    depth, num_layers = backbone.get_layer_depth(name, prefix=prefix)
                scale = self.layer_decay_rate ** (num_layers - depth - 1)
                group['lr'] = group.get('lr', self.base_lr) * scale
                group['lr_scale'] = scale
            if self.timm_no_weight_decay and (
                    param.ndim <= 1 or name.endswith('.bias') or any(fnmatch.fnmatch(name, p) for p in no_wd)):
                group['weight_decay'] = 0.

        optimizer_cfg = self.optimizer_cfg.copy()
        optimizer_cfg['params'] = params
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        wrapper_cfg = self.optim_wrapper_cfg.copy()
        wrapper_cfg.setdefault('type', 'OptimWrapper')
        return OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))
