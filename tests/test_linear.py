"""Linear attention: reference semantics (quadratic form, the official chains), cpu backend vs reference, op
registration (dispatch, meta, FLOPs, compile), errors."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hiervit.kernels import BackendError
from hiervit.kernels.linear import (
    LINEAR, NORMALIZERS, linear_attention, linear_attention_flops, linear_dispatcher, linear_problem)
from hiervit.kernels.linear.reference import resolve


def make_inputs(B=2, H=3, N=11, d=6, dv=5, dtype=torch.float32, signed=False, fused=False, gen=None):
    """phi(q), phi(k) >= 0 (or signed, as InLine's identity map), v signed; `fused`: strided views of one qkv
    projection output `[B, N, 3, H, d]`, as the models pass them."""
    g = gen or torch.Generator().manual_seed(0)
    if fused:
        assert d == dv
        qkv = torch.randn(B, N, 3, H, d, generator=g, dtype=dtype)
        qkv[:, :, :2] = qkv[:, :, :2] if signed else qkv[:, :, :2].abs()
        qkv.requires_grad_()
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, d] views with row stride 3 * H * d
        return q, k, v, qkv
    q = torch.randn(B, H, N, d, generator=g, dtype=dtype)
    k = torch.randn(B, H, N, d, generator=g, dtype=dtype)
    if not signed:
        q, k = q.abs(), k.abs()
    v = torch.randn(B, H, N, dv, generator=g, dtype=dtype)
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), None


def make_temperature(H, dtype=torch.float32, gen=None):
    g = gen or torch.Generator().manual_seed(1)
    return (torch.rand(H, 1, 1, generator=g, dtype=dtype) + 0.5).requires_grad_()


def median_r(q, k):
    """A clamp bound that clamps about half of the rows (both branches of the clamp get exercised), halfway between
    two row sums so that no row sits on the clamp's kink."""
    r = (q.detach() @ k.detach().sum(-2).unsqueeze(-1)).flatten().sort().values
    if r.numel() == 1:
        return r.item() * 1.5
    m = r.numel() // 2
    return (r[m - 1] + r[m]).item() / 2


def run(backend, q, k, v, normalizer, temperature, dout, **kw):
    out = linear_attention(q, k, v, normalizer, temperature, backend=backend, **kw)
    leaves = [q, k, v] + ([temperature] if temperature is not None else [])
    return [out] + list(torch.autograd.grad(out, leaves, dout))


def assert_all_close(got, want, atol, rtol, names=('out', 'dq', 'dk', 'dv', 'dt')):
    assert len(got) == len(want)
    for name, a, b in zip(names, got, want):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f'{name}: {m}')


def quadratic(q, k, v, normalizer, temperature, eps=1e-6, clamp_min=100., scale=None):
    """The same attention through the explicit `[N, N]` kernel matrix `A = q k^T` (associativity not assumed)."""
    n = k.shape[-2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    a = q @ k.transpose(-1, -2)
    t = 1 if temperature is None else temperature.reshape(1, -1, 1, 1)
    r = a.sum(-1, keepdim=True)
    av = a @ v
    if normalizer == 'none':
        return t * av
    if normalizer == 'sum':
        return t * av / (r + eps)
    if normalizer == 'mean':
        return t * (av / n) / (r / n + eps)
    if normalizer == 'clamp':
        return t * av / r.clamp(min=clamp_min)
    return t * (scale / n) * av + (1 - scale / n * r) * v.mean(-2, keepdim=True)


# --- reference semantics ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('normalizer', NORMALIZERS)
@pytest.mark.parametrize('with_t', [False, True])
def test_reference_matches_quadratic_form(normalizer, with_t):
    q, k, v, _ = make_inputs(dtype=torch.float64, signed=normalizer in ('none', 'injective'))
    t = make_temperature(3, torch.float64) if with_t else None
    kw = dict(clamp_min=median_r(q, k), scale=0.37)
    dout = torch.randn(2, 3, 11, 5, dtype=torch.float64)
    got = run('reference', q, k, v, normalizer, t, dout, **kw)
    want = quadratic(q, k, v, normalizer, t, **kw)
    leaves = [q, k, v] + ([t] if with_t else [])
    assert_all_close(got, [want] + list(torch.autograd.grad(want, leaves, dout)), atol=1e-10, rtol=1e-9)


def test_official_formulations():
    """Each normaliser equals the chain its paper's code writes (re-expressed here from the official repositories)."""
    q, k, v, _ = make_inputs(B=2, H=3, N=13, d=8, dv=8, dtype=torch.float64)
    n = k.shape[-2]
    # L2ViT LinearAttention: clamp(q . sum(k), 1e2), (k^T v) * temperature, q @ that / denom
    t = torch.rand(3, 1, 1, dtype=torch.float64)
    for c in (100., median_r(q, k)):
        denom = torch.clamp(q @ k.transpose(-2, -1).sum(dim=-1, keepdim=True), c)
        want = q @ ((k.transpose(-2, -1) @ v) * t) / denom
        torch.testing.assert_close(linear_attention(q, k, v, 'clamp', t, clamp_min=c), want)
    # FLatten FocusedLinearAttention (2024 version): z = 1 / (q mean(k)^T + 1e-6), kv = (k^T n^-.5)(v n^-.5)
    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    want = q @ ((k.transpose(-2, -1) * n ** -0.5) @ (v * n ** -0.5)) * z
    torch.testing.assert_close(linear_attention(q, k, v, 'mean', eps=1e-6), want)
    # InLine: kv = (k^T (s/n)^.5)(v (s/n)^.5), q kv + (1 - q mean(k)^T s) mean(v), identity feature map (signed)
    q, k, v, _ = make_inputs(B=2, H=3, N=13, d=8, dv=8, dtype=torch.float64, signed=True)
    s = 8 ** -0.5
    want = (q @ ((k.transpose(-2, -1) * (s / n) ** 0.5) @ (v * (s / n) ** 0.5))
            + (1 - q @ k.mean(dim=2, keepdim=True).transpose(-2, -1) * s) * v.mean(dim=2, keepdim=True))
    torch.testing.assert_close(linear_attention(q, k, v, 'injective'), want)


def test_resolve():
    assert resolve('mean', 8, 0.5) == ('sum', 0.125)
    assert resolve('injective', 8, 0.5) == ('injective', 0.0625)
    assert resolve('clamp', 8, 0.5) == ('clamp', 1.0)


# --- cpu backend vs reference ---------------------------------------------------------------------------------------

def _sweep_cases(count=24, seed=0):
    """Seeded random problems: odd token counts, d != dv, both chunk plans, fused (strided) inputs."""
    g = torch.Generator().manual_seed(seed)
    ri = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))
    cases = []
    for i in range(count):
        normalizer = NORMALIZERS[i % len(NORMALIZERS)]
        fused = i % 3 == 0
        d = ri(1, 12)
        cases.append(dict(B=ri(1, 3), H=ri(1, 4), N=ri(1, 40), d=d, dv=d if fused else ri(1, 12),
                          normalizer=normalizer, with_t=bool(i % 2), fused=fused, chunk=(0, 600, 5000)[i % 3]))
    return cases


_CASE_ID = '{normalizer}-B{B}H{H}N{N}d{d}dv{dv}-t{with_t}-f{fused}-c{chunk}'


@pytest.mark.parametrize('case', _sweep_cases(), ids=lambda c: _CASE_ID.format(**c))
def test_cpu_matches_reference_sweep(case, monkeypatch):
    import hiervit.kernels.linear.cpu as cpu
    if case['chunk']:
        monkeypatch.setattr(cpu, '_CHUNK_BYTES', case['chunk'])  # many chunks: head ranges and batch ranges
    B, H, N, d, dv = (case[x] for x in ('B', 'H', 'N', 'd', 'dv'))
    signed = case['normalizer'] in ('none', 'injective')
    q, k, v, qkv = make_inputs(B, H, N, d, dv, signed=signed, fused=case['fused'])
    t = make_temperature(H) if case['with_t'] else None
    kw = dict(clamp_min=median_r(q, k))
    dout = torch.randn(B, H, N, dv)
    if case['fused']:  # gradients arrive at the one fused tensor
        got = [linear_attention(q, k, v, case['normalizer'], t, backend='cpu', **kw)]
        want = [linear_attention(q, k, v, case['normalizer'], t, backend='reference', **kw)]
        leaves = [qkv] + ([t] if t is not None else [])
        got += torch.autograd.grad(got[0], leaves, dout)
        want += torch.autograd.grad(want[0], leaves, dout)
    else:
        got = run('cpu', q, k, v, case['normalizer'], t, dout, **kw)
        want = run('reference', q, k, v, case['normalizer'], t, dout, **kw)
    # fp32 with sums over N tokens; measured max error ~1e-6 relative
    assert_all_close(got, want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('normalizer', ['clamp', 'mean', 'injective'])
def test_cpu_half_precision(dtype, normalizer):
    q, k, v, _ = make_inputs(B=2, H=2, N=17, d=8, dv=8, dtype=dtype, signed=normalizer == 'injective')
    t = make_temperature(2)  # fp32 parameter with half activations, as under autocast
    dout = torch.randn(2, 2, 17, 8, dtype=dtype)
    kw = dict(clamp_min=median_r(q.float(), k.float()))
    got = run('cpu', q, k, v, normalizer, t, dout, **kw)
    assert all(x.dtype == dtype for x in got[:4]) and got[4].dtype == torch.float32
    want = run('reference', *(x.detach().float().requires_grad_() for x in (q, k, v)), normalizer, t,
               dout.float(), **kw)
    assert_all_close([x.float() for x in got], want, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize('backend', ['reference', 'cpu'])
@pytest.mark.parametrize('normalizer', NORMALIZERS)
def test_gradcheck_float64(backend, normalizer):
    q, k, v, _ = make_inputs(B=2, H=2, N=5, d=3, dv=2, dtype=torch.float64, signed=normalizer == 'injective')
    t = make_temperature(2, torch.float64)
    c = median_r(q, k)
    fn = lambda *a: linear_attention(*a[:3], normalizer, a[3], clamp_min=c, backend=backend)
    assert torch.autograd.gradcheck(fn, (q, k, v, t))


# --- op registration: dispatch, meta, empty batch, FLOPs, compile ----------------------------------------------------

def test_dispatch_auto_and_env(monkeypatch):
    q, k, v, _ = make_inputs()
    problem = linear_problem(q, k, v)
    monkeypatch.delenv('HIERVIT_LINEAR_BACKEND', raising=False)
    monkeypatch.delenv('HIERVIT_BACKEND', raising=False)
    from hiervit.kernels.linear.cpp import availability
    assert linear_dispatcher.select(problem) == ('cpp' if availability() is None else 'cpu')
    monkeypatch.setenv('HIERVIT_LINEAR_BACKEND', 'reference')
    assert linear_dispatcher.select(problem) == 'reference'
    monkeypatch.setenv('HIERVIT_LINEAR_BACKEND', 'nope')
    with pytest.raises(BackendError, match='unknown backend'):
        linear_attention(q, k, v)
    reasons = linear_dispatcher.explain(linear_problem(*(x.detach().to('meta') for x in (q, k, v))))
    assert reasons['reference'] is None and 'meta' in reasons['cpu']


def test_meta_forward_backward_and_empty_batch():
    q, k, v, _ = make_inputs(dv=4)
    qm, km, vm = (x.detach().to('meta').requires_grad_() for x in (q, k, v))
    t = make_temperature(3).detach().to('meta').requires_grad_()
    out = linear_attention(qm, km, vm, 'clamp', t)
    assert out.device.type == 'meta' and out.shape == (2, 3, 11, 4)
    out.sum().backward()
    assert qm.grad.shape == qm.shape and t.grad.shape == (3, 1, 1)
    e = [x[:0].detach().requires_grad_() for x in (q, k, v)]
    out = linear_attention(*e, 'mean')
    assert out.shape == (0, 3, 11, 4)
    out.sum().backward()
    assert e[0].grad.shape == e[0].shape


def test_flop_counter():
    q, k, v, _ = make_inputs(B=2, H=3, N=11, d=6, dv=5)
    for normalizer in ('none', 'clamp'):
        fwd = 2 * 2 * 3 * 11 * 6 * (2 * 5 + (normalizer != 'none'))
        assert linear_attention_flops(q.shape, v.shape, normalizer) == fwd
        with FlopCounterMode(display=False) as counter:
            out = linear_attention(q, k, v, normalizer)
        assert counter.get_total_flops() == fwd
        with FlopCounterMode(display=False) as counter:
            out.sum().backward()
        assert counter.get_total_flops() == 2 * fwd


def test_torch_compile_fullgraph():
    q, k, v, _ = make_inputs()
    t = make_temperature(3)
    dout = torch.randn(2, 3, 11, 5)
    fn = torch.compile(lambda *a: linear_attention(*a[:3], 'clamp', a[3], clamp_min=5.), fullgraph=True,
                       backend='aot_eager')
    got = fn(q, k, v, t)
    got = [got] + list(torch.autograd.grad(got, (q, k, v, t), dout))
    assert_all_close(got, run(None, q, k, v, 'clamp', t, dout, clamp_min=5.), atol=1e-6, rtol=1e-5)


def test_export_decomposes_to_the_reference_and_fakes_are_contiguous():
    q, k, v, _ = make_inputs(d=5, dv=5)
    t = make_temperature(3).detach()

    class M(torch.nn.Module):
        def forward(self, q, k, v, t):
            return linear_attention(q, k, v, 'clamp', t, clamp_min=3.)

    args = tuple(x.detach() for x in (q, k, v)) + (t,)
    ep = torch.export.export(M(), args)
    assert torch.ops.hiervit.linear_attention_fwd.default in [n.target for n in ep.graph.nodes]
    decomposed = ep.run_decompositions({torch.ops.hiervit.linear_attention_fwd.default: LINEAR._decompose})
    assert all('hiervit' not in str(n.target) for n in decomposed.graph.nodes)
    torch.testing.assert_close(decomposed.module()(*args), M()(*args))
    # strided (fused qkv) inputs: the fakes promise contiguous outputs and gradients, as the backends return
    qm, km, vm, _ = make_inputs(d=5, dv=5, fused=True)
    qm, km, vm = (x.detach().to('meta') for x in (qm, km, vm))
    outs = LINEAR.fwd(qm, km, vm, t.to('meta').reshape(-1), 'clamp', 1e-6, 3., 1., 'auto')
    grads = LINEAR.bwd(outs[0], qm, km, vm, t.to('meta').reshape(-1), *outs, 'clamp', 1e-6, 3., 1., 'auto')
    assert not qm.is_contiguous() and all(x.is_contiguous() for x in outs + grads)


# --- bad calls --------------------------------------------------------------------------------------------------------

def test_bad_calls():
    q, k, v, _ = make_inputs()
    t = make_temperature(3)
    cases = [
        ((q[0], k, v), 'q must be 4-D'),
        ((q, k[..., :4], v), 'k .* must have the shape of q'),
        ((q, k, v[:, :, :6]), 'batch, heads and tokens'),
        ((q, k, v.double()), 'share a dtype'),
        ((q, k.int(), v), 'k must be a floating tensor'),
        ((q, k, v, 'softmax'), 'normalizer must be one of'),
        ((q, k, v, 'clamp', t[:2]), 'one value per head'),
        ((q[:, :, :0], k[:, :, :0], v[:, :, :0]), 'only the batch may be empty'),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            linear_attention(*args)
    with pytest.raises(TypeError, match='clamp_min'):
        linear_attention(q, k, v, 'clamp', clamp_min=torch.tensor(1.))
    with pytest.raises(TypeError, match='temperature'):
        linear_attention(q, k, v, 'clamp', t.int())
    with pytest.raises(BackendError, match="unknown backend 'cuda'"):
        linear_attention(q, k, v, backend='cuda')
