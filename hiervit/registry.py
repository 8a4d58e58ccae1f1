"""hiervit's scoped OpenMMLab registries (imports mmengine only; never imported by `import hiervit`).

mmengine resolves `type='hiervit.X'` from any downstream registry (mmdet's, mmseg's) by importing `hiervit.registry`,
finding these children of its root registries and importing their `locations`. Configs therefore need no
`custom_imports` to use `type='hiervit.NAT'` or `constructor='hiervit.LayerDecayOptimWrapperConstructor'`.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import Registry

__all__ = ['MODELS', 'OPTIM_WRAPPER_CONSTRUCTORS']

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='hiervit', locations=['hiervit.mm'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optim_wrapper_constructor', parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS, scope='hiervit',
    locations=['hiervit.mm'])
