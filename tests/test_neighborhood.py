"""Neighborhood attention: the reference against NATTEN's rules and NATTEN itself, every backend against the
reference (outputs and gradients), the API's errors and dispatch, and the torch custom-op registration."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hiervit.kernels import BackendError
from hiervit.kernels.neighborhood import na_dispatcher, neighborhood_attention, neighborhood_attention_flops
from hiervit.kernels.neighborhood.reference import neighbor_index, window_start

# The CPU fast paths (the randomized sweep of `cpu` against the reference is in test_kernel_sweeps.py).
FAST_BACKENDS = ['cpp', 'cpu']


def _keys_1d(length, kernel, dilation=1):
    return (window_start(length, kernel, dilation)[:, None] + dilation * torch.arange(kernel)).tolist()


# ---------------------------------------------------------------------------------------------------------------------
# window rule: the worked examples of shared/research/kernels.md §1.6 (NATTEN's mask.hpp)


def test_window_odd_kernel():
    keys = _keys_1d(10, 3)
    assert keys[0] == [0, 1, 2] and keys[1] == [0, 1, 2] and keys[2] == [1, 2, 3]
    assert keys[8] == [7, 8, 9] and keys[9] == [7, 8, 9]
    assert all(keys[i] == [i - 1, i, i + 1] for i in range(1, 9))


def test_window_dilated():
    keys = _keys_1d(10, 3, 2)
    assert keys[:5] == [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5], [2, 4, 6]]
    assert keys[8] == [4, 6, 8] and keys[9] == [5, 7, 9]


def test_window_dilated_uneven_groups():
    keys = _keys_1d(9, 3, 2)  # group 1 = {1, 3, 5, 7} has 4 tokens, group 0 = {0, 2, 4, 6, 8} has 5
    assert keys[7] == [3, 5, 7] and keys[8] == [4, 6, 8]
    assert keys[1] == [1, 3, 5] and keys[6] == [4, 6, 8]


def test_window_even_kernel():
    keys = _keys_1d(10, 4)  # k = 2r: r keys before the query, r - 1 after
    assert keys[2] == [0, 1, 2, 3] and keys[5] == [3, 4, 5, 6] and keys[9] == [6, 7, 8, 9]


def test_neighbor_index_2d_is_product_of_axes():
    H, W, kh, kw, dh, dw = 7, 9, 3, 4, 2, 2
    key_idx, rel_idx = neighbor_index((H, W), (kh, kw), (dh, dw))
    ys, xs = _keys_1d(H, kh, dh), _keys_1d(W, kw, dw)
    for qy, qx in [(0, 0), (3, 5), (6, 8), (5, 1)]:
        want = [y * W + x for y in ys[qy] for x in xs[qx]]
        assert key_idx[qy * W + qx].tolist() == want
        want_rel = [((y - qy) // dh + kh - 1) * (2 * kw - 1) + (x - qx) // dw + kw - 1 for y in ys[qy] for x in xs[qx]]
        assert rel_idx[qy * W + qx].tolist() == want_rel


# ---------------------------------------------------------------------------------------------------------------------
# reference vs NATTEN 0.21 (flex-fna on CPU: forward only, no rpb, head_dim a power of two >= 8)

# (spatial, kernel, dilation): odd, non-square, border-heavy, k * d == length, dilation > 1, even kernels.
NATTEN_CASES = [
    ((13,), 5, 1), ((12,), 4, 3), ((9,), 3, 3), ((16,), 2, 1), ((11,), 11, 1),
    ((7, 9), 3, 1), ((9, 11), (4, 3), (2, 3)), ((8, 8), 4, 2), ((6, 13), (2, 5), (3, 2)), ((10, 7), (5, 7), (2, 1)),
    ((5, 6, 7), (3, 2, 3), (1, 3, 2)),
]


@pytest.mark.parametrize('spatial,kernel,dilation', NATTEN_CASES)
def test_reference_matches_natten(spatial, kernel, dilation):
    import natten
    B, heads, d = 2, 3, 8
    q, k, v = (torch.randn(B, *spatial, heads, d) for _ in range(3))
    fn = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(spatial)]
    ref = neighborhood_attention(q, k, v, kernel, dilation, scale=0.7, backend='reference')
    want = fn(q, k, v, kernel, dilation=dilation, scale=0.7, backend='flex-fna')
    torch.testing.assert_close(ref, want, atol=1e-4, rtol=0)


def test_natten_backend_forward():
    q, k, v = (torch.randn(1, 9, 7, 2, 8) for _ in range(3))
    with torch.no_grad():
        got = neighborhood_attention(q, k, v, 3, 2, backend='natten')
    torch.testing.assert_close(got, neighborhood_attention(q, k, v, 3, 2, backend='reference'), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# rpb indexing


def test_rpb_one_hot_picks_relative_offset():
    """A huge bias at one relative offset makes every query copy the value at that offset (where it is in-window)."""
    H, W, kk, heads = 7, 8, 3, 2
    v = torch.randn(1, H, W, heads, 4)
    q = k = torch.zeros(1, H, W, heads, 4)
    rpb = torch.zeros(heads, 2 * kk - 1, 2 * kk - 1)
    rpb[0, kk - 1 + 1, kk - 1 - 1] = 100.0  # head 0: key one row below, one column left
    rpb[1, kk - 1 - 2, kk - 1 + 2] = 100.0  # head 1: two rows up, two columns right (only reachable at borders)
    out = neighborhood_attention(q, k, v, kk, rpb=rpb, backend='reference')
    torch.testing.assert_close(out[0, :H - 1, 1:, 0], v[0, 1:, :W - 1, 0])
    # Offset (-2, +2) is inside the shifted window only for the last row and first column (window shifted inwards).
    torch.testing.assert_close(out[0, H - 1, 0, 1], v[0, H - 3, 2, 1])
    # Elsewhere head 1 sees a zero bias everywhere: the plain mean of its 3 x 3 window.
    y0, x0 = 2, 3
    torch.testing.assert_close(out[0, y0, x0, 1], v[0, y0 - 1:y0 + 2, x0 - 1:x0 + 2, 1].mean((0, 1)))


def test_rpb_dilated_index():
    """With dilation the table is indexed by the offset in sub-grid steps: (ky - qy) / d + k - 1."""
    L, kk, d = 11, 3, 2
    v = torch.randn(1, L, 1, 3)
    q = k = torch.zeros(1, L, 1, 3)
    rpb = torch.zeros(1, 2 * kk - 1)
    rpb[0, kk - 1 + 1] = 100.0  # one sub-grid step to the right = 2 tokens
    out = neighborhood_attention(q, k, v, kk, d, rpb=rpb, backend='reference')
    torch.testing.assert_close(out[0, :L - 2, 0], v[0, 2:, 0])


# ---------------------------------------------------------------------------------------------------------------------
# fast backends vs reference: outputs and gradients of q, k, v, rpb

# (spatial, kernel, dilation, heads, d, dv)
SWEEP = [
    ((17,), 5, 1, 2, 8, 8), ((19,), 4, 3, 1, 16, 8), ((9,), 9, 1, 2, 4, 4),
    ((11, 9), 3, 1, 2, 8, 8), ((13, 10), (5, 4), (2, 2), 3, 8, 16), ((7, 15), (7, 2), (1, 5), 1, 4, 4),
    ((12, 12), 4, 3, 2, 8, 8), ((9, 20), (3, 5), (3, 1), 2, 16, 16),
    # several (partial) query tiles per axis and per sub-grid, and a 3-D case
    ((150,), 7, 2, 1, 4, 4), ((21, 18), (5, 3), (1, 2), 1, 4, 4), ((5, 6, 7), (3, 2, 3), (1, 3, 2), 2, 4, 4),
]


def _need(backend):
    """The cpp backend needs its library built on this machine; where it cannot be, say why (the cpu path runs)."""
    if backend == 'cpp':
        from hiervit.kernels.neighborhood.cpp import availability
        reason = availability()
        if reason is not None:
            pytest.skip(f'cpp backend unavailable here: {reason}')


def _inputs(B, spatial, heads, d, dv, kernel, rpb, dtype=torch.float32, scale=1.0):
    q, k = (torch.randn(B, *spatial, heads, d, dtype=dtype) * scale for _ in range(2))
    v = torch.randn(B, *spatial, heads, dv, dtype=dtype)
    kernel = (kernel,) * len(spatial) if isinstance(kernel, int) else kernel
    bias = torch.randn(heads, *(2 * kk - 1 for kk in kernel), dtype=dtype) if rpb else None
    return [t.requires_grad_() for t in (q, k, v)] + ([bias.requires_grad_()] if rpb else [])


def _run(backend, tensors, kernel, dilation, dout):
    q, k, v, *rest = tensors
    out = neighborhood_attention(q, k, v, kernel, dilation, rpb=rest[0] if rest else None, backend=backend)
    grads = torch.autograd.grad(out, tensors, dout)
    return out, grads


@pytest.mark.parametrize('backend', FAST_BACKENDS)
@pytest.mark.parametrize('spatial,kernel,dilation,heads,d,dv', SWEEP)
def test_backend_matches_reference(backend, spatial, kernel, dilation, heads, d, dv):
    _need(backend)
    for rpb in (True, False):
        tensors = _inputs(2, spatial, heads, d, dv, kernel, rpb, scale=2.0)
        dout = torch.randn(2, *spatial, heads, dv)
        out, grads = _run(backend, tensors, kernel, dilation, dout)
        ref, ref_grads = _run('reference', tensors, kernel, dilation, dout)
        # relative to each tensor's magnitude, the bound of the randomized sweep (test_kernel_sweeps.py)
        for name, g, r in zip(('out', 'dq', 'dk', 'dv', 'drpb'), (out, *grads), (ref, *ref_grads)):
            assert torch.isfinite(g).all(), name
            err = ((g - r).abs().max() / r.abs().max()).item()
            assert err < 3e-5, f'{name}: relative error {err:.3g} (rpb={rpb})'


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_cpu_batch_chunks_and_low_precision(monkeypatch, dtype):
    """One batch element per chunk (the loop over chunks), and bf16 inputs (computed in fp32, cast back)."""
    import hiervit.kernels.neighborhood.cpu as cpu
    monkeypatch.setattr(cpu, '_CHUNK_BYTES', 1)
    tensors = [t.detach().to(dtype).requires_grad_() for t in _inputs(3, (10, 9), 2, 8, 8, 3, True)]
    dout = torch.randn(3, 10, 9, 2, 8).to(dtype)
    out, grads = _run('cpu', tensors, 3, (2, 1), dout)
    ref_tensors = [t.detach().float().requires_grad_() for t in tensors]
    ref, ref_grads = _run('reference', ref_tensors, 3, (2, 1), dout.float())
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    atol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=0)
    for name, g, r in zip(('dq', 'dk', 'dv', 'drpb'), grads, ref_grads):
        torch.testing.assert_close(g.float(), r, atol=atol * max(1.0, r.abs().max().item()), rtol=0, msg=name)


@pytest.mark.parametrize('backend', ['reference'] + FAST_BACKENDS)
def test_gradcheck(backend):
    """float64 inputs: the reference and cpu compute in float64, and so does the cpp kernel (its float64 path)."""
    _need(backend)
    torch.manual_seed(1)
    q, k, v, rpb = _inputs(1, (5, 4), 2, 3, 2, (3, 2), True, dtype=torch.float64)
    fn = lambda q, k, v, rpb: neighborhood_attention(q, k, v, (3, 2), (1, 2), rpb=rpb, backend=backend)
    assert torch.autograd.gradcheck(fn, (q, k, v, rpb), fast_mode=True)


# ---------------------------------------------------------------------------------------------------------------------
# errors and dispatch


def _qkv(*shape):
    return [torch.randn(*shape) for _ in range(3)]


@pytest.mark.parametrize('kwargs,match', [
    (dict(kernel_size=5, dilation=2), r'kernel_size \* dilation = 5 \* 2 = 10 exceeds the length 8.*at least 10'),
    (dict(kernel_size=0), 'kernel_size must be >= 1'),
    (dict(kernel_size=(3, 3, 3)), 'kernel_size must be an int or a tuple of 2 ints'),
    (dict(kernel_size=3, dilation=0), 'dilation must be >= 1'),
    (dict(kernel_size=3, rpb=torch.zeros(2, 5, 5)), r'rpb must have shape \[heads, \*\(2 \* kernel_size - 1\)\]'),
    (dict(kernel_size=3, rpb=torch.zeros(3, 3, 3)), r'rpb must have shape .*\[3, 5, 5\]'),
])
def test_bad_arguments(kwargs, match):
    q, k, v = _qkv(1, 8, 9, 3, 4)
    with pytest.raises(ValueError, match=match):
        neighborhood_attention(q, k, v, **kwargs)


def test_bad_tensors():
    q, k, v = _qkv(1, 8, 9, 3, 4)
    with pytest.raises(ValueError, match='k .* must have the shape of q'):
        neighborhood_attention(q, k[:, :7], v, 3)
    with pytest.raises(ValueError, match='k .* must have the shape of q'):
        neighborhood_attention(q, k[..., :2, :], v, 3)
    with pytest.raises(ValueError, match='v .* must match q'):
        neighborhood_attention(q, k, v[..., :2, :], 3)
    with pytest.raises(ValueError, match='q must be a floating tensor'):
        neighborhood_attention(q.long(), k, v, 3)
    with pytest.raises(ValueError, match='share a dtype'):
        neighborhood_attention(q, k.double(), v, 3)
    with pytest.raises(ValueError, match='1 to 3 spatial axes'):
        neighborhood_attention(q[0, 0], k[0, 0], v[0, 0], 3)
    with pytest.raises(TypeError, match='q must be a torch.Tensor'):
        neighborhood_attention(q.numpy(), k, v, 3)
    with pytest.raises(TypeError, match='kernel_size must be an int'):
        neighborhood_attention(q, k, v, 3.0)


def test_dispatcher_explains_and_env_override(monkeypatch):
    q, k, v = _qkv(1, 8, 9, 2, 8)
    with pytest.raises(BackendError, match="unknown backend 'nope'"):
        neighborhood_attention(q, k, v, 3, backend='nope')
    with pytest.raises(BackendError, match="'natten'.*relative position bias"):
        neighborhood_attention(q, k, v, 3, rpb=torch.zeros(2, 5, 5), backend='natten')
    with pytest.raises(BackendError, match="'natten'.*no backward on CPU"):
        neighborhood_attention(q.requires_grad_(), k, v, 3, backend='natten')
    calls = []
    import hiervit.kernels.neighborhood.reference as ref
    real = ref.forward
    monkeypatch.setattr(ref, 'forward', lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv('HIERVIT_NEIGHBORHOOD_BACKEND', 'reference')
    neighborhood_attention(q, k, v, 3)
    assert calls == [1]
    monkeypatch.setenv('HIERVIT_NEIGHBORHOOD_BACKEND', 'nope')
    with pytest.raises(BackendError, match='HIERVIT_NEIGHBORHOOD_BACKEND'):
        neighborhood_attention(q, k, v, 3)


def test_auto_picks_cpp_or_cpu_on_cpu():
    from hiervit.kernels.neighborhood import NAProblem
    from hiervit.kernels.neighborhood.cpp import availability
    p = NAProblem(torch.device('cpu'), torch.float32, 1, (8, 8), 2, 8, 8, (3, 3), (1, 1), True, True)
    assert na_dispatcher.select(p) == ('cpp' if availability() is None else 'cpu')
    reason = na_dispatcher.explain(p)['triton']
    assert reason is None or 'TRITON_INTERPRET' in reason


# ---------------------------------------------------------------------------------------------------------------------
# custom op: meta tensors, FLOP counting, torch.compile


def test_meta_tensors():
    with torch.device('meta'):
        q, k = (torch.randn(2, 9, 11, 3, 8) for _ in range(2))
        v = torch.randn(2, 9, 11, 3, 4)
        out = neighborhood_attention(q, k, v, (3, 5), (2, 1), rpb=torch.randn(3, 5, 9))
    assert out.shape == v.shape and out.device.type == 'meta'


def test_flop_counter():
    tensors = _inputs(2, (9, 11), 3, 8, 8, (3, 5), True)
    with FlopCounterMode(display=False) as counter:
        out = neighborhood_attention(*tensors[:3], (3, 5), rpb=tensors[3])
        out.sum().backward()
    fwd = 4 * 2 * 3 * 9 * 11 * 15 * 8
    assert neighborhood_attention_flops(tensors[0].shape, (3, 5)) == fwd
    counts = counter.get_flop_counts()['Global']
    assert counts[torch.ops.hiervit.neighborhood_attention_fwd] == fwd
    assert counts[torch.ops.hiervit.neighborhood_attention_bwd] == 2 * fwd


def test_torch_compile_fullgraph():
    q, k, v, rpb = _inputs(1, (6, 7), 2, 8, 8, 3, True)
    fn = torch.compile(lambda q, k, v, rpb: neighborhood_attention(q, k, v, 3, rpb=rpb), fullgraph=True,
                       backend='eager')
    out = fn(q, k, v, rpb)
    torch.testing.assert_close(out, neighborhood_attention(q, k, v, 3, rpb=rpb, backend='reference'), atol=1e-5,
                               rtol=0)
    (g,) = torch.autograd.grad(out.sum(), [rpb])
    assert torch.isfinite(g).all()
