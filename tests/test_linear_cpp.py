"""The fused C++ CPU linear-attention backend (`cpp`): outputs, saved state and all four gradients against the reference
over a seeded sweep (every normaliser, odd and tiny token counts, head dims across SIMD widths, strided fused-qkv
views, token-chunked heads, window layouts), half-precision inputs, gradcheck, a deterministic backward independent of
the thread count, torch.compile, and the dispatcher's choice and fallback."""
import random

import pytest
import torch

from hiervit.kernels import BackendError
from hiervit.kernels.linear import NORMALIZERS, cpp, linear_attention, linear_dispatcher, linear_problem, reference

pytestmark = pytest.mark.skipif(cpp.availability() is not None, reason=f'cpp backend: {cpp.availability()}')


def _inputs(rng: random.Random, B, H, N, d, dv, normalizer, fused, dtype=torch.float32):
    """phi(q), phi(k) >= 0 (signed for none / injective, as InLine's identity map), v signed; `fused`: strided views
    of one `[B, N, 3, H, d]` qkv projection, as the models pass them."""
    g = torch.Generator().manual_seed(rng.randrange(2 ** 31))
    if fused:
        q, k, v = torch.randn(B, N, 3, H, d, generator=g, dtype=dtype).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q, k = (torch.randn(B, H, N, d, generator=g, dtype=dtype) for _ in range(2))
        v = torch.randn(B, H, N, dv, generator=g, dtype=dtype)
    if normalizer not in ('none', 'injective'):
        q, k = q.abs(), k.abs()
    return q, k, v


def _clamp_bound(q, k):
    """Halfway between the two middle row sums: about half the rows are clamped and none sits on the kink."""
    r = (q.detach().double() @ k.detach().double().sum(-2).unsqueeze(-1)).flatten().sort().values
    m = r.numel() // 2
    return float(r[m - 1] + r[m]) / 2 if m else float(r[0]) * 1.5


def _case(rng: random.Random):
    normalizer = rng.choice(NORMALIZERS)
    B, H = rng.randint(1, 3), rng.randint(1, 4)
    # tiny, odd and SIMD-block-crossing token counts; a few long heads with few (batch, head) pairs take the
    # token-chunked path (partial sums added in chunk order)
    N = rng.choice([1, 2, 3, 5, 7, 8, 9, 17, 31, 49, 64, 65, 100]) if rng.random() < 0.85 else rng.randint(513, 600)
    d = rng.choice([1, 3, 8, 15, 16, 17, 32, 33, 40])
    fused = rng.random() < 0.3
    dv = d if fused else rng.choice([1, 5, 16, 24, 32, 47])
    return dict(B=B, H=H, N=N, d=d, dv=dv, normalizer=normalizer, fused=fused, with_t=rng.random() < 0.6)


def _modules(case, rng, dtype=torch.float32):
    q, k, v = _inputs(rng, case['B'], case['H'], case['N'], case['d'], case['dv'], case['normalizer'], case['fused'],
                      dtype)
    t = torch.rand(case['H'], dtype=dtype) + 0.5 if case['with_t'] else None
    dout = torch.randn(*v.shape, dtype=dtype)
    attrs = (case['normalizer'], 1e-6, _clamp_bound(q, k), case['d'] ** -0.5)
    saved = cpp.forward(q, k, v, t, *attrs)
    got = list(saved) + list(cpp.backward(dout, q, k, v, t, *saved, *attrs))
    # the oracle in float64 on the same values: fp32 gradients of near-cancelling terms (sum / mean rows with small
    # head dims) differ from each other by twice their own rounding, from the exact result by once
    x64 = [None if x is None else x.double() for x in (q, k, v, t)]
    saved = reference.forward(*x64, *attrs)
    want = list(saved) + list(reference.backward(dout.double(), *x64, *saved, *attrs))
    return got, [None if w is None else w.to(g.dtype) for w, g in zip(want, got)]


_NAMES = ('out', 'kv', 'ksum', 'r', 'dq', 'dk', 'dv', 'dt')


# Measured worst errors over the sweep, relative to each result's largest magnitude: out, kv, ksum, r, dk, dv 1.5e-6;
# dt 1e-5; dq 5e-5 (sum / mean rows whose two gradient terms nearly cancel, head dim 1).
_TOL = dict(out=1e-5, kv=1e-5, ksum=1e-5, r=1e-5, dq=2e-4, dk=1e-5, dv=1e-5, dt=5e-5)


def test_random_sweep_matches_reference():
    rng = random.Random(0)
    for _ in range(60):
        case = _case(rng)
        got, want = _modules(case, rng)
        for name, a, b in zip(_NAMES, got, want):
            if b is None:
                assert a is None, (name, case)
                continue
            assert a.shape == b.shape and a.dtype == b.dtype and a.is_contiguous(), (name, case)
            assert torch.isfinite(a).all(), (name, case)
            torch.testing.assert_close(a, b, atol=_TOL[name] * (1 + b.abs().max().item()), rtol=0,
                                       msg=f'{name}: {case}')


def test_float64_is_computed_in_float64():
    rng = random.Random(1)
    for _ in range(10):
        case = _case(rng)
        got, want = _modules(case, rng, torch.float64)
        for name, a, b in zip(_NAMES, got, want):
            if b is not None:
                assert a.dtype == torch.float64, name
                torch.testing.assert_close(a, b, atol=1e-10 * (1 + b.abs().max().item()), rtol=0,
                                           msg=f'{name}: {case}')


@pytest.mark.parametrize('normalizer', NORMALIZERS)
def test_op_gradients_with_fused_inputs_and_window_layout(normalizer):
    """Through the public op and autograd: gradients reach one fused qkv tensor; windows (49 tokens) in the batch."""
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(2 * 4, 49, 3, 3, 16, generator=g)
    if normalizer not in ('none', 'injective'):
        qkv[:, :, :2] = qkv[:, :, :2].abs()
    qkv.requires_grad_()
    t = (torch.rand(3, 1, 1, generator=g) + 0.5).requires_grad_()
    dout = torch.randn(8, 3, 49, 16, generator=g)
    results = []
    for backend in ('cpp', 'reference'):
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        c = _clamp_bound(q.detach(), k.detach())
        out = linear_attention(q, k, v, normalizer, t, clamp_min=c, backend=backend)
        results.append([out, *torch.autograd.grad(out, (qkv, t), dout)])
    for name, a, b in zip(('out', 'dqkv', 'dt'), *results):
        torch.testing.assert_close(a, b, atol=5e-5 * (1 + b.abs().max().item()), rtol=0, msg=name)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    """bf16/fp16 inputs are computed in fp32 and the results cast back: equal to the fp32 reference on the rounded
    inputs up to the output rounding."""
    g = torch.Generator().manual_seed(4)
    q, k = (torch.rand(2, 3, 37, 16, generator=g).to(dtype).requires_grad_() for _ in range(2))
    v = torch.randn(2, 3, 37, 16, generator=g).to(dtype).requires_grad_()
    t = (torch.rand(3, 1, 1, generator=g) + 0.5).requires_grad_()  # fp32 parameter, half activations (autocast)
    dout = torch.randn(2, 3, 37, 16, generator=g).to(dtype)
    c = _clamp_bound(q.float(), k.float())
    out = linear_attention(q, k, v, 'clamp', t, clamp_min=c, backend='cpp')
    grads = torch.autograd.grad(out, (q, k, v, t), dout)
    assert out.dtype == dtype and all(x.dtype == dtype for x in grads[:3]) and grads[3].dtype == torch.float32
    ref_in = [x.detach().float().requires_grad_() for x in (q, k, v)] + [t]
    ref = linear_attention(*ref_in[:3], 'clamp', t, clamp_min=c, backend='reference')
    ref_grads = torch.autograd.grad(ref, ref_in, dout.float())
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.float(), ref, atol=2 * eps * ref.abs().max().item(), rtol=0)
    for name, a, b in zip(('dq', 'dk', 'dv', 'dt'), grads, ref_grads):
        torch.testing.assert_close(a.float(), b, atol=2 * eps * b.abs().max().item(), rtol=0, msg=name)


@pytest.mark.parametrize('normalizer', NORMALIZERS)
def test_gradcheck_float64(normalizer):
    g = torch.Generator().manual_seed(5)
    q, k = (torch.rand(1, 2, 5, 3, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
    v = torch.randn(1, 2, 5, 2, generator=g, dtype=torch.float64).requires_grad_()
    t = (torch.rand(2, 1, 1, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    c = _clamp_bound(q.detach(), k.detach())
    fn = lambda *a: linear_attention(*a[:3], normalizer, a[3], clamp_min=c, backend='cpp')
    assert torch.autograd.gradcheck(fn, (q, k, v, t))


def test_backward_is_deterministic_across_thread_counts():
    """Bitwise equal gradients with 1 and 2 threads, also for token-chunked heads (one (batch, head) pair)."""
    g = torch.Generator().manual_seed(6)
    threads = torch.get_num_threads()
    for shape in ((1, 1, 2000, 32), (3, 5, 70, 16)):
        q, k = (torch.rand(*shape, generator=g).requires_grad_() for _ in range(2))
        v = torch.randn(*shape, generator=g).requires_grad_()
        t = (torch.rand(shape[1], generator=g) + 0.5).requires_grad_()
        dout = torch.randn(*shape, generator=g)
        runs = []
        try:
            for n in (1, 2, 1):
                torch.set_num_threads(n)
                out = linear_attention(q, k, v, 'clamp', t, clamp_min=_clamp_bound(q.detach(), k.detach()),
                                       backend='cpp')
                runs.append([out, *torch.autograd.grad(out, (q, k, v, t), dout)])
        finally:
            torch.set_num_threads(threads)
        for run in runs[1:]:
            for a, b in zip(run, runs[0]):
                assert torch.equal(a, b)


def test_torch_compile_fullgraph():
    g = torch.Generator().manual_seed(7)
    q, k = (torch.rand(2, 3, 11, 8, generator=g).requires_grad_() for _ in range(2))
    v = torch.randn(2, 3, 11, 8, generator=g).requires_grad_()
    t = (torch.rand(3, 1, 1, generator=g) + 0.5).requires_grad_()
    dout = torch.randn(2, 3, 11, 8, generator=g)
    fn = lambda *a: linear_attention(*a[:3], 'clamp', a[3], clamp_min=5., backend='cpp')
    results = []
    for f in (torch.compile(fn, fullgraph=True, backend='aot_eager'), fn):
        out = f(q, k, v, t)
        results.append([out, *torch.autograd.grad(out, (q, k, v, t), dout)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_dispatch_prefers_cpp_on_cpu_and_falls_back_without_it(monkeypatch):
    from hiervit.kernels import _cpp_ext
    q = torch.rand(1, 2, 9, 4)
    monkeypatch.delenv('HIERVIT_LINEAR_BACKEND', raising=False)
    monkeypatch.delenv('HIERVIT_BACKEND', raising=False)
    assert linear_dispatcher.names.index('cpp') < linear_dispatcher.names.index('cpu')
    assert linear_dispatcher.select(linear_problem(q, q, q)) == 'cpp'
    # a machine where the library cannot be built: cpp refused with the reason, auto runs cpu
    monkeypatch.setattr(cpp, 'EXTENSION', _cpp_ext.CppExtension(cpp.EXTENSION.name, cpp.EXTENSION.sources,
                                                                _state='no C++ compiler found (test)'))
    assert linear_dispatcher.select(linear_problem(q, q, q)) == 'cpu'
    with pytest.raises(BackendError, match="'cpp'.*no C\\+\\+ compiler found"):
        linear_attention(q, q, q, backend='cpp')
    assert 'CPU tensors only' in linear_dispatcher.explain(linear_problem(*(x.to('meta') for x in (q, q, q))))['cpp']
