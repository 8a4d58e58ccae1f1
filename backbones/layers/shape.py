"""Size-dependent helpers shared by the families, written so that every model exports.

FX cannot trace Python decisions on tensor sizes (padding only when needed, input checks), and TorchScript cannot
compile the error messages: these functions are leaves for FX (timm's tracer through `register_notrace_function`;
each family module also declares them with `torch.fx.wrap` for plain `torch.fx.symbolic_trace`), compile under
TorchScript, and are traced through by dynamo / `torch.export`.
"""
import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

__all__ = ['check_image_input', 'pad_nhwc', 'pad_nchw', 'crop_nhwc']


@register_notrace_function
def check_image_input(x: torch.Tensor, in_chans: int, model: str) -> torch.Tensor:
    """Raise a TypeError/ValueError naming the fix unless `x` is an NCHW batch with `in_chans` channels; returns x
    (so the check stays in an FX graph's data path)."""
    if not torch.jit.is_scripting():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'{model} expects a torch.Tensor image batch, got {type(x).__name__}.')
        if x.ndim != 4:
            raise ValueError(f'{model} expects an NCHW image batch (4 dims), got shape {tuple(x.shape)}.')
        if x.shape[1] != in_chans:
            raise ValueError(
                f'Input has {x.shape[1]} channels but the model was built with in_chans={in_chans}; create it with '
                f'in_chans={x.shape[1]} (pretrained stems are adapted) or convert the input.')
    return x


@register_notrace_function
def pad_nhwc(x: torch.Tensor, multiple: int = 1, minimum: int = 0) -> torch.Tensor:
    """Zero-pad an NHWC map at the bottom/right to at least `minimum` rows/columns, then to a multiple of `multiple`
    (x itself when nothing is padded)."""
    H, W = x.shape[1], x.shape[2]
    Hp, Wp = max(H, minimum), max(W, minimum)
    Hp, Wp = Hp + (multiple - Hp % multiple) % multiple, Wp + (multiple - Wp % multiple) % multiple
    if Hp == H and Wp == W:
        return x
    return F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))


@register_notrace_function
def pad_nchw(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad an NCHW map at the bottom/right to a multiple of `multiple` (x itself when nothing is padded)."""
    H, W = x.shape[2], x.shape[3]
    pad_h, pad_w = (multiple - H % multiple) % multiple, (multiple - W % multiple) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h))


@register_notrace_function
def crop_nhwc(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The top-left `height x width` of an NHWC map (x itself when it has that size already: a no-op slice is still a
    view, and a view saved for the backward of the next layer trips Inductor's stride ordering under dynamic
    shapes)."""
    if x.shape[1] == height and x.shape[2] == width:
        return x
    return x[:, :height, :width]
