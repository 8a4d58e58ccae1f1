"""Routed (gathered-block) attention: reference semantics, cpp and cpu backends vs reference, op registration,
errors."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from hiervit.kernels import BackendError
from hiervit.kernels.routed import cpp, routed_attention, routed_dispatcher, routed_flops, routed_problem
from hiervit.kernels.routed.cpu import use_dense

FAST_BACKENDS = ['cpp', 'cpu']


def _need(backend):
    """The cpp backend needs its library built on this machine; where it cannot be, say why (the cpu path runs)."""
    if backend == 'cpp' and cpp.availability() is not None:
        pytest.skip(f'cpp backend unavailable here: {cpp.availability()}')


def make_inputs(B=2, H=3, Nq=5, Tq=3, Nk=7, Tk=5, d=8, dv=6, topk=2, per_head=False, dtype=torch.float32,
                duplicate=False):
    q = torch.randn(B, H, Nq, Tq, d, dtype=dtype, requires_grad=True)
    k = torch.randn(B, H, Nk, Tk, d, dtype=dtype, requires_grad=True)
    v = torch.randn(B, H, Nk, Tk, dv, dtype=dtype, requires_grad=True)
    lead = (B, H, Nq) if per_head else (B, Nq)
    idx = torch.rand(*lead, Nk).argsort(-1)[..., :topk]  # distinct blocks per query block, in random order
    if duplicate:
        idx[..., 0, -1] = idx[..., 0, 0]
    return q, k, v, idx


def dense_mask(idx, H, Tq, Nk, Tk):
    """Token-level boolean mask `[B, H, Nq*Tq, Nk*Tk]` of the routed (distinct) blocks."""
    if idx.dim() == 3:
        idx = idx.unsqueeze(1).expand(-1, H, -1, -1)
    blocks = torch.zeros(*idx.shape[:3], Nk, dtype=torch.bool).scatter_(-1, idx, True)
    return blocks.repeat_interleave(Tq, 2).repeat_interleave(Tk, 3)


def run(backend, q, k, v, idx, dout, scale=None):
    out = routed_attention(q, k, v, idx, scale=scale, backend=backend)
    return (out,) + torch.autograd.grad(out, (q, k, v), dout)


def assert_all_close(got, want, atol, rtol, names=('out', 'dq', 'dk', 'dv')):
    for name, a, b in zip(names, got, want):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f'{name}: {m}')


# --- reference semantics against torch's own attention ---------------------------------------------------------------

@pytest.mark.parametrize('per_head', [False, True])
def test_reference_matches_masked_sdpa(per_head):
    B, H, Nq, Tq, Nk, Tk, d, dv = 2, 3, 5, 3, 7, 4, 8, 6
    q, k, v, idx = make_inputs(B, H, Nq, Tq, Nk, Tk, d, dv, topk=3, per_head=per_head)
    dout = torch.randn(B, H, Nq, Tq, dv)
    got = run('reference', q, k, v, idx, dout, scale=0.3)
    mask = dense_mask(idx, H, Tq, Nk, Tk)
    ref = F.scaled_dot_product_attention(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3), attn_mask=mask, scale=0.3)
    ref = ref.view(B, H, Nq, Tq, dv)
    want = (ref,) + torch.autograd.grad(ref, (q, k, v), dout)
    assert_all_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('backend', ['reference', *FAST_BACKENDS])
def test_topk_all_blocks_is_dense_attention(backend):
    _need(backend)
    B, H, Nq, Tq, Nk, Tk, d, dv = 2, 2, 3, 5, 6, 3, 8, 4
    q, k, v, idx = make_inputs(B, H, Nq, Tq, Nk, Tk, d, dv, topk=Nk)  # every block, in a random order
    dout = torch.randn(B, H, Nq, Tq, dv)
    got = run(backend, q, k, v, idx, dout)
    ref = F.scaled_dot_product_attention(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3)).view(B, H, Nq, Tq, dv)
    want = (ref,) + torch.autograd.grad(ref, (q, k, v), dout)
    assert_all_close(got, want, atol=1e-5, rtol=1e-4)


def test_duplicates_count_twice():
    q, k, v, _ = make_inputs(B=1, H=1, Nq=1, Tq=2, Nk=3, Tk=2, topk=1)
    once = routed_attention(q, k, v, torch.tensor([[[0, 1]]]), backend='reference')
    # listing block 1 twice equals appending a copy of its keys/values as an extra block
    k3, v3 = torch.cat([k, k[:, :, 1:2]], 2), torch.cat([v, v[:, :, 1:2]], 2)
    twice = routed_attention(q, k3, v3, torch.tensor([[[0, 1, 3]]]), backend='reference')
    for backend in ('reference', *FAST_BACKENDS):
        _need(backend)
        got = routed_attention(q, k, v, torch.tensor([[[0, 1, 1]]]), backend=backend)
        torch.testing.assert_close(got, twice)
        assert not torch.allclose(got, once)


# --- cpp and cpu backends vs reference --------------------------------------------------------------------------------

CPU_CASES = {
    # name: make_inputs kwargs; gathered and block-masked dense strategies both covered
    'gathered_topk1': dict(Nq=5, Tq=3, Nk=11, Tk=5, topk=1),
    'gathered_tq_ne_tk': dict(Nq=7, Tq=5, Nk=13, Tk=3, topk=3, d=5, dv=9),
    'gathered_per_head': dict(Nq=5, Nk=9, topk=2, per_head=True),
    'gathered_duplicates': dict(Nq=3, Nk=10, topk=2, duplicate=True),
    'dense_topk_all': dict(Nq=5, Tq=2, Nk=5, Tk=3, topk=5),
    'dense_per_head_dup': dict(Nq=6, Tq=4, Nk=7, Tk=2, topk=4, per_head=True, duplicate=True),
    'nq_ne_nk': dict(B=1, H=2, Nq=3, Tq=1, Nk=5, Tk=7, topk=4, d=3, dv=2),
    # cpp: several score tiles of query rows per block (Tq * topk * Tk above its 16384-element tile), ragged last
    # tile, product widths over 64 columns and not a multiple of 16, in place (topk 1) and gathered
    'row_tiles_topk1': dict(B=1, H=1, Nq=2, Tq=70, Nk=3, Tk=300, topk=1, d=37, dv=70),
    'row_tiles_gathered': dict(B=1, H=1, Nq=2, Tq=45, Nk=5, Tk=190, topk=2, d=19, dv=81),
}


@pytest.mark.parametrize('backend', FAST_BACKENDS)
@pytest.mark.parametrize('case', list(CPU_CASES))
def test_fast_backends_match_reference(case, backend):
    _need(backend)
    kw = CPU_CASES[case]
    q, k, v, idx = make_inputs(**kw)
    if case.startswith(('dense', 'gathered')):  # the case exercises the cpu strategy it is named after
        assert use_dense(k.shape[2], idx.shape[-1]) == case.startswith('dense')
    dout = torch.randn(*q.shape[:4], v.shape[-1])
    assert_all_close(run(backend, q, k, v, idx, dout, scale=0.4), run('reference', q, k, v, idx, dout, scale=0.4),
                     atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('backend', FAST_BACKENDS)
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('topk', [2, 6])
def test_half_precision(dtype, topk, backend):
    _need(backend)
    q, k, v, idx = make_inputs(Nq=4, Nk=7, topk=topk, dtype=dtype)
    dout = torch.randn(*q.shape[:4], v.shape[-1], dtype=dtype)
    got = run(backend, q, k, v, idx, dout)
    assert all(t.dtype == dtype for t in got)
    want = run('reference', *(t.detach().float().requires_grad_() for t in (q, k, v)), idx, dout.float())
    assert_all_close([t.float() for t in got], want, atol=3e-2, rtol=3e-2)


# cpu: gathered, dense; cpp: in place (topk 1), gathered
@pytest.mark.parametrize('backend,topk', [('reference', 2), ('cpu', 1), ('cpu', 3), ('cpp', 1), ('cpp', 3)])
def test_gradcheck_float64(backend, topk):
    _need(backend)
    q, k, v, idx = make_inputs(B=1, H=2, Nq=3, Tq=2, Nk=4, Tk=3, d=3, dv=2, topk=topk, per_head=True,
                               dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, c: routed_attention(a, b, c, idx, backend=backend), (q, k, v))


def test_cpu_chunking_matches_reference(monkeypatch):
    # tiny chunk budget: many chunks, ragged last chunk, on both strategies (topk 2 of 7 gathered, 5 of 7 dense)
    import hiervit.kernels.routed.cpu as cpu
    monkeypatch.setattr(cpu, '_CHUNK_BYTES', 3000)  # a few items per chunk
    for topk in (2, 5):
        assert use_dense(7, topk) == (topk == 5)
        q, k, v, idx = make_inputs(B=2, H=2, Nq=5, Nk=7, topk=topk)
        dout = torch.randn(*q.shape[:4], v.shape[-1])
        assert_all_close(run('cpu', q, k, v, idx, dout), run('reference', q, k, v, idx, dout), atol=1e-5, rtol=1e-4)


def test_cpp_is_deterministic_and_checks_direct_calls():
    _need('cpp')
    q, k, v, idx = make_inputs(B=2, H=2, Nq=6, Nk=5, topk=2, duplicate=True)
    dout = torch.randn(*q.shape[:4], v.shape[-1])
    first = run('cpp', q, k, v, idx, dout)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # bitwise the same for any thread count: items and (batch, head)s are split, sums never are
        second = run('cpp', q, k, v, idx, dout)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    flat = [t.detach().flatten(0, 1) for t in (q, k, v)]
    bad = idx.unsqueeze(1).expand(-1, 2, -1, -1).flatten(0, 1) + 5  # the library's own bounds check, not the op's
    with pytest.raises(RuntimeError, match=r'idx values must be in \[0, Nk=5\)'):
        torch.ops.hiervit_routed_cpu.routed_forward(*flat, bad.contiguous(), 0.5)


def test_cpp_refusal_falls_back_to_cpu(monkeypatch, tmp_path):
    """A library that cannot be loaded is a refusal naming it: auto runs the cpu backend, asking for cpp says why."""
    from hiervit.kernels import _cpp_ext
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    ext = _cpp_ext.CppExtension(cpp.EXTENSION.name, cpp.EXTENSION.sources)
    monkeypatch.setattr(cpp, 'EXTENSION', ext)
    lib = _cpp_ext._library(ext)
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b'not an ELF file')
    q, k, v, idx = make_inputs()
    problem = routed_problem(q, k, v, idx)
    assert 'failed to load' in routed_dispatcher.explain(problem)['cpp']
    assert routed_dispatcher.select(problem) == 'cpu'
    with pytest.raises(BackendError, match="'cpp'.*failed to load"):
        routed_attention(q, k, v, idx, backend='cpp')


# --- op registration: dispatch, meta, FLOPs, compile ------------------------------------------------------------------

def test_dispatch_auto_and_env(monkeypatch):
    q, k, v, idx = make_inputs()
    problem = routed_problem(q, k, v, idx)
    monkeypatch.delenv('HIERVIT_ROUTED_BACKEND', raising=False)
    monkeypatch.delenv('HIERVIT_BACKEND', raising=False)
    assert routed_dispatcher.select(problem) == ('cpp' if cpp.availability() is None else 'cpu')
    monkeypatch.setenv('HIERVIT_ROUTED_BACKEND', 'reference')
    assert routed_dispatcher.select(problem) == 'reference'
    monkeypatch.setenv('HIERVIT_ROUTED_BACKEND', 'nope')
    with pytest.raises(BackendError, match='unknown backend'):
        routed_attention(q, k, v, idx)
    meta = routed_problem(*(t.to('meta') for t in (q, k, v, idx)))
    reasons = routed_dispatcher.explain(meta)
    assert reasons['reference'] is None and 'meta' in reasons['cpu'] and 'meta' in reasons['cpp']


def test_meta_forward_and_backward():
    q, k, v, idx = (t.detach().to('meta') for t in make_inputs(dv=4))
    q.requires_grad_()
    out = routed_attention(q, k, v, idx)
    assert out.device.type == 'meta' and out.shape == (*q.shape[:4], 4)
    out.sum().backward()
    assert q.grad.shape == q.shape


def test_flop_counter():
    q, k, v, idx = make_inputs(B=2, H=3, Nq=5, Tq=3, Nk=7, Tk=5, d=8, dv=6, topk=2)
    fwd = 2 * 2 * 3 * 5 * 3 * 2 * 5 * (8 + 6)
    assert routed_flops(q.shape, k.shape, v.shape, idx.shape) == fwd
    with FlopCounterMode(display=False) as counter:
        out = routed_attention(q, k, v, idx)
    assert counter.get_total_flops() == fwd
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 2 * fwd


def test_torch_compile_fullgraph():
    q, k, v, idx = make_inputs()
    fn = torch.compile(lambda *a: routed_attention(*a), fullgraph=True, backend='aot_eager')
    dout = torch.randn(*q.shape[:4], v.shape[-1])
    got = fn(q, k, v, idx)
    got_grads = torch.autograd.grad(got, (q, k, v), dout)
    want = run(None, q, k, v, idx, dout)
    assert_all_close((got,) + got_grads, want, atol=1e-6, rtol=1e-5)


# --- bad calls --------------------------------------------------------------------------------------------------------

def test_bad_calls():
    q, k, v, idx = make_inputs(Nq=5, Nk=7, topk=2)
    cases = [
        ((q[0], k, v, idx), 'q must be 5-D'),
        ((q, k[..., :4], v, idx), 'k head dim'),
        ((q, k, v[:, :, :6], idx), 'v blocks/tokens'),
        ((q, k[:1], v[:1], idx), 'batch and heads'),
        ((q, k, v.double(), idx), 'share a dtype'),
        ((q, k, v, idx.int()), 'idx must be int64'),
        ((q, k, v, idx[0]), 'idx must be 3-D'),
        ((q, k, v, idx[:, :4]), r'idx \(2, 4, 2\) must be'),
        ((q, k, v, idx + 6), r'idx values must be in \[0, Nk=7\)'),
        ((q, k, v, idx - 1), 'got min -1'),
        ((q, k, v, torch.zeros(2, 5, 8, dtype=torch.long)), r'topk \(idx.shape\[-1\]\) = 8'),
        ((q, k.int(), v, idx), 'k must be a floating tensor'),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            routed_attention(*args)
    with pytest.raises(TypeError, match='idx must be a torch.Tensor'):
        routed_attention(q, k, v, [[0, 1]])
    with pytest.raises(TypeError, match='scale'):
        routed_attention(q, k, v, idx, scale=torch.tensor(1.0))

