"""torchvision-backed stand-in for mmcv's compiled extension (`mmcv._ext`), for CPU installs with `mmcv-lite`.

`mmcv-lite` ships mmcv's Python code without the compiled `mmcv._ext`, so `import mmcv.ops` (and therefore mmdet and
mmseg, which import it at module level) fails. `install_tv_ops()` registers a module under the name `mmcv._ext` whose
kernels come from torchvision: `nms`, `roi_align_forward/backward` (avg mode) and `roi_pool_forward/backward`. These are
the compiled ops the Mask R-CNN / Cascade Mask R-CNN / RetinaNet / UperNet / Semantic FPN configs of this repository
run.
mmcv's own Python wrappers (`mmcv.ops.nms`, `batched_nms`, `RoIAlign`, `roi_align`, ...) stay in charge of argument
handling, so behaviour matches a full mmcv build. Every other compiled op resolves to a function that raises
`NotImplementedError` naming the op when called (never at import), so a config needing, e.g., deformable convolution
fails loudly instead of computing something else.

With a full mmcv build (GPU route) nothing here is needed and `install_tv_ops()` does nothing.
"""
import importlib
import importlib.machinery
import sys
import types
from typing import Callable

import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision)

__all__ = ['install_tv_ops', 'tv_ops_installed']

_MODULE_NAME = 'mmcv._ext'
_MARKER = '__hiervit_tv_ops__'


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0) -> torch.Tensor:
    """mmcv `nms` kernel: indices kept, by decreasing score. `offset=1` is the legacy `+1` box-size convention."""
    if offset not in (0, 1):
        raise ValueError(f'nms: offset must be 0 or 1, got {offset}')
    if offset:
        # The legacy convention measures widths as x2 - x1 + 1; widening every box by one pixel gives the same IoUs.
        boxes = boxes.clone()
        boxes[:, 2:] += 1
    return torch.ops.torchvision.nms(boxes, scores, float(iou_threshold))


def _check_avg(op: str, pool_mode: int) -> None:
    if pool_mode != 1:
        raise NotImplementedError(
            f"{op}: pool_mode='max' RoIAlign has no torchvision kernel; use pool_mode='avg' or a full mmcv build")


def _roi_align_forward(input: torch.Tensor, rois: torch.Tensor, output: torch.Tensor, argmax_y: torch.Tensor,
                       argmax_x: torch.Tensor, aligned_height: int, aligned_width: int, spatial_scale: float,
                       sampling_ratio: int, pool_mode: int, aligned: bool) -> None:
    """mmcv `roi_align_forward`: writes into `output` [K, C, ph, pw] in place, as the compiled kernel does."""
    _check_avg('roi_align_forward', pool_mode)
    output.copy_(torch.ops.torchvision.roi_align(
        input, rois.to(input.dtype), float(spatial_scale), int(aligned_height), int(aligned_width),
        int(sampling_ratio), bool(aligned)))


def _roi_align_backward(grad_output: torch.Tensor, rois: torch.Tensor, argmax_y: torch.Tensor, argmax_x: torch.Tensor,
                        grad_input: torch.Tensor, aligned_height: int, aligned_width: int, spatial_scale: float,
                        sampling_ratio: int, pool_mode: int, aligned: bool) -> None:
    """mmcv `roi_align_backward`: accumulates the input gradient [N, C, H, W] into `grad_input` in place."""
    _check_avg('roi_align_backward', pool_mode)
    n, c, h, w = grad_input.shape
    grad_input.add_(torch.ops.torchvision._roi_align_backward(
        grad_output, rois.to(grad_output.dtype), float(spatial_scale), int(aligned_height), int(aligned_width),
        n, c, h, w, int(sampling_ratio), bool(aligned)))


def _roi_pool_forward(input: torch.Tensor, rois: torch.Tensor, output: torch.Tensor, argmax: torch.Tensor,
                      pooled_height: int, pooled_width: int, spatial_scale: float) -> None:
    """mmcv `roi_pool_forward`: fills `output` and the flat `argmax` index map used by the backward."""
    out, idx = torch.ops.torchvision.roi_pool(
        input, rois.to(input.dtype), float(spatial_scale), int(pooled_height), int(pooled_width))
    output.copy_(out)
    argmax.copy_(idx)


def _roi_pool_backward(grad_output: torch.Tensor, rois: torch.Tensor, argmax: torch.Tensor, grad_input: torch.Tensor,
                       pooled_height: int, pooled_width: int, spatial_scale: float) -> None:
    n, c, h, w = grad_input.shape
    grad_input.add_(torch.ops.torchvision._roi_pool_backward(
        grad_output, rois.to(grad_output.dtype), argmax, float(spatial_scale), int(pooled_height), int(pooled_width),
        n, c, h, w))


_KERNELS = {
    'nms': _nms,
    'roi_align_forward': _roi_align_forward,
    'roi_align_backward': _roi_align_backward,
    'roi_pool_forward': _roi_pool_forward,
    'roi_pool_backward': _roi_pool_backward,
}


def _missing(name: str) -> Callable:
    def missing(*args, **kwargs):
        raise NotImplementedError(
            f'mmcv compiled op `{name}` is not available: this process runs mmcv-lite with hiervit\'s torchvision '
            f'stand-in (hiervit.mm.tv_ops), which provides only {sorted(_KERNELS)}. Install a full mmcv 2.1.0 build '
            f'to use configs that need `{name}`.')
    missing.__name__ = name
    return missing


def _make_module() -> types.ModuleType:
    module = types.ModuleType(_MODULE_NAME, __doc__)
    # Lookups such as pkgutil.find_loader('mmcv._ext') (mmengine's optimizer registry) need a spec.
    module.__spec__ = importlib.machinery.ModuleSpec(_MODULE_NAME, None)
    module.__dict__.update(_KERNELS)
    setattr(module, _MARKER, True)

    def __getattr__(name: str) -> Callable:
        # mmcv.ops modules assert `hasattr(ext, fn)` for their kernels at import time; answer every public name with a
        # function that fails only if that kernel is actually called.
        if name.startswith('__'):
            raise AttributeError(name)
        return _missing(name)

    module.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return module


def tv_ops_installed() -> bool:
    """True when `mmcv._ext` is hiervit's torchvision stand-in."""
    return getattr(sys.modules.get(_MODULE_NAME), _MARKER, False)


def install_tv_ops() -> bool:
    """Make `mmcv.ops` importable on mmcv-lite by registering the torchvision stand-in as `mmcv._ext`.

    Returns True when the stand-in is (now) in use, False when a compiled mmcv extension exists and was left alone.
    Call it before the first import of `mmcv.ops`, `mmdet.models` or `mmseg.models`; `import hiervit.mm` does.
    """
    if tv_ops_installed():
        return True
    try:
        importlib.import_module(_MODULE_NAME)
        return False
    except ImportError:
        pass
    if any(name == 'mmcv.ops' or name.startswith('mmcv.ops.') for name in sys.modules):
        # A failed `import mmcv.ops` leaves half-initialised modules behind; a re-import must start from scratch.
        for name in [n for n in sys.modules if n == 'mmcv.ops' or n.startswith('mmcv.ops.')]:
            del sys.modules[name]
    import mmcv
    module = _make_module()
    sys.modules[_MODULE_NAME] = module
    mmcv._ext = module  # type: ignore[attr-defined]
    return True
