"""One mmdet/mmseg backbone adapter for every hiervit (or timm) model with `forward_intermediates`.

The adapter builds the timm classification model, prunes its head, and returns the stage outputs selected by
`out_indices` as NCHW maps. Dense-task conventions of the papers map onto timm's API:
  * per-output norms: the models add them with `out_norms=True` and apply them in `forward_intermediates(norm=True)`;
  * `frozen_stages`: stem + first stages, found through the model's coarse `group_matcher` (no per-family names);
  * `with_cp` -> `set_grad_checkpointing`; task overrides (`dilations`, `n_win`, `kernel_size`, `drop_path_rate`)
    are plain constructor kwargs of the model;
  * `init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)` loads classification (or detector) checkpoints
    through the model family's `checkpoint_filter_fn`; without it `init_weights` logs that the backbone starts random;
  * released detector/segmentor checkpoints (`load_from=`, `tools/test.py`) hold the official backbone layout under
    `backbone.`; a `load_state_dict` pre-hook converts it with the same `checkpoint_filter_fn`, so a family gets
    dense-checkpoint loading by declaring its official key mapping there, and keys that still do not fit raise.
Only mmengine is imported here, so the adapter works without mmcv/mmdet/mmseg.
"""
import logging
import os
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import timm
import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.runner.checkpoint import CheckpointLoader
from timm.models import group_parameters

import hiervit  # noqa: F401  (registers hiervit's models with timm)
from hiervit.backbones._pretrained import cache_file_name, fetch_pretrained, registered_file_name
from hiervit.registry import MODELS

__all__ = ['TimmBackbone', 'NAT', 'DiNAT', 'DiNATs', 'BiFormer', 'S2AFormer', 'CSWin', 'L2ViT', 'ViTAEv2VSA']


def _unwrap_state_dict(checkpoint: Any) -> Dict[str, torch.Tensor]:
    if not isinstance(checkpoint, dict):
        raise TypeError(f'checkpoint must hold a dict state dict, got {type(checkpoint).__name__}')
    for key in ('state_dict', 'model', 'module'):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            return checkpoint[key]
    return checkpoint


@MODELS.register_module()
class TimmBackbone(BaseModule):
    """Dense-prediction backbone over a timm model that implements `forward_intermediates`.

    Args:
        model_name: timm model name (e.g. 'nat_tiny', 'biformer_small').
        out_indices: Stages whose outputs are returned (one NCHW map each, strides 4/8/16/32 for hiervit models).
        frozen_stages: Freeze (eval mode, no gradients) the stem when >= 0 and stages [0, frozen_stages); -1 freezes
            nothing.
        norm_eval: Keep every BatchNorm in eval mode during training (frozen running statistics).
        with_cp: Gradient checkpointing inside the stages.
        norm_outputs: Call `forward_intermediates(norm=True)`: the model's per-output norms when it has them
            (`out_norms=True`), else timm's final norm on the last stage.
        in_channels: Input image channels.
        init_cfg: mmengine init config; `dict(type='Pretrained', checkpoint=path_or_url, prefix=None)` loads weights;
            `checkpoint='timm/<model_name>.<tag>'` loads timm's own pretrained weights of the model (timm resolves and
            downloads them; extra `pretrained_cfg_overlay=` in init_cfg is passed to timm, e.g. `dict(file=...)` for
            an offline copy).
        **model_kwargs: Passed to `timm.create_model` (e.g. `drop_path_rate`, `dilations`, `n_win`, `out_norms`).
    """

    def __init__(
            self,
            model_name: str,
            out_indices: Sequence[int] = (0, 1, 2, 3),
            frozen_stages: int = -1,
            norm_eval: bool = False,
            with_cp: bool = False,
            norm_outputs: bool = True,
            in_channels: int = 3,
            init_cfg: Optional[Dict[str, Any]] = None,
            **model_kwargs,
    ):
        super().__init__(init_cfg=init_cfg)
        if not isinstance(model_name, str) or model_name not in timm.list_models():
            raise ValueError(
                f'model_name={model_name!r} is not a registered timm model; `import hiervit` registers hiervit\'s '
                f'(see hiervit.list_hiervit_models()).')
        for bad in ('pretrained', 'features_only', 'checkpoint_path'):
            if bad in model_kwargs:
                raise TypeError(f'{bad}= is not supported; load weights with init_cfg=dict(type=\'Pretrained\', ...).')
        self._create_kwargs = dict(pretrained=False, in_chans=in_channels, **model_kwargs)
        self.model_name = model_name
        model = self._create_model()
        if not hasattr(model, 'forward_intermediates'):
            raise TypeError(f'{model_name} has no forward_intermediates(); TimmBackbone needs it.')
        num_stages = len(model.feature_info)
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(not 0 <= i < num_stages for i in out_indices) or list(out_indices) != sorted(
                set(out_indices)):
            raise ValueError(
                f'out_indices={out_indices} must be increasing stage indices in [0, {num_stages - 1}] for '
                f'{model_name}.')
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages={frozen_stages} must be in [-1, {num_stages}] for {model_name}.')

        # Keep exactly the modules the selected outputs use: parameters that never get a gradient would make DDP
        # refuse the model. hiervit's convention: per-output norms live in `model.out_norms[i]`, the last stage's may
        # be the final `norm` (NAT); without `out_norms`, `norm=True` applies `norm` to the last output (timm).
        model.prune_intermediate_layers(list(out_indices), prune_norm=not norm_outputs, prune_head=True)
        out_norms = getattr(model, 'out_norms', None) if norm_outputs else None
        if out_norms is not None:
            for i in range(len(out_norms)):
                if i not in out_indices:
                    out_norms[i] = nn.Identity()
            if len(out_norms) > out_indices[-1] and hasattr(model, 'norm'):
                model.norm = nn.Identity()
        self.model = model
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.norm_outputs = norm_outputs
        self.out_channels: List[int] = [model.feature_info[i]['num_chs'] for i in out_indices]
        self.strides: List[int] = [model.feature_info[i]['reduction'] for i in out_indices]
        self._stage_of_param = self._group_params(num_stages)
        if with_cp:
            model.set_grad_checkpointing(True)
        self._freeze_stages()
        self.register_load_state_dict_pre_hook(self._convert_loaded_state_dict)

    def _create_model(self) -> nn.Module:
        """The whole timm model; adapters of timm's own families add the dense-task modules timm lacks here."""
        return timm.create_model(self.model_name, **self._create_kwargs)

    def _filter_fn(self) -> Optional[Callable[[Dict[str, Any], nn.Module], Dict[str, torch.Tensor]]]:
        """The family's `checkpoint_filter_fn` (official key layouts -> the model's); None for plain timm models."""
        return getattr(sys.modules[type(self.model).__module__], 'checkpoint_filter_fn', None)

    def _group_params(self, num_stages: int) -> Dict[str, int]:
        """Map each parameter name of the model to -1 (stem), its stage index, or `num_stages` (anything after)."""
        groups = group_parameters(self.model, self.model.group_matcher(coarse=True), reverse=True)
        stage_of = {name: min(gid - 1, num_stages) for name, gid in groups.items()}
        # Per-output norms belong to the stage they normalise (mmdet's Swin freezes `norm{i}` with stage i).
        for name in stage_of:
            if name.startswith('out_norms.'):
                stage_of[name] = int(name.split('.')[1])
        return stage_of

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen: Set[str] = {n for n, s in self._stage_of_param.items() if s < self.frozen_stages}
        for name, param in self.model.named_parameters():
            if name in frozen:
                param.requires_grad = False
        # Eval mode for every module whose parameters are all frozen (stages, with their dropout / drop-path).
        for module_name, module in self.model.named_modules():
            names = [f'{module_name}.{n}' if module_name else n for n, _ in module.named_parameters()]
            if names and all(n in frozen for n in names):
                module.eval()

    def train(self, mode: bool = True) -> 'TimmBackbone':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        outs = self.model.forward_intermediates(
            x, indices=list(self.out_indices), norm=self.norm_outputs, stop_early=True, output_fmt='NCHW',
            intermediates_only=True)
        return tuple(outs)

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """Layer-decay depth of a parameter, mmpretrain's protocol, derived from the model's fine `group_matcher`.

        Args:
            param_name: Full parameter name (e.g. 'backbone.model.stages.1.blocks.0.attn.qkv.weight').
            prefix: The adapter's prefix in `param_name` (e.g. 'backbone.').

        Returns:
            (layer_depth, num_layers): depths follow the matcher's groups in order (stem 0, then blocks, output norms
            last); anything outside this backbone (neck, heads) is `num_layers - 1`, i.e. gets no decay.
        """
        if not hasattr(self, '_layer_ids'):
            self._layer_ids = group_parameters(self.model, self.model.group_matcher(coarse=False), reverse=True)
            self._num_layers = max(self._layer_ids.values()) + 2
        inner = prefix + 'model.'
        if not param_name.startswith(inner):
            return self._num_layers - 1, self._num_layers
        return self._layer_ids.get(param_name[len(inner):], self._num_layers - 1), self._num_layers

    @property
    def num_stages(self) -> int:
        return len(self.model.feature_info)

    def get_stage(self, param_name: str, prefix: str = '') -> int:
        """Stage of a parameter from the model's coarse `group_matcher`: -1 for the stem, its stage index, or
        `num_stages` for everything else (output norms, final norm; also anything outside this backbone)."""
        inner = prefix + 'model.'
        name = param_name[len(inner):] if param_name.startswith(inner) else None
        if name is None or name.startswith('out_norms.'):
            return self.num_stages
        return self._stage_of_param.get(name, self.num_stages)

    def no_weight_decay(self) -> Set[str]:
        """The model's own no-weight-decay names (timm's protocol), relative to this adapter."""
        fn = getattr(self.model, 'no_weight_decay', None)
        return {f'model.{n}' for n in fn()} if fn is not None else set()

    def _to_model_state_dict(
            self, state_dict: Dict[str, torch.Tensor], source: str,
    ) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
        """Convert a backbone state dict (this adapter's `model.*` keys or an official layout) to `self.model`'s keys.

        Returns (state dict to load, keys that keep their initial value, ignored keys: the pruned head / final norm /
        unused output norms). Raises a ValueError naming the keys that do not fit after conversion.
        """
        ours = bool(state_dict) and all(k.startswith('model.') for k in state_dict)  # saved from this adapter
        if ours:
            state_dict = {k[len('model.'):]: v for k, v in state_dict.items()}
        with torch.device('meta'):
            # The unpruned, headless twin (no memory, no init cost): what the filters and the "pruned part" test compare
            # against. Headless, as dense-task checkpoints are; the filters drop a classification checkpoint's head.
            template = self._create_model()
            template.reset_classifier(0)
        filter_fn = None if ours else self._filter_fn()
        if filter_fn is not None:
            # The filters convert and check a checkpoint against the *whole* model. Tensors they take from the twin
            # (meta, and not one of the checkpoint's own) mean "keep the initial value", e.g. fresh output norms from
            # a classification checkpoint, and are dropped.
            given = {id(v) for v in state_dict.values()}
            converted = filter_fn(state_dict, template)
            keep = sorted(k for k, v in converted.items() if v.is_meta and id(v) not in given)
            state_dict = {k: v for k, v in converted.items() if k not in keep}
        else:
            keep = []
        target = self.model.state_dict()
        full = template.state_dict()
        classifier = (getattr(self.model, 'pretrained_cfg', None) or {}).get('classifier') or 'head'
        pruned = [k for k in state_dict if k not in target and (k in full or k.startswith(classifier + '.'))]
        ignored = sorted(pruned)
        unexpected = sorted(k for k in state_dict if k not in target and k not in pruned)
        missing = [k for k in target if k not in state_dict and k not in keep and not k.endswith('num_batches_tracked')]
        mis_shaped = [
            f'{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}' for k, v in state_dict.items()
            if k in target and v.shape != target[k].shape]
        if unexpected or missing or mis_shaped:
            raise ValueError(
                f'{source} does not fit the {self.model_name} backbone ({type(self).__name__} model.*) after '
                f'conversion: missing {missing[:6]} ({len(missing)}), unexpected {unexpected[:6]} ({len(unexpected)}), '
                f'shape mismatches {mis_shaped[:6]} ({len(mis_shaped)}). Is it a checkpoint of {self.model_name} with '
                f'these model kwargs?')
        return {k: v for k, v in state_dict.items() if k in target}, keep, ignored

    def _convert_loaded_state_dict(self, module, state_dict, prefix, local_metadata, strict, missing_keys,
                                   unexpected_keys, error_msgs) -> None:
        """`load_state_dict` pre-hook: released detector/segmentor checkpoints (`backbone.levels.*`, `backbone.norm0`,
        `backbone.extra_norms.*`, ...) load into this adapter (`backbone.model.*`), for `load_from=`, `resume` and
        `tools/test.py`; keys that still do not fit raise (mmengine would load non-strictly and leave them random)."""
        own = [k for k in state_dict if k.startswith(prefix)]
        if not own:
            return
        converted, _, _ = self._to_model_state_dict(
            {k[len(prefix):]: state_dict.pop(k) for k in own}, f'The checkpoint\'s {prefix or "top-level"} keys')
        state_dict.update({f'{prefix}model.{k}': v for k, v in converted.items()})

    def init_weights(self) -> None:
        cfg = self.init_cfg
        if not (isinstance(cfg, dict) and cfg.get('type') == 'Pretrained'):
            print_log(
                f'{self.model_name}: the backbone starts from random initialisation (no init_cfg=dict(type='
                f'\'Pretrained\', checkpoint=...)) unless load_from / resume loads a checkpoint afterwards.',
                logger='current', level=logging.WARNING)
            super().init_weights()
            return
        checkpoint = cfg.get('checkpoint')
        if not checkpoint:
            raise ValueError("init_cfg=dict(type='Pretrained') needs checkpoint=<path or URL> (in the config, or "
                             "--cfg-options model.backbone.init_cfg.checkpoint=...); --cfg-options "
                             "model.backbone.init_cfg=None starts the backbone from random initialisation instead.")
        if isinstance(checkpoint, str) and checkpoint.startswith('timm/'):
            self._init_from_timm(checkpoint[len('timm/'):], cfg)
            return
        path = checkpoint
        if isinstance(checkpoint, str) and checkpoint.startswith(('http://', 'https://')):
            # timm's cache, under the file name the family registers for the URL (released URLs may end alike)
            file_name = registered_file_name(checkpoint) or cache_file_name(checkpoint)
            path = fetch_pretrained(
                (checkpoint, file_name), f'{self.model_name} init_cfg checkpoint',
                f'pass the local copy with --cfg-options model.backbone.init_cfg.checkpoint=/path/to/{file_name}')
        state_dict = _unwrap_state_dict(CheckpointLoader.load_checkpoint(path, map_location='cpu'))
        prefix = cfg.get('prefix')
        if prefix:
            prefix = prefix if prefix.endswith('.') else prefix + '.'
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            if not state_dict:
                raise ValueError(f'init_cfg prefix={prefix!r} matches no key of {checkpoint}.')
        try:
            state_dict, keep, ignored = self._to_model_state_dict(state_dict, str(checkpoint))
        except ValueError as e:
            raise ValueError(f'init_cfg checkpoint: {e}') from None
        self.model.load_state_dict(state_dict, strict=False)  # checked above; `keep` keys keep their initial values
        print_log(
            f'{self.model_name}: loaded {len(state_dict)} tensors from {checkpoint}; kept initial values for '
            f'{len(keep)} ({", ".join(keep[:8])}); ignored {len(ignored)} ({", ".join(ignored[:8])})',
            logger='current')
        self._is_init = True

    def _init_from_timm(self, name: str, cfg: Dict[str, Any]) -> None:
        """timm's pretrained weights `name` ('<model>.<tag>'): timm resolves, downloads and converts them; the file
        then loads as any checkpoint does."""
        if name.split('.')[0] != self.model_name:
            raise ValueError(f'init_cfg checkpoint=\'timm/{name}\' is not a {self.model_name} weight; use '
                             f'\'timm/{self.model_name}.<tag>\' (timm.list_pretrained(\'{self.model_name}*\')).')
        kwargs = dict(self._create_kwargs, pretrained=True, pretrained_cfg_overlay=cfg.get('pretrained_cfg_overlay'))
        source = timm.create_model(name, **kwargs)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f'{name}.pth')
            torch.save(source.state_dict(), path)
            del source
            self.init_cfg = dict(cfg, checkpoint=path)
            try:
                self.init_weights()
            finally:
                self.init_cfg = cfg


def _family(name: str, default_model: str, defaults: Dict[str, Any], doc: str) -> type:
    """A registered alias of TimmBackbone that only sets a default `model_name` and default model kwargs."""

    def __init__(self, model_name: str = default_model, **kwargs):
        TimmBackbone.__init__(self, model_name=model_name, **{**defaults, **kwargs})

    cls = type(name, (TimmBackbone,), {
        '__init__': __init__, '__doc__': f'TimmBackbone for {doc} Defaults: {defaults}.', '__module__': __name__})
    return MODELS.register_module(module=cls)


NAT = _family('NAT', 'nat_tiny', dict(output_norms=True), 'NAT (nat_*) with the papers\' per-output LayerNorms.')
DiNAT = _family('DiNAT', 'dinat_tiny', dict(output_norms=True), 'DiNAT (dinat_*); dense configs set `dilations`.')
DiNATs = _family('DiNATs', 'dinat_s_tiny', dict(output_norms=True), 'DiNAT_s (dinat_s_*), Swin-layout DiNAT.')
BiFormer = _family('BiFormer', 'biformer_small', dict(out_norms=True), 'BiFormer (biformer_*), LayerNorm2d outputs.')
S2AFormer = _family(
    'S2AFormer', 's2aformer_t', dict(out_norms=True), 'S2AFormer (s2aformer_*, a reconstruction), LayerNorm2d outputs.')
CSWin = _family(
    'CSWin', 'cswin_tiny', dict(output_norms=True, seg_padding=True),
    'CSWin (cswin_*) with the segmentation backbone\'s per-output LayerNorms (norm1..norm4) and padding rule.')
L2ViT = _family(
    'L2ViT', 'l2vit_tiny', dict(out_norms=True), 'L2ViT (l2vit_*) with the released per-output LayerNorms (norm{i}).')
ViTAEv2VSA = _family(
    'ViTAEv2VSA', 'vitaev2_vsa_s', dict(vsa_padding='center', vsa_offset_rule='detection'),
    'ViTAEv2-VSA (vitaev2_vsa_*) with the detection backbone\'s VSA padding and offset rule (no output norms).')
