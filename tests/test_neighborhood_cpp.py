"""The fused C++ CPU neighborhood-attention backend (`cpp`): outputs and all four gradients against the reference over
a seeded sweep of hundreds of tiny problems, low-precision inputs, strided inputs, a deterministic backward, and the
build-once loader (cache folder, prebuilt library without a compiler, refusal and fallback without one)."""
import os
import random
import subprocess
import sys

import pytest
import torch

from hiervit.kernels import BackendError
from hiervit.kernels.neighborhood import cpp, na_dispatcher, neighborhood_attention, reference

pytestmark = pytest.mark.skipif(cpp.availability() is not None, reason=f'cpp backend: {cpp.availability()}')


def _case(rng: random.Random):
    """A random tiny problem: 1-D (up to 70 tokens, so several SIMD blocks and large kernels), 2-D or 3-D; odd,
    even and size-1 kernels, dilations up to the limit (so border-heavy and uneven sub-grids), odd head dims."""
    rank = rng.choice([1, 2, 2, 2, 3])
    if rank == 1:
        spatial = [rng.randint(1, 70)]
    else:
        spatial = [rng.randint(1, 13 if rank == 2 else 6) for _ in range(rank)]
    kernel = [rng.randint(1, min(L, 13)) for L in spatial]
    dilation = [rng.randint(1, L // kk) for L, kk in zip(spatial, kernel)]
    B, heads, d, dv = rng.randint(1, 2), rng.randint(1, 3), rng.randint(1, 20), rng.randint(1, 20)
    return spatial, kernel, dilation, B, heads, d, dv, rng.random() < 0.7


def _both(spatial, kernel, dilation, B, heads, d, dv, has_rpb, dtype=torch.float32):
    q, k = (torch.randn(B, *spatial, heads, d, dtype=dtype) * 2 for _ in range(2))
    v = torch.randn(B, *spatial, heads, dv, dtype=dtype)
    rpb = torch.randn(heads, *(2 * kk - 1 for kk in kernel), dtype=dtype) if has_rpb else None
    dout = torch.randn(B, *spatial, heads, dv, dtype=dtype)
    scale = d ** -0.5
    results = []
    for mod in (cpp, reference):
        out, lse = mod.forward(q, k, v, rpb, kernel, dilation, scale)
        results.append((out, lse, mod.backward(dout, q, k, v, rpb, out, lse, kernel, dilation, scale)))
    return results


def test_random_sweep_matches_reference():
    # Measured worst errors over these 300 cases: out/lse 4e-6, gradients 4e-6 of their largest magnitude.
    rng = random.Random(0)
    for _ in range(300):
        case = _case(rng)
        (out, lse, grads), (r_out, r_lse, r_grads) = _both(*case)
        msg = f'spatial, kernel, dilation, B, heads, d, dv, rpb = {case}'
        torch.testing.assert_close(out, r_out, atol=5e-5, rtol=0, msg=msg)
        torch.testing.assert_close(lse, r_lse, atol=5e-5, rtol=0, msg=msg)
        for name, g, r in zip(('dq', 'dk', 'dv', 'drpb'), grads, r_grads):
            if r is None:
                assert g is None, name
                continue
            assert torch.isfinite(g).all(), (name, msg)
            torch.testing.assert_close(g, r, atol=5e-5 * (1 + r.abs().max().item()), rtol=0, msg=f'{name}: {msg}')


def test_float64_compute():
    """float64 inputs are computed in float64 (the gradcheck path): outputs agree to rounding, gradients to the
    fp32 log-sum-exp the forward saves (relative 1e-7)."""
    rng = random.Random(1)
    for _ in range(20):
        case = _case(rng)
        (out, _, grads), (r_out, _, r_grads) = _both(*case, dtype=torch.float64)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, r_out, atol=1e-12, rtol=0)
        for g, r in zip(grads, r_grads):
            if r is not None:
                torch.testing.assert_close(g, r, atol=1e-6 * (1 + r.abs().max().item()), rtol=0)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    """bf16/fp16 inputs are computed in fp32 and the results cast back: equal to the fp32 reference on the rounded
    inputs up to the output rounding."""
    q, k, v = (torch.randn(2, 11, 9, 2, 8).to(dtype).requires_grad_() for _ in range(3))
    rpb = torch.randn(2, 5, 7).to(dtype).requires_grad_()
    dout = torch.randn(2, 11, 9, 2, 8).to(dtype)
    out = neighborhood_attention(q, k, v, (3, 4), (2, 1), rpb=rpb, backend='cpp')
    grads = torch.autograd.grad(out, (q, k, v, rpb), dout)
    ref_in = [t.detach().float().requires_grad_() for t in (q, k, v, rpb)]
    ref = neighborhood_attention(*ref_in[:3], (3, 4), (2, 1), rpb=ref_in[3], backend='reference')
    ref_grads = torch.autograd.grad(ref, ref_in, dout.float())
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.float(), ref, atol=2 * eps * ref.abs().max().item(), rtol=0)
    for name, g, r in zip(('dq', 'dk', 'dv', 'drpb'), grads, ref_grads):
        torch.testing.assert_close(g.float(), r, atol=2 * eps * r.abs().max().item(), rtol=0, msg=name)


def test_strided_inputs():
    """q, k, v as views of one fused qkv projection (strided batch/spatial/head axes), and a channel-strided input."""
    qkv = torch.randn(2, 9, 12, 3, 2, 8)
    q, k, v = qkv.unbind(3)
    rpb = torch.randn(2, 5, 5)
    got = neighborhood_attention(q, k, v, 3, 2, rpb=rpb, backend='cpp')
    want = neighborhood_attention(q, k, v, 3, 2, rpb=rpb, backend='reference')
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    v_t = torch.randn(2, 9, 12, 8, 2).transpose(-1, -2)  # channel stride 2
    got = neighborhood_attention(q, k, v_t, 3, 2, backend='cpp')
    torch.testing.assert_close(got, neighborhood_attention(q, k, v_t, 3, 2, backend='reference'), atol=1e-5, rtol=0)


def test_backward_is_deterministic_across_thread_counts():
    q, k, v = (torch.randn(3, 17, 19, 2, 16, requires_grad=True) for _ in range(3))
    rpb = torch.randn(2, 9, 9, requires_grad=True)
    dout = torch.randn(3, 17, 19, 2, 16)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            out = neighborhood_attention(q, k, v, 5, (1, 2), rpb=rpb, backend='cpp')
            runs.append(torch.autograd.grad(out, (q, k, v, rpb), dout))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        for g, g0 in zip(run, runs[0]):
            assert torch.equal(g, g0)


def test_cache_folder_honours_torch_extensions_dir(monkeypatch, tmp_path):
    from hiervit.kernels import _cpp_ext
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    folder = _cpp_ext._cache_dir(cpp.EXTENSION)
    assert folder.parent == tmp_path / 'hiervit' and folder.name.startswith('hiervit_na_cpu-')
    monkeypatch.delenv('TORCH_EXTENSIONS_DIR')
    assert _cpp_ext._cache_dir(cpp.EXTENSION).parent == _cpp_ext.Path.home() / '.cache' / 'hiervit' / 'ext'


def test_no_compiler_refuses_and_auto_falls_back(monkeypatch, tmp_path):
    """A machine without a compiler (and no library built yet): `cpp` is refused with the reason, auto runs cpu."""
    from hiervit.kernels import _cpp_ext
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))  # nothing built there
    monkeypatch.setattr(_cpp_ext.shutil, 'which', lambda name: None)
    monkeypatch.setattr(cpp, 'EXTENSION', _cpp_ext.CppExtension(cpp.EXTENSION.name, cpp.EXTENSION.sources))
    q, k, v = (torch.randn(1, 8, 9, 2, 4) for _ in range(3))
    with pytest.raises(BackendError, match="'cpp'.*no C\\+\\+ compiler found.*Backends that can: \\['cpu'"):
        neighborhood_attention(q, k, v, 3, backend='cpp')
    calls = []
    import hiervit.kernels.neighborhood.cpu as cpu_backend
    real = cpu_backend.forward
    monkeypatch.setattr(cpu_backend, 'forward', lambda *a: calls.append(1) or real(*a))
    out = neighborhood_attention(q, k, v, 3)
    assert calls == [1]
    torch.testing.assert_close(out, neighborhood_attention(q, k, v, 3, backend='reference'), atol=1e-5, rtol=0)
    monkeypatch.setattr(_cpp_ext.shutil, 'which', lambda name: '/usr/bin/' + name if name != 'ninja' else None)
    assert 'ninja' in _cpp_ext._missing_tools()


def test_unloadable_library_refuses_with_reason(monkeypatch, tmp_path):
    """A library that exists but cannot be loaded (truncated file) is a refusal naming it, not an OSError."""
    from hiervit.kernels import _cpp_ext
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    ext = _cpp_ext.CppExtension(cpp.EXTENSION.name, cpp.EXTENSION.sources)
    monkeypatch.setattr(cpp, 'EXTENSION', ext)
    lib = _cpp_ext._library(ext)
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b'not an ELF file')
    reason = _cpp_ext.status(ext)
    assert reason is not None and 'failed to load' in reason and str(lib) in reason
    q = torch.randn(1, 8, 9, 2, 4)
    with pytest.raises(BackendError, match="'cpp'.*failed to load"):
        neighborhood_attention(q, q, q, 3, backend='cpp')


def test_built_library_loads_without_compiler(tmp_path):
    """Once built, a fresh process loads the library with no compiler or ninja on PATH (and does not rebuild)."""
    code = ('import torch\n'
            'from hiervit.kernels.neighborhood import cpp, neighborhood_attention\n'
            'assert cpp.availability() is None, cpp.availability()\n'
            'q = torch.randn(1, 7, 8, 2, 4)\n'
            'neighborhood_attention(q, q, q, 3, backend="cpp")\n')
    env = dict(os.environ, PATH=str(tmp_path))
    subprocess.run([sys.executable, '-c', code], check=True, env=env, cwd=tmp_path)


def test_dispatcher_lists_cpp_first_on_cpu():
    assert na_dispatcher.names.index('cpp') < na_dispatcher.names.index('cpu')
