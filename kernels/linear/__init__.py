"""Non-causal linear attention over N tokens per (batch, head), with the normalisers of the linear-attention ViTs.

    out = linear_attention(q, k, v, normalizer='sum', temperature=None, eps=1e-6, clamp_min=100., scale=None)

q, k `[B, heads, N, d]`, v `[B, heads, N, dv]` (any strides, e.g. views of a fused qkv projection); the output is
`[B, heads, N, dv]`. The op receives the feature maps already applied (`phi(q)`, `phi(k)`: ReLU, FLatten's focusing
function, identity for InLine, ...; the models keep them) and never forms the `[N, N]` matrix: with
`S = phi(k)^T v` (`[d, dv]` per head), `z = sum_N phi(k)`, `r = phi(q) . z` and `t` the per-head temperature:

| normalizer | out | used by |
|---|---|---|
| `none` | `t * phi(q) S` | |
| `sum` | `t * phi(q) S / (r + eps)` | |
| `mean` | `t * (phi(q) S / N) / (r / N + eps)` | FLatten (`z = 1 / (q mean(k) + 1e-6)`) |
| `clamp` | `t * phi(q) S / max(r, clamp_min)` | L²ViT (`clamp_min` 100, learnable `t` `[heads, 1, 1]`) |
| `injective` | `t * (scale / N) * phi(q) S + (1 - (scale / N) * r) * mean_N(v)` | InLine (`scale`: `d ** -0.5`) |

FLatten scales `kv = k^T v / N`; L²ViT's temperature starts at `d ** -0.5` and its clamp acts on the normaliser
without the temperature; InLine's `scale` defaults to `d ** -0.5`.
The temperature (None, or `heads` values in any shape such as `[heads, 1, 1]`) multiplies the `phi(k)^T v` term and
gets a gradient. The whole map or windows: the caller lays the tokens out (windows go into the batch axis).

Backends (`linear_dispatcher`; `backend=` argument, or env `HIERVIT_LINEAR_BACKEND` / `HIERVIT_BACKEND`): `cpp`
(a fused C++ kernel built once per machine: two passes over the tokens forward and two backward, strided inputs read
in place, deterministic), `cpu` (chunked batched GEMMs with a hand-written backward), `triton` (CUDA, or CPU tensors
under `TRITON_INTERPRET=1`; a state-reduction kernel and an apply kernel, forward and backward), `reference` (the
literal formula in torch ops, autograd backward; accepts everything). Auto order: cpp on CPU (cpu where no C++
compiler can build it), triton on CUDA, then reference.

The op is declared on the shared scaffold (`hiervit.kernels._op.KernelOp`) as the torch custom ops
`hiervit::linear_attention_fwd` / `_bwd` (fake kernels, autograd, FLOP formulas, the reference as the export
decomposition).

FLOP convention (matmuls only, as torch's SDPA counter; elementwise normalisation ignored):
    forward  = 2 * B * heads * N * d * (2 * dv + 1)   (k^T v, q S and the q . z row sums; `none`: 2 * dv)
    backward = 2 * forward.
"""
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._dispatch import Backend, module_available
from .._op import KernelOp, check_tensors

__all__ = ['linear_attention', 'linear_attention_op', 'linear_dispatcher', 'linear_problem', 'LinearProblem',
           'linear_attention_flops', 'NORMALIZERS', 'LINEAR']

NORMALIZERS = ('none', 'sum', 'mean', 'clamp', 'injective')
# Each head dim is one register tile in the Triton kernels (the fp32 [d, dv] state is held by one program).
_TRITON_MAX_DIM = 128
_HAS_TRITON = module_available('triton')  # probed once: import machinery cannot be traced by torch.compile


@dataclass(frozen=True)
class LinearProblem:
    """What a backend needs to know to accept or refuse a call."""
    device: torch.device
    dtype: torch.dtype
    batch: int
    heads: int
    tokens: int
    dim: int
    v_dim: int
    normalizer: str


def _check_reference(p: LinearProblem) -> Optional[str]:
    return None


def _check_cpp(p: LinearProblem) -> Optional[str]:
    if p.device.type != 'cpu':
        return f'tensors are on {p.device.type}, the cpp backend runs on CPU tensors only'
    from .cpp import availability  # checks run inside the op, never while dynamo traces
    return availability()


def _check_cpu(p: LinearProblem) -> Optional[str]:
    if p.device.type != 'cpu':
        return f'tensors are on {p.device.type}, the cpu backend runs on CPU tensors only'
    return None


def _check_triton(p: LinearProblem) -> Optional[str]:
    if not _HAS_TRITON:
        return 'triton is not installed'
    if p.device.type == 'cpu':
        if os.environ.get('TRITON_INTERPRET', '0') != '1':
            return 'CPU tensors need TRITON_INTERPRET=1 (the Triton interpreter, slow, for tests only)'
    elif p.device.type != 'cuda':
        return f'tensors are on {p.device.type}; triton runs on CUDA (or on CPU under TRITON_INTERPRET=1)'
    if p.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f'dtype {p.dtype} is not supported (use float16, bfloat16 or float32)'
    if max(p.dim, p.v_dim) > _TRITON_MAX_DIM:
        return f'head dims d={p.dim}, dv={p.v_dim} exceed {_TRITON_MAX_DIM} (the [d, dv] state is one register tile)'
    return None


def _check_args(
        q: Tensor, k: Tensor, v: Tensor, temperature: Optional[Tensor], normalizer: str, eps: float,
        clamp_min: float, scale: float,
) -> None:
    check_tensors('linear_attention', q=q, k=k, v=v)
    for name, t in (('q', q), ('k', k), ('v', v)):
        if t.dim() != 4:
            raise ValueError(
                f'linear_attention: {name} must be 4-D [B, heads, N, dim], got shape {tuple(t.shape)} (windows go '
                f'into the batch axis).')
    if k.shape != q.shape:
        raise ValueError(f'linear_attention: k {tuple(k.shape)} must have the shape of q {tuple(q.shape)}.')
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f'linear_attention: v {tuple(v.shape)} must have the batch, heads and tokens of q {tuple(q.shape)}.')
    if min(q.shape[1:]) == 0 or v.shape[-1] == 0:
        raise ValueError(
            f'linear_attention: empty inputs q {tuple(q.shape)}, v {tuple(v.shape)} (only the batch may be empty).')
    if normalizer not in NORMALIZERS:
        raise ValueError(f'linear_attention: normalizer must be one of {NORMALIZERS}, got {normalizer!r}.')
    if temperature is not None:
        if not isinstance(temperature, Tensor) or not temperature.is_floating_point():
            raise TypeError('linear_attention: temperature must be None or a floating tensor with one value per head.')
        if temperature.shape != (q.shape[1],):
            raise ValueError(
                f'linear_attention: temperature must have one value per head ({q.shape[1]}), got shape '
                f'{tuple(temperature.shape)}.')
        if temperature.device != q.device:
            raise ValueError(
                f'linear_attention: temperature is on {temperature.device}, q, k, v on {q.device}; move it there.')


def linear_problem(
        q: Tensor, k: Tensor, v: Tensor, temperature: Optional[Tensor] = None, normalizer: str = 'sum',
        eps: float = 1e-6, clamp_min: float = 100., scale: float = 1.,
) -> LinearProblem:
    """The dispatcher's view of a call (e.g. `linear_dispatcher.explain(linear_problem(q, k, v))`)."""
    _check_args(q, k, v, temperature, normalizer, eps, clamp_min, scale)
    B, H, N, d = q.shape
    return LinearProblem(
        device=q.device, dtype=q.dtype, batch=B, heads=H, tokens=N, dim=d, v_dim=v.shape[-1], normalizer=normalizer)


def _fake(q: Tensor, k: Tensor, v: Tensor, temperature: Optional[Tensor], normalizer: str, eps: float,
          clamp_min: float, scale: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    B, H, N, d = q.shape
    st = torch.float64 if q.dtype == torch.float64 else torch.float32
    return (q.new_empty(B, H, N, v.shape[-1]), q.new_empty(B, H, d, v.shape[-1], dtype=st),
            q.new_empty(B, H, d, dtype=st), q.new_empty(B, H, N, dtype=st))


def linear_attention_flops(q_shape, v_shape, normalizer: str = 'sum') -> int:
    """Forward FLOPs: `2 * B * heads * N * d * (2 * dv + 1)` (`2 * dv` for `none`): k^T v, q S, q . z."""
    B, H, N, d = q_shape
    return 2 * B * H * N * d * (2 * v_shape[-1] + (normalizer != 'none'))


_PKG = __name__
# cpp and cpu before triton: under TRITON_INTERPRET=1 (tests) CPU tensors must still pick a CPU backend by default,
# and both refuse CUDA tensors, so auto = triton on CUDA, cpp on CPU (cpu where the C++ library cannot be built),
# reference for anything else.
LINEAR = KernelOp(
    'linear_attention',
    inputs='Tensor q, Tensor k, Tensor v, Tensor? temperature',
    attrs='str normalizer, float eps, float clamp_min, float scale',
    outputs=('out', 'kv', 'ksum', 'r'), differentiable_outputs=1, grads=('q', 'k', 'v', 'temperature'),
    backends=[
        Backend('cpp', _check_cpp, f'{_PKG}.cpp'),
        Backend('cpu', _check_cpu, f'{_PKG}.cpu'),
        Backend('triton', _check_triton, f'{_PKG}.triton'),
        Backend('reference', _check_reference, f'{_PKG}.reference'),
    ],
    problem=linear_problem, fake=_fake,
    flops=lambda q, k, v, t, normalizer, eps, clamp_min, scale: linear_attention_flops(q, v, normalizer),
    reference=f'{_PKG}.reference',
)
linear_dispatcher = LINEAR.dispatcher


def linear_attention(
        q: Tensor, k: Tensor, v: Tensor, normalizer: str = 'sum', temperature: Optional[Tensor] = None, *,
        eps: float = 1e-6, clamp_min: float = 100., scale: Optional[float] = None, backend: Optional[str] = None,
) -> Tensor:
    """Linear attention `phi(q) (phi(k)^T v) / normaliser` (see the module docstring for the normalisers).

    Args:
        q: Feature-mapped queries `[B, heads, N, d]`.
        k: Feature-mapped keys `[B, heads, N, d]`.
        v: Values `[B, heads, N, dv]`.
        normalizer: `none`, `sum`, `mean`, `clamp` or `injective`.
        temperature: None or one value per head (any shape with `heads` elements, e.g. `[heads, 1, 1]`); multiplies
            `phi(k)^T v`; gets a gradient.
        eps: Added to the `sum` / `mean` normaliser.
        clamp_min: Lower bound of the `clamp` normaliser.
        scale: InLine's scale of the `injective` normaliser; default `d ** -0.5` (ignored by the others).
        backend: `reference`, `cpp`, `cpu`, `triton` or None/'auto' (env `HIERVIT_LINEAR_BACKEND`).

    Returns:
        `[B, heads, N, dv]`.
    """
    for name, x in (('eps', eps), ('clamp_min', clamp_min), ('scale', scale)):
        if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float))):
            raise TypeError(f'linear_attention: {name} must be a Python number, got {type(x).__name__}.')
    if not isinstance(q, Tensor):
        raise TypeError(f'linear_attention: q must be a torch.Tensor, got {type(q).__name__}.')
    if temperature is not None and isinstance(temperature, Tensor) and q.dim() == 4:
        if temperature.numel() != q.shape[1]:
            raise ValueError(
                f'linear_attention: temperature must have one value per head ({q.shape[1]}), got shape '
                f'{tuple(temperature.shape)}.')
        temperature = temperature.reshape(-1)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return linear_attention_op(q, k, v, temperature, normalizer, float(eps), float(clamp_min), float(scale),
                               backend or 'auto')


def linear_attention_op(
        q: Tensor, k: Tensor, v: Tensor, temperature: Optional[Tensor], normalizer: str, eps: float,
        clamp_min: float, scale: float, backend: str = 'auto',
) -> Tensor:
    """`linear_attention` as models call it: one op call with every argument explicit (temperature `[heads]` or
    None), scriptable by TorchScript and a leaf for FX; the checks and the backend choice run inside the op."""
    return torch.ops.hiervit.linear_attention_fwd(q, k, v, temperature, normalizer, eps, clamp_min, scale, backend)[0]
