"""The shared op scaffold (`hiervit.kernels._op`): a toy op declared as its docstring shows, and the behaviour every
registered op gets from it (empty batches, contiguous fakes, one precision rule, backend choice inside the op)."""
import math
import sys
import types

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hiervit.kernels import BackendError
from hiervit.kernels._dispatch import Backend
from hiervit.kernels._op import KernelOp, check_tensors, triton_precision
from hiervit.kernels.neighborhood import NEIGHBORHOOD, neighborhood_attention
from hiervit.kernels.routed import ROUTED, routed_attention


# --- a toy op, declared like the scaffold's docstring example ---------------------------------------------------------

def _toy_forward(x, w, alpha):
    return x * w * alpha, (x * w).amax(-1)


def _toy_backward(dout, x, w, out, rowmax, alpha):
    return dout * w * alpha, (dout * x * alpha).reshape(-1, x.shape[-1]).sum(0)


_calls = []
_toy_cpu = types.ModuleType('hiervit_test_toy_cpu')
_toy_cpu.forward = lambda *a: _calls.append('cpu') or _toy_forward(*a)
_toy_cpu.backward = lambda *a: _calls.append('cpu-bwd') or _toy_backward(*a)
_toy_ref = types.ModuleType('hiervit_test_toy_ref')
_toy_ref.forward = lambda *a: _calls.append('reference') or _toy_forward(*a)
_toy_ref.backward = lambda *a: _calls.append('reference-bwd') or _toy_backward(*a)
sys.modules.update({_toy_cpu.__name__: _toy_cpu, _toy_ref.__name__: _toy_ref})


def _toy_problem(x, w, alpha):
    check_tensors('toyscale', x=x, w=w)
    if w.shape != x.shape[-1:]:
        raise ValueError(f'toyscale: w {tuple(w.shape)} must be [{x.shape[-1]}], the last axis of x.')
    return x


TOY = KernelOp(
    'toyscale',
    inputs='Tensor x, Tensor w', attrs='float alpha', outputs=('out', 'rowmax'), differentiable_outputs=1,
    grads=('x', 'w'),
    backends=[
        Backend('cpu', lambda p: None if p.dtype == torch.float32 else f'dtype {p.dtype}: fp32 only',
                _toy_cpu.__name__),
        Backend('reference', lambda p: None, _toy_ref.__name__),
    ],
    problem=_toy_problem,
    fake=lambda x, w, alpha: (x.new_empty(x.shape), x.new_empty(x.shape[:-1])),
    flops=lambda x_shape, w_shape, alpha: math.prod(x_shape),
    reference=_toy_ref.__name__,
)


def test_toy_op_dispatch_inside_the_op(monkeypatch):
    monkeypatch.delenv('HIERVIT_TOYSCALE_BACKEND', raising=False)
    monkeypatch.delenv('HIERVIT_BACKEND', raising=False)
    x, w = torch.randn(3, 4, requires_grad=True), torch.randn(4, requires_grad=True)
    _calls.clear()
    out, rowmax = torch.ops.hiervit.toyscale_fwd(x, w, 0.5, 'auto')
    out.sum().backward()
    assert _calls == ['cpu', 'cpu-bwd']
    torch.testing.assert_close(out, x * w * 0.5)
    torch.testing.assert_close(x.grad, (w * 0.5).expand(3, 4))
    assert not rowmax.requires_grad
    _calls.clear()
    torch.ops.hiervit.toyscale_fwd(x.double(), w.double(), 0.5, 'auto')  # cpu refuses fp64: auto falls through
    assert _calls == ['reference']
    with pytest.raises(BackendError, match="'cpu'.*fp32 only.*Backends that can: \\['reference'\\]"):
        torch.ops.hiervit.toyscale_fwd(x.double(), w.double(), 0.5, 'cpu')
    monkeypatch.setenv('HIERVIT_TOYSCALE_BACKEND', 'reference')
    _calls.clear()
    torch.ops.hiervit.toyscale_fwd(x, w, 0.5, 'auto')
    assert _calls == ['reference']
    with pytest.raises(ValueError, match=r'toyscale: w \(3,\) must be \[4\]'):
        torch.ops.hiervit.toyscale_fwd(x, w[:3], 0.5, 'auto')
    with pytest.raises(ValueError, match='toyscale: x, w must share a dtype'):
        torch.ops.hiervit.toyscale_fwd(x, w.double(), 0.5, 'auto')


def test_toy_op_flops_fake_and_export():
    x, w = torch.randn(3, 4, requires_grad=True), torch.randn(4, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        torch.ops.hiervit.toyscale_fwd(x, w, 2.0, 'auto')[0].sum().backward()
    counts = counter.get_flop_counts()['Global']
    assert counts[torch.ops.hiervit.toyscale_fwd] == 12 and counts[torch.ops.hiervit.toyscale_bwd] == 24
    meta = torch.ops.hiervit.toyscale_fwd(x.to('meta'), w.to('meta'), 2.0, 'auto')
    assert [t.shape for t in meta] == [(3, 4), (3,)]

    class M(torch.nn.Module):
        def forward(self, x, w):
            return torch.ops.hiervit.toyscale_fwd(x, w, 2.0, 'auto')[0]

    ep = torch.export.export(M(), (x.detach(), w.detach()))
    targets = [n.target for n in ep.graph.nodes if n.op == 'call_function']
    assert torch.ops.hiervit.toyscale_fwd.default in targets
    decomposed = ep.run_decompositions({torch.ops.hiervit.toyscale_fwd.default: TOY._decompose})
    assert all('hiervit' not in str(n.target) for n in decomposed.graph.nodes)
    torch.testing.assert_close(decomposed.module()(x.detach(), w.detach()), x * w * 2.0)


# --- what every registered op gets ------------------------------------------------------------------------------------

@pytest.mark.parametrize('op', ['neighborhood', 'routed'])
def test_empty_batch_returns_empty(op):
    if op == 'neighborhood':
        q, k, v = (torch.randn(0, 6, 7, 2, 8, requires_grad=True) for _ in range(3))
        rpb = torch.randn(2, 5, 5, requires_grad=True)
        out = neighborhood_attention(q, k, v, 3, rpb=rpb)
        params = (q, k, v, rpb)
    else:
        q, k, v = (torch.randn(0, 2, 4, 3, 8, requires_grad=True) for _ in range(3))
        idx = torch.zeros(0, 4, 2, dtype=torch.long)
        out = routed_attention(q, k, v, idx)
        params = (q, k, v)
    assert out.shape == v.shape[:3] + (q.shape[3] if op == 'routed' else v.shape[3],) + v.shape[4:]
    grads = torch.autograd.grad(out.sum(), params)
    assert [g.shape for g in grads] == [p.shape for p in params]
    assert all(not g.any() for g in grads)


@pytest.mark.parametrize('kop', [NEIGHBORHOOD, ROUTED], ids=lambda k: k.name)
def test_fakes_are_contiguous_like_the_backends(kop):
    """Permuted (strided) inputs: the fakes promise contiguous outputs and gradients, as the backends return."""
    def strided(*shape):
        return torch.randn(*reversed(shape)).permute(*reversed(range(len(shape)))).to('meta')

    if kop is NEIGHBORHOOD:
        q, k, v = strided(1, 6, 7, 2, 8), strided(1, 6, 7, 2, 8), strided(1, 6, 7, 2, 8)
        extra, attrs = (strided(2, 5, 5),), ([3, 3], [1, 1], 0.3)
    else:
        q, k, v = strided(1, 2, 4, 3, 8), strided(1, 2, 4, 3, 8), strided(1, 2, 4, 3, 8)
        extra, attrs = (torch.zeros(1, 4, 2, dtype=torch.long, device='meta'),), (0.3,)
    outs = kop.fwd(q, k, v, *extra, *attrs, 'auto')
    grads = kop.bwd(outs[0], q, k, v, *extra, *outs, *attrs, 'auto')
    assert all(t.is_contiguous() for t in outs + grads)


def test_one_triton_precision_rule(monkeypatch):
    pytest.importorskip('triton')
    from hiervit.kernels.neighborhood import triton as na_triton
    from hiervit.kernels.routed import triton as routed_triton
    for interpret in ('0', '1'):
        monkeypatch.setenv('TRITON_INTERPRET', interpret)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            q = torch.zeros(1, 2, 4, 16, 32, dtype=dtype)
            routed = routed_triton._meta(q, q, q)
            na = na_triton._launch_args(torch.zeros(1, 8, 8, 2, 32, dtype=dtype), torch.zeros(1, 8, 8, 2, 32), [3, 3],
                                        [1, 1])[3]
            want = triton_precision(dtype)
            assert (routed['DOT_F32'], routed['PRECISION']) == (na['F32_DOT'], na['PREC']) == want
            assert want == ((True, 'ieee') if interpret == '1' or dtype == torch.float32 else (False, 'tf32'))


def test_every_declared_backend_is_listed():
    assert NEIGHBORHOOD.dispatcher.names == ['cpp', 'cpu', 'triton', 'reference', 'natten', 'flex']
    assert ROUTED.dispatcher.names == ['cpp', 'cpu', 'triton', 'reference']
    q = torch.randn(1, 6, 7, 2, 8)
    with pytest.raises(BackendError, match="'natten' (runs outside the custom op|.*natten is not installed)"):
        NEIGHBORHOOD.fwd(q, q, q, None, [3, 3], [1, 1], 0.3, 'natten')
