"""The fused C++ CPU window-attention backend (`cpp`): outputs, log-sum-exp and all four gradients against the
reference over a seeded sweep of 120 tiny problems (odd and non-square maps, windows larger than the map,
stripes, shifts, both padding modes and positions, odd head dims), float64, low-precision and strided inputs, a
deterministic backward, dispatch, and the refusal (with the cpu path taking over) where no compiler exists."""
import random

import pytest
import torch

from hiervit.kernels import BackendError
from hiervit.kernels.window import WindowProblem, cpp, reference, resolve_window, window_attention, window_dispatcher

pytestmark = pytest.mark.skipif(cpp.availability() is not None, reason=f'cpp backend: {cpp.availability()}')


def _case(rng: random.Random):
    """A random tiny problem: maps up to 13 x 13, windows from 1 to 3 past the map (all padding-heavy) or whole axes
    (stripes, full attention), random shifts, head dims 1-20 (SIMD tails), with or without the bias table."""
    H, W = rng.randint(1, 13), rng.randint(1, 13)
    win = tuple(rng.choice([None, rng.randint(1, L + 3)]) for L in (H, W))
    wh, ww = (L if w is None else w for w, L in zip(win, (H, W)))
    shift = (rng.randrange(wh) if rng.random() < 0.5 else 0, rng.randrange(ww) if rng.random() < 0.5 else 0)
    window, shift, pad = resolve_window(H, W, win, shift, rng.choice(['end', 'center']))
    B, heads, d, dv = rng.randint(1, 3), rng.randint(1, 3), rng.randint(1, 20), rng.randint(1, 20)
    return H, W, window, shift, pad, rng.random() < 0.5, B, heads, d, dv, rng.random() < 0.6


def _both(H, W, window, shift, pad, mask_pad, B, heads, d, dv, has_rpb, dtype=torch.float32):
    q, k = (torch.randn(B, H, W, heads, d, dtype=dtype) * 1.5 for _ in range(2))
    v = torch.randn(B, H, W, heads, dv, dtype=dtype)
    rpb = torch.randn((2 * window[0] - 1) * (2 * window[1] - 1), heads, dtype=dtype) if has_rpb else None
    dout = torch.randn(B, H, W, heads, dv, dtype=dtype)
    scale = d ** -0.5
    results = []
    for mod in (cpp, reference):
        out, lse = mod.forward(q, k, v, rpb, window, shift, pad, mask_pad, scale)
        results.append((out, lse, mod.backward(dout, q, k, v, rpb, out, lse, window, shift, pad, mask_pad, scale)))
    return results


def test_random_sweep_matches_reference():
    # Measured worst errors over 300 such cases: out 1.2e-6, lse 2e-7, gradients 6e-6 of (1 + their largest value).
    rng = random.Random(0)
    for _ in range(120):
        case = _case(rng)
        (out, lse, grads), (r_out, r_lse, r_grads) = _both(*case)
        msg = f'H, W, window, shift, pad, mask_pad, B, heads, d, dv, rpb = {case}'
        torch.testing.assert_close(out, r_out, atol=3e-5, rtol=0, msg=msg)
        torch.testing.assert_close(lse, r_lse, atol=3e-5, rtol=0, msg=msg)
        for name, g, r in zip(('dq', 'dk', 'dv', 'drpb'), grads, r_grads):
            if r is None:
                assert g is None, name
                continue
            assert torch.isfinite(g).all(), (name, msg)
            torch.testing.assert_close(g, r, atol=3e-5 * (1 + r.abs().max().item()), rtol=0, msg=f'{name}: {msg}')


def test_float64_compute():
    """float64 inputs are computed in float64 (the gradcheck path), outputs and gradients agree to rounding (the
    backward renormalises its recomputed rows in fp64 rather than use the fp32 log-sum-exp)."""
    rng = random.Random(1)
    for _ in range(30):
        case = _case(rng)
        (out, _, grads), (r_out, _, r_grads) = _both(*case, dtype=torch.float64)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, r_out, atol=1e-12, rtol=0)
        for g, r in zip(grads, r_grads):
            if r is not None:
                torch.testing.assert_close(g, r, atol=1e-11 * (1 + r.abs().max().item()), rtol=0)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    """bf16/fp16 inputs are computed in fp32 and the results cast back: equal to the fp32 reference on the rounded
    inputs up to the output rounding."""
    q, k, v = (torch.randn(2, 11, 9, 2, 8).to(dtype).requires_grad_() for _ in range(3))
    rpb = torch.randn(7 * 9, 2).to(dtype).requires_grad_()
    dout = torch.randn(2, 11, 9, 2, 8).to(dtype)
    out = window_attention(q, k, v, (4, 5), (1, 2), rpb=rpb, backend='cpp')
    grads = torch.autograd.grad(out, (q, k, v, rpb), dout)
    ref_in = [t.detach().float().requires_grad_() for t in (q, k, v, rpb)]
    ref = window_attention(*ref_in[:3], (4, 5), (1, 2), rpb=ref_in[3], backend='reference')
    ref_grads = torch.autograd.grad(ref, ref_in, dout.float())
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.float(), ref, atol=2 * eps * ref.abs().max().item(), rtol=0)
    for name, g, r in zip(('dq', 'dk', 'dv', 'drpb'), grads, ref_grads):
        torch.testing.assert_close(g.float(), r, atol=2 * eps * r.abs().max().item(), rtol=0, msg=name)


def test_strided_inputs():
    """q, k, v as views of one fused qkv projection and of a head slice (read in place), and a channel-strided v."""
    qkv = torch.randn(2, 9, 12, 3, 4, 8, requires_grad=True)
    q, k, v = (t[..., 1:3, :] for t in qkv.unbind(3))
    rpb = torch.randn(5 * 7, 2, requires_grad=True)
    dout = torch.randn(2, 9, 12, 2, 8)
    runs = []
    for backend in ('cpp', 'reference'):
        out = window_attention(q, k, v, (3, 4), (2, 1), rpb=rpb, backend=backend)
        runs.append((out, *torch.autograd.grad(out, (qkv, rpb), dout)))
    for got, want in zip(*runs):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    v_t = torch.randn(2, 9, 12, 8, 2).transpose(-1, -2)  # channel stride 2
    q, k = q.detach(), k.detach()
    torch.testing.assert_close(window_attention(q, k, v_t, (None, 2), backend='cpp'),
                               window_attention(q, k, v_t, (None, 2), backend='reference'), atol=1e-5, rtol=0)


def test_backward_is_deterministic_across_thread_counts():
    q, k, v = (torch.randn(3, 17, 19, 2, 16, requires_grad=True) for _ in range(3))
    rpb = torch.randn(13 * 11, 2, requires_grad=True)
    dout = torch.randn(3, 17, 19, 2, 16)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            out = window_attention(q, k, v, (7, 6), (3, 2), rpb=rpb, backend='cpp')
            runs.append(torch.autograd.grad(out, (q, k, v, rpb), dout))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        for g, g0 in zip(run, runs[0]):
            assert torch.equal(g, g0)


def test_no_compiler_refuses_and_auto_falls_back(monkeypatch, tmp_path):
    """A machine without a compiler (and no library built yet): `cpp` is refused with the reason, auto runs cpu."""
    from hiervit.kernels import _cpp_ext
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))  # nothing built there
    monkeypatch.setattr(_cpp_ext.shutil, 'which', lambda name: None)
    monkeypatch.setattr(cpp, 'EXTENSION', _cpp_ext.CppExtension(cpp.EXTENSION.name, cpp.EXTENSION.sources))
    q, k, v = (torch.randn(1, 8, 9, 2, 4) for _ in range(3))
    with pytest.raises(BackendError, match="'cpp'.*no C\\+\\+ compiler found.*Backends that can: \\['cpu'"):
        window_attention(q, k, v, 4, backend='cpp')
    calls = []
    import hiervit.kernels.window.cpu as cpu_backend
    real = cpu_backend.forward
    monkeypatch.setattr(cpu_backend, 'forward', lambda *a: calls.append(1) or real(*a))
    out = window_attention(q, k, v, 4, 1)
    assert calls == [1]
    torch.testing.assert_close(out, window_attention(q, k, v, 4, 1, backend='reference'), atol=1e-5, rtol=0)


def test_auto_picks_cpp_on_cpu():
    assert window_dispatcher.names.index('cpp') < window_dispatcher.names.index('cpu')
    p = WindowProblem(torch.device('cpu'), torch.float32, 2, 8, 8, (7, 7), True)
    assert window_dispatcher.select(p) == 'cpp'
    assert window_dispatcher.select(WindowProblem(torch.device('meta'), torch.float32, 2, 8, 8, (7, 7), True)) == \
        'reference'
