"""OpenMMLab (mmdet 3.x / mmseg 1.x) integration: backbone adapter, optimizer constructor, CPU op stand-ins, bench.

Needs the `det`/`seg` extras; `import hiervit` alone never imports this package. Configs refer to the registered names
with the `hiervit.` scope (`type='hiervit.NAT'`), which mmengine resolves through `hiervit.registry` without
`custom_imports`. On a CPU install with mmcv-lite, call `install_tv_ops()` before importing mmdet/mmseg models.
"""
from hiervit.kernels._dispatch import module_available

from .backbone import BiFormer, CSWin, DiNAT, DiNATs, L2ViT, NAT, S2AFormer, TimmBackbone, ViTAEv2VSA
from .bench import bench_config
from .davit import DaViT
from .optim import LayerDecayOptimWrapperConstructor
from .tv_ops import install_tv_ops, tv_ops_installed

if module_available('mmseg'):  # the decode head needs mmseg (the `seg` extra)
    from .vw_head import VWCityHead, VWHead, convert_vw_head_checkpoint  # noqa: F401

__all__ = [
    'TimmBackbone', 'NAT', 'DiNAT', 'DiNATs', 'BiFormer', 'S2AFormer', 'CSWin', 'DaViT', 'L2ViT', 'ViTAEv2VSA',
    'LayerDecayOptimWrapperConstructor',
    'install_tv_ops', 'tv_ops_installed', 'bench_config',
] + (['VWHead', 'VWCityHead', 'convert_vw_head_checkpoint'] if module_available('mmseg') else [])
