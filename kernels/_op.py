"""The one scaffold every op in `hiervit.kernels` is built on.

An op *declares* its pieces in a `KernelOp`; the scaffold does the rest, once for every op:

* registers the torch custom ops `hiervit::<name>_fwd` and `hiervit::<name>_bwd` from the declared schema pieces,
  so `torch.compile`, FX, TorchScript, `torch.export` and ONNX export all see one `torch.ops.hiervit.*` call,
  whatever backend runs;
* chooses the backend *inside* the op from its last argument, a request string (`'auto'` or a backend name; the
  environment overrides `HIERVIT_<OP>_BACKEND` / `HIERVIT_BACKEND` apply to `'auto'`, see `_dispatch`), with an
  error that says why a requested backend refuses the call;
* runs the declared checks (shape errors also at trace time, value checks on real tensors only);
* returns an empty result for an empty batch instead of calling a backend;
* imports the chosen backend's module lazily, inside the op (never while dynamo traces);
* registers fake kernels (contiguous outputs, as every backend's results are made contiguous), the autograd wiring,
  FLOP formulas for `FlopCounterMode`, and the op's reference formulation as its decomposition for export, which is
  the ONNX translation (`torch.onnx.export(..., dynamo=True)` decomposes the op into standard ONNX operators).

Calling conventions (what backend modules implement):

    forward(*tensors, *attrs) -> outputs                    (a tuple, one tensor per declared output)
    backward(*grad_outputs, *tensors, *outputs, *attrs) -> one gradient per name in `grads` (None allowed)

The custom ops take the same arguments plus the backend request as the last, `str`, argument; the backward op gets
`dout` for each of the first `differentiable_outputs` outputs.

A worked example, an op `scaled` computing `out = x * w * alpha` (and a per-row maximum nobody differentiates):

    from hiervit.kernels._dispatch import Backend
    from hiervit.kernels._op import KernelOp, check_tensors

    def _problem(x, w, alpha):                  # shape/dtype checks; returns what backends decide on
        check_tensors('scaled', x=x, w=w)
        if w.shape != x.shape[-1:]:
            raise ValueError(f'scaled: w {tuple(w.shape)} must be [{x.shape[-1]}], the last axis of x.')
        return ScaledProblem(device=x.device, dtype=x.dtype)   # any object the `check`s below accept

    SCALED = KernelOp(
        'scaled',
        inputs='Tensor x, Tensor w', attrs='float alpha', outputs=('out', 'rowmax'), differentiable_outputs=1,
        grads=('x', 'w'),
        backends=[
            Backend('cpu', lambda p: None if p.device.type == 'cpu' else 'CPU tensors only', f'{__name__}.cpu'),
            Backend('reference', lambda p: None, f'{__name__}.reference'),
        ],
        problem=_problem,
        fake=lambda x, w, alpha: (x.new_empty(x.shape), x.new_empty(x.shape[:-1])),
        flops=lambda x_shape, w_shape, alpha: math.prod(x_shape),  # tensors arrive as shapes
        reference=f'{__name__}.reference',      # its `forward` is the export decomposition (ONNX translation)
    )

    def scaled(x, w, alpha: float, backend: str = 'auto') -> Tensor:   # the public, scriptable function
        return torch.ops.hiervit.scaled_fwd(x, w, alpha, backend)[0]

`SCALED.dispatcher` selects (and `explain`s) backends; `SCALED.fwd` / `SCALED.bwd` are the registered ops. Adding a
backend is one more `Backend(...)` line (name, acceptance check, module path). A backend with `in_op=False` (such as
NATTEN, whose own autograd cannot run inside a custom op) is known to the dispatcher but run by the op's public
function, outside the custom op; asked for inside the op it raises a `BackendError` saying so.
"""
import importlib
import os
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from ._dispatch import Backend, BackendError, Dispatcher

__all__ = ['KernelOp', 'check_tensors', 'triton_precision', 'FLOAT_TYPES']

FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensors(op: str, float_types: Sequence[torch.dtype] = FLOAT_TYPES, **tensors: Optional[Tensor]) -> None:
    """The checks every op makes: each named input is a tensor (None is skipped) of a floating dtype, and all of them
    share one dtype and one device."""
    given = {}
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f'{op}: {name} must be a torch.Tensor, got {type(t).__name__}.')
        if t.dtype not in float_types:
            raise ValueError(f'{op}: {name} must be a floating tensor, got {t.dtype}.')
        given[name] = t
    names, ts = ', '.join(given), list(given.values())
    if len({t.dtype for t in ts}) > 1:
        raise ValueError(f'{op}: {names} must share a dtype, got {", ".join(str(t.dtype) for t in ts)}.')
    if len({t.device for t in ts}) > 1:
        raise ValueError(f'{op}: {names} must be on one device, got {", ".join(str(t.device) for t in ts)}.')


def triton_precision(dtype: torch.dtype) -> Tuple[bool, str]:
    """The dot-product precision of every Triton kernel: (cast operands to fp32, `tl.dot` input_precision).

    fp32 inputs get exact fp32 products ('ieee', not TF32); so does everything under the interpreter, which computes
    every dot in fp32 anyway. fp16/bf16 operands stay in their dtype (input_precision only affects fp32 operands).
    """
    f32 = os.environ.get('TRITON_INTERPRET', '0') == '1' or dtype == torch.float32
    return f32, 'ieee' if f32 else 'tf32'


def _to_meta(args: tuple) -> tuple:
    """Meta-device stand-ins for the tensors of an op call (same shapes and strides, no memory)."""
    return tuple(a.to('meta') if isinstance(a, Tensor) else a for a in args)


def _names(fragment: str) -> Tuple[str, ...]:
    """Argument names of a schema fragment like `Tensor q, Tensor? rpb, int[] kernel_size`."""
    return tuple(arg.split()[-1] for arg in fragment.split(',') if arg.strip())


class KernelOp:
    """One op: its custom-op registration, dispatch, checks, fakes, autograd, FLOPs and export decomposition.

    Args:
        name: Op name: the custom ops are `hiervit::<name>_fwd` / `_bwd`; `dispatch_name` (default: the part before
            the first underscore, e.g. `neighborhood`) names the env override `HIERVIT_<DISPATCH_NAME>_BACKEND`.
        inputs: Schema of the tensor arguments, e.g. `'Tensor q, Tensor k, Tensor v, Tensor? rpb'`.
        attrs: Schema of the non-tensor arguments, e.g. `'int[] kernel_size, float scale'`.
        outputs: Names of the forward outputs (all tensors).
        differentiable_outputs: How many leading outputs carry gradients (the rest are marked non-differentiable).
        grads: Names of the tensor inputs that get gradients (backward returns one tensor per name, in this order).
        backends: The backends in auto-selection order (the first one that accepts a call runs it).
        problem: `problem(*tensors, *attrs)`: raises on a bad call (shapes, dtypes) and returns the object the backend
            checks decide on. Runs on real and on fake tensors.
        fake: `fake(*tensors, *attrs)`: empty outputs of the right shape and dtype (contiguous).
        flops: `flops(*tensor_shapes, *attrs)`: forward FLOPs (None shapes for absent optional tensors).
        reference: Module path of the reference formulation; its `forward` is the export decomposition
            (`'module:function'` names another function of the module).
        check_values: Optional `check_values(*tensors, *attrs)` for data-dependent checks (real tensors only).
        prepare: Optional `prepare(*tensors, *attrs) -> (tensors, attrs)` run before a backend (e.g. broadcasts).
        backward_flops: Backward FLOPs as a multiple of the forward's.
        dispatch_name: See `name`.
    """

    def __init__(
            self,
            name: str,
            *,
            inputs: str,
            attrs: str,
            outputs: Sequence[str],
            differentiable_outputs: int,
            grads: Sequence[str],
            backends: Sequence[Backend],
            problem: Callable[..., Any],
            fake: Callable[..., Tuple[Tensor, ...]],
            flops: Callable[..., int],
            reference: str,
            check_values: Optional[Callable[..., None]] = None,
            prepare: Optional[Callable[..., Tuple[tuple, tuple]]] = None,
            backward_flops: int = 2,
            dispatch_name: Optional[str] = None,
    ):
        self.name = name
        self.tensor_names = _names(inputs)
        self.attr_names = _names(attrs)
        self.outputs = tuple(outputs)
        self.n_grad_out = differentiable_outputs
        self.grads = tuple(grads)
        self.backends: Dict[str, Backend] = {b.name: b for b in backends}
        self.problem = problem
        self.fake = fake
        self.flops = flops
        self.reference = reference
        self.check_values = check_values
        self.prepare = prepare
        self.dispatcher = Dispatcher(dispatch_name or name.split('_')[0], backends)
        self._modules: Dict[str, Any] = {}

        nt = len(self.tensor_names)
        attr_schema = f'{attrs}, ' if attrs.strip() else ''
        douts = ', '.join(f'Tensor d{o}' for o in self.outputs[:differentiable_outputs])
        outs = ', '.join(f'Tensor {o}' for o in self.outputs)
        fwd_schema = f'({inputs}, {attr_schema}str backend) -> ({", ".join("Tensor" for _ in self.outputs)})'
        bwd_schema = (f'({douts}, {inputs}, {outs}, {attr_schema}str backend) -> '
                      f'({", ".join("Tensor" for _ in self.grads)})')
        self.fwd = torch.library.custom_op(
            f'hiervit::{name}_fwd', self._forward, mutates_args=(), schema=fwd_schema)
        self.bwd = torch.library.custom_op(
            f'hiervit::{name}_bwd', self._backward_op, mutates_args=(), schema=bwd_schema)
        self.fwd.register_fake(self._fake_fwd)
        self.bwd.register_fake(self._fake_bwd)
        self.fwd.register_autograd(self._autograd_backward, setup_context=self._setup_context)

        fwd_op, bwd_op = getattr(torch.ops.hiervit, f'{name}_fwd'), getattr(torch.ops.hiervit, f'{name}_bwd')
        n_go, n_out = differentiable_outputs, len(self.outputs)
        register_flop_formula(fwd_op)(lambda *args, out_shape=None, **kw: self.flops(*args[:-1]))
        register_flop_formula(bwd_op)(lambda *args, out_shape=None, **kw: backward_flops * self.flops(
            *args[n_go:n_go + nt], *args[n_go + nt + n_out:-1]))
        # The exporters' decomposition (ONNX: `torch.onnx.export(..., dynamo=True)` decomposes every op in torch's
        # global table that has no ONNX function): the reference formulation, in standard operators.
        torch._decomp.register_decomposition(fwd_op.default)(self._decompose)

    # --- dispatch -----------------------------------------------------------------------------------------------
    def module(self, backend: str):
        """The backend's module, imported on first use (inside the op, never while dynamo traces)."""
        if backend not in self._modules:
            self._modules[backend] = importlib.import_module(self.backends[backend].module)
        return self._modules[backend]

    def select(self, call: tuple, backend: str) -> str:
        """Backend that runs `call` (tensors + attrs) for the request `backend`; raises if it is a peer."""
        name = self.dispatcher.select(self.problem(*call), backend)
        if not self.backends[name].in_op:
            raise BackendError(
                f'{self.dispatcher.op}: backend {name!r} runs outside the custom op (it records its own autograd); '
                f'call the public function of hiervit.kernels.{self.dispatcher.op} instead.')
        return name

    def _run(self, call: tuple, backend: str, entry: str, head: tuple = (), middle: tuple = ()):
        nt = len(self.tensor_names)
        if self.check_values is not None:
            self.check_values(*call)
        name = self.select(call, backend)
        tensors, attrs = call[:nt], call[nt:]
        if self.prepare is not None:
            tensors, attrs = self.prepare(*tensors, *attrs)
        fn = getattr(self.module(name), getattr(self.backends[name], entry))
        return fn(*head, *tensors, *middle, *attrs)

    # --- the registered ops -------------------------------------------------------------------------------------
    def _forward(self, *args) -> Tuple[Tensor, ...]:
        call, backend = args[:-1], args[-1]
        # The emptiness check runs the fake on meta copies: fakes of real tensors would allocate output-sized
        # memory on every call (it showed as extra peak memory in the op benchmarks).
        if all(t.numel() == 0 for t in self._fake_fwd(*_to_meta(args))):
            return tuple(t.zero_() for t in self._fake_fwd(*args))
        outs = self._run(call, backend, 'forward')
        # Contiguous whatever the backend returns: the fake kernel promises these strides to the compiler.
        return tuple(o.contiguous() for o in outs)

    def _backward_op(self, *args) -> Tuple[Tensor, ...]:
        n_go, nt, n_out = self.n_grad_out, len(self.tensor_names), len(self.outputs)
        douts, tensors = args[:n_go], args[n_go:n_go + nt]
        outs, attrs, backend = args[n_go + nt:n_go + nt + n_out], args[n_go + nt + n_out:-1], args[-1]
        if all(d.numel() == 0 for d in douts):
            # No output elements (an empty batch): every gradient is zero, also that of a shared parameter.
            return tuple(t.zero_() for t in self._fake_bwd(*args))
        grads = self._run(tuple(tensors) + tuple(attrs), backend, 'backward', head=douts, middle=outs)
        if all(g is not None for g in grads):
            return tuple(g.contiguous() for g in grads)
        # Placeholders only where a backend returned None (an absent optional input's empty gradient), shaped by the
        # fake on meta stand-ins: fakes of the real tensors would allocate every gradient once more.
        device = douts[0].device
        return tuple(torch.empty(e.shape, dtype=e.dtype, device=device) if g is None else g.contiguous()
                     for g, e in zip(grads, self._fake_bwd(*_to_meta(args))))

    def _fake_fwd(self, *args) -> Tuple[Tensor, ...]:
        call = args[:-1]
        self.problem(*call)
        return tuple(self.fake(*call))

    def _fake_bwd(self, *args) -> Tuple[Tensor, ...]:
        # One contiguous gradient per differentiable input; an empty tensor for an absent optional input.
        n_go = self.n_grad_out
        tensors = dict(zip(self.tensor_names, args[n_go:n_go + len(self.tensor_names)]))
        first = args[n_go]
        return tuple(first.new_empty(0) if tensors[n] is None else tensors[n].new_empty(tensors[n].shape)
                     for n in self.grads)

    def _setup_context(self, ctx, inputs, output) -> None:
        nt = len(self.tensor_names)
        ctx.save_for_backward(*inputs[:nt], *output)
        ctx.rest = tuple(inputs[nt:])  # attrs, backend request
        ctx.present = tuple(t is not None for t in inputs[:nt])
        ctx.mark_non_differentiable(*output[self.n_grad_out:])

    def _autograd_backward(self, ctx, *grad_outputs):
        nt = len(self.tensor_names)
        saved = ctx.saved_tensors
        tensors, outs = saved[:nt], saved[nt:]
        douts = tuple((torch.zeros_like(o) if g is None else g.contiguous())
                      for g, o in zip(grad_outputs[:self.n_grad_out], outs))
        grads = dict(zip(self.grads, self.bwd(*douts, *tensors, *outs, *ctx.rest)))
        result = [grads[n] if (n in grads and present) else None
                  for n, present in zip(self.tensor_names, ctx.present)]
        return tuple(result) + (None,) * len(ctx.rest)

    def _decompose(self, *args) -> Tuple[Tensor, ...]:
        nt = len(self.tensor_names)
        call = args[:-1]
        tensors, attrs = call[:nt], call[nt:]
        if self.prepare is not None:
            tensors, attrs = self.prepare(*tensors, *attrs)
        module, _, fn = self.reference.partition(':')
        return tuple(getattr(importlib.import_module(module), fn or 'forward')(*tensors, *attrs))
