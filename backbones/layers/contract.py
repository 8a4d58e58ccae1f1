"""The timm model contract of a hierarchical (multi-stage) backbone, written once.

Every hiervit family is a stem, a list of stages (each an optional downsampler and a `nn.Sequential` of blocks), a
final norm, optional per-output norms for dense tasks and a `ClassifierHead`. `HierarchicalContract` turns those
pieces into timm's API: `forward_intermediates`, `prune_intermediate_layers` (output norms included),
`group_matcher`, `set_grad_checkpointing`, `get_classifier`, `reset_classifier`, `forward_head` and `forward`.
`ContractStage` is the stage base class it drives.

Building a family on it:

    class MyStage(ContractStage):
        def __init__(self, in_dim, dim, depth, first):
            super().__init__(downsample_first=True)      # where the downsampler runs, see below
            self.downsample = nn.Identity() if first else MyDownsample(in_dim, dim)
            self.blocks = nn.Sequential(*[MyBlock(dim) for _ in range(depth)])   # the grad-checkpointed unit

    class MyModel(HierarchicalContract, nn.Module):
        contract_stem = 'stem'          # attribute holding the stem (state-dict prefix, `group_matcher` stem group)
        contract_stages = 'stages'      # attribute holding the stages (nn.Sequential or nn.ModuleList)

        def __init__(self, ...):
            super().__init__()
            self.output_fmt = 'NCHW'    # layout of the stage maps and of forward_features ('NHWC' if channels-last)
            self.stem = ...
            self.stages = nn.Sequential(*[MyStage(...) for i in range(4)])
            self.feature_info = [dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f'stages.{i}') ...]
            self.norm = ...             # final norm (on the last stage output)
            self.out_norms = None       # or nn.ModuleList of per-output norms, see below
            self.head = ClassifierHead(dims[-1], num_classes, pool_type=global_pool, input_fmt=self.output_fmt)

        def forward_stem(self, x):      # NCHW image -> first stage input (input checks, stem, dropout)
            return self.stem(x)

        def forward_features(self, x):  # written by the family so that TorchScript sees plain attributes
            x = self.stages(self.forward_stem(x))
            return self.norm(x)

The model must also set `num_classes`; everything else listed above is inherited, and so are the defaults of
`_init_weights` (`self.apply(self._init_weights)` at the end of `__init__`: truncated-normal weights, std .02, and
zero biases for the module types in `init_types`, Linear by default; everything else keeps PyTorch's init) and
`no_weight_decay` (the parameters whose names end with one of `no_weight_decay_suffixes`, none by default: timm's
optimizer factory exempts the 1-d ones, norms, biases and layer scales, by itself). A family overrides the class
attributes (or the methods) only where its release differs. Stages:

* `downsample_first=True`: stage i = downsample, then blocks; stage i's output is its blocks' output (BiFormer,
  L2ViT, S2AFormer, PVT-style layouts; the first stage's `downsample` is `nn.Identity()`).
* `downsample_first=False`: stage i = blocks, then the downsampler that feeds stage i + 1; stage i's output is taken
  before it, and the last stage's `downsample` is `nn.Identity()` (NAT, the Swin and CSWin layouts).

`forward(x)` of a stage runs both in that order; `forward_blocks(x)` runs the blocks alone, under gradient
checkpointing (`timm.models.checkpoint_seq`) once `set_grad_checkpointing()` is on.

Output norms (`forward_intermediates(norm=True)`, `features_only` and the mm adapters): output i goes through
`out_norms[i]` when the model has per-output norms and `i < len(out_norms)`, otherwise the last stage's output goes
through `norm` and the others stay raw. So `out_norms` either covers every stage (BiFormer, L2ViT) or every stage
but the last, whose output norm is then `norm` itself (NAT, the layouts); `out_norms = None` means none (timm's
default: `norm=True` normalises the last output only). Pruning keeps exactly the modules the kept outputs use, so
every parameter of a feature extractor gets a gradient (plain DDP needs that): stages after the last index go, the
final norm goes when the last stage goes, when `prune_norm=True`, or when the head goes and `out_norms` cover the
last stage (the final norm then only fed the classifier); output norms of stages not returned become identities,
all of them go with `prune_norm=True`.

`build_hierarchical_model` is the one builder of every family: `features_only` defaults to all stages through the
getter wrapper (`forward_intermediates`, NCHW), with the model's per-output norms and `norm=True` for a family whose
released dense-task backbones have them.

`group_matcher`: the stem group is `^{contract_stem}`; coarse groups are whole stages; fine groups are blocks, with
a leading downsampler in its stage's first block group and a closing one after its stage's blocks; the final and
output norms come last, before the head.
"""
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models import checkpoint_seq

from hiervit.backbones._compat import feature_take_indices
from hiervit.backbones._pretrained import FilterFn, build_with_official_layouts

__all__ = ['ContractStage', 'HierarchicalContract', 'build_hierarchical_model']


class ContractStage(nn.Module):
    """Base of one stage: `downsample` and `blocks` (an `nn.Sequential`) are set by the subclass."""

    def __init__(self, downsample_first: bool):
        """
        Args:
            downsample_first: The downsampler runs before the blocks (True) or closes the stage after them (False).
        """
        super().__init__()
        self.downsample_first = downsample_first
        self.grad_checkpointing = False

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks alone: the stage's output map given its (downsampled) input."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample_first:
            return self.forward_blocks(self.downsample(x))
        return self.downsample(self.forward_blocks(x))


class HierarchicalContract:
    """timm's model API for a stem + `ContractStage` stages + norms + `ClassifierHead` model (module docstring)."""

    contract_stem: str = 'stem'
    contract_stages: str = 'stages'
    output_fmt: str = 'NCHW'
    init_types = (nn.Linear,)  # module types `_init_weights` draws (not annotated: TorchScript would type it)
    no_weight_decay_suffixes = ()  # parameter-name suffixes `no_weight_decay` lists

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, self.init_types):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith(self.no_weight_decay_suffixes)}

    def _contract_stages(self) -> nn.Module:
        return getattr(self, self.contract_stages)

    def _output_norm(self, index: int, x: torch.Tensor, num_stages: int) -> torch.Tensor:
        out_norms = self.out_norms
        if out_norms is not None and index < len(out_norms):
            return out_norms[index](x)
        if index == num_stages - 1:
            return self.norm(x)
        return x

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW image batch -> input of the first stage."""
        raise NotImplementedError(f'{type(self).__name__} must define forward_stem().')

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward returning the stage outputs selected by `indices`.

        Args:
            x: Input image batch, NCHW.
            indices: Stages to return: None = all, int n = the last n, or a list of (possibly negative) indices.
            norm: Apply the output norms (`out_norms` where present, the final `norm` on the last stage otherwise).
            stop_early: Stop after the last requested stage.
            output_fmt: 'NCHW' or 'NHWC' for the intermediates.
            intermediates_only: Return only the intermediates.
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}.")
        all_stages = self._contract_stages()
        num_stages = len(all_stages)
        take_indices, max_index = feature_take_indices(num_stages, indices)
        stages = all_stages[:max_index + 1] if stop_early else all_stages
        last = len(stages) - 1
        intermediates = []
        x = self.forward_stem(x)
        for i, stage in enumerate(stages):
            if stage.downsample_first:
                x = stage.downsample(x)
            x = stage.forward_blocks(x)
            if i in take_indices:
                x_inter = self._output_norm(i, x, num_stages) if norm else x
                if output_fmt != self.output_fmt:
                    # NHWC [B, H, W, C] <-> NCHW [B, C, H, W]
                    x_inter = x_inter.permute(0, 3, 1, 2) if output_fmt == 'NCHW' else x_inter.permute(0, 2, 3, 1)
                intermediates.append(x_inter.contiguous())
            if not stage.downsample_first and i < last:
                x = stage.downsample(x)
        if intermediates_only:
            return intermediates
        # Stopped early: x is the last requested stage's output, which the final norm (of the last stage) does not fit.
        return (self.norm(x) if len(stages) == num_stages else x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages, norms and head not needed to produce the given intermediates (module docstring)."""
        stages = self._contract_stages()
        take_indices, max_index = feature_take_indices(len(stages), indices)
        last = len(stages) - 1
        stages = stages[:max_index + 1]
        setattr(self, self.contract_stages, stages)
        if max_index < last and not stages[max_index].downsample_first:
            stages[max_index].downsample = nn.Identity()  # it would feed a removed stage
        out_norms = self.out_norms
        norm_feeds_head_only = out_norms is not None and len(out_norms) > last
        if prune_norm or max_index < last or (prune_head and norm_feeds_head_only):
            self.norm = nn.Identity()
        if out_norms is not None:
            # Norms of stages that are not returned would get no gradient (DDP refuses such a model).
            self.out_norms = None if prune_norm else nn.ModuleList([
                n if i in take_indices else nn.Identity() for i, n in enumerate(out_norms[:max_index + 1])])
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        stages = self.contract_stages
        if coarse:
            return dict(stem=rf'^{self.contract_stem}', blocks=rf'^{stages}\.(\d+)')
        blocks = (rf'^{stages}\.(\d+)\.blocks\.(\d+)', None)
        if self._contract_stages()[0].downsample_first:
            fine = [(rf'^{stages}\.(\d+)\.downsample', (0,)), blocks]  # with the stage's first block
        else:
            fine = [blocks, (rf'^{stages}\.(\d+)\.downsample', (99998,))]  # after the stage's blocks
        return dict(stem=rf'^{self.contract_stem}', blocks=fine + [(r'^norm|^out_norms', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self._contract_stages():
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_hierarchical_model(
        model_cls: Callable[..., nn.Module],
        variant: str,
        pretrained: bool,
        filter_fn: FilterFn,
        kwargs: Dict[str, Any],
        dense_norms: Optional[str] = None,
        channels_last: bool = False,
) -> nn.Module:
    """`build_with_official_layouts` of a registered variant (`kwargs`: its architecture arguments with the caller's
    on top) with the families' feature defaults: every stage out (`out_indices`), timm's getter wrapper (it runs
    `forward_intermediates`: NCHW maps), under `feature_cls='fx'` the graph's own maps (NHWC when `channels_last`).

    Args:
        dense_norms: The model argument that adds the per-output norms of the released dense-task backbones
            (`out_norms`, `output_norms`), set with `norm=True` for `features_only` with the getter; None: none.
        channels_last: The stage maps are NHWC inside the model.
    """
    out_indices = kwargs.pop('out_indices', tuple(range(len(kwargs['depths']))))
    feature_cfg = dict(out_indices=out_indices, feature_cls='getter', **kwargs.pop('feature_cfg', {}))
    # a top-level `feature_cls` is resolved here (timm would apply it only later): the norms are the getter's alone
    feature_cfg['feature_cls'] = kwargs.pop('feature_cls', feature_cfg['feature_cls'])
    if channels_last and feature_cfg['feature_cls'] == 'fx':
        feature_cfg['output_fmt'] = 'NHWC'
    if dense_norms and kwargs.get('features_only', False) and feature_cfg['feature_cls'] == 'getter':
        kwargs.setdefault(dense_norms, True)
        feature_cfg.setdefault('norm', True)
    return build_with_official_layouts(model_cls, variant, pretrained, filter_fn, feature_cfg=feature_cfg, **kwargs)
