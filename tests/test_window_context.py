"""The context mode of the window op (`context_window_attention`): the reference against re-statements of
VWFormer's copy-shift padding + unfold (yan-hao-tian/VW `vw_head.py`) and of HaloNet's zero-padded halo blocks
(timm `halo_attn.py`'s pad + unfold), the cpu and triton backends against the reference over seeded random sweeps
(outputs and gradients), gradcheck, errors, and the custom op (meta, FLOPs, compile, export)."""
import importlib
import random

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from hiervit.kernels import BackendError
from hiervit.kernels.window import (
    WINDOW_CONTEXT, context_window_attention, context_window_attention_flops, context_window_attention_op,
    resolve_context)

HAS_TRITON = importlib.util.find_spec('triton') is not None
FAST = ['cpu'] + (['triton'] if HAS_TRITON else [])


def _dense(qw, kw, vw, scale):
    """Per-window attention of `[n, heads, Nq, d]` against `[n, heads, Nk, d]`."""
    return torch.softmax(qw @ kw.transpose(-1, -2) * scale, -1) @ vw


def _vw_copy_shift(context, r, p):
    """VWFormer's `copy_shift_padding` (the branch its head runs, r <= 8 windows per axis), both axes of an NCHW map:
    a strip of width r * p - (r + 1) * p // 2 on each side, copied from the map's inside."""
    context = torch.cat([context[..., (r + 1) * p // 2:r * p], context, context[..., -(r * p):-((r + 1) * p // 2)]], 3)
    return torch.cat([context[..., (r + 1) * p // 2:r * p, :], context,
                      context[..., -(r * p):-((r + 1) * p // 2), :]], 2)


@pytest.mark.parametrize('p,r', [(4, 2), (4, 4), (3, 2), (5, 4), (2, 8), (3, 3)])
def test_shift_border_is_vwformers_copy_shift_padding(p, r):
    """8 x 8 windows of p x p queries, each against its r * p x r * p context cut by F.unfold from the copy-shift
    padded map (`varying_context_window`), as pixel-level tokens."""
    heads, d, n = 2, 4, 8
    H = W = n * p
    q, k, v = (torch.randn(2, H, W, heads, d) for _ in range(3))

    def windows(t, size, stride):  # [B, H', W', heads, d] -> [B * n * n, heads, size^2, d] via unfold
        x = t.permute(0, 3, 4, 1, 2).reshape(2, heads * d, *t.shape[1:3])
        cols = F.unfold(x, size, stride=stride)  # [B, heads * d * size^2, n * n]
        return cols.view(2, heads, d, size * size, n * n).permute(0, 4, 1, 3, 2).reshape(-1, heads, size * size, d)
    ext = lambda t: _vw_copy_shift(t.permute(0, 3, 4, 1, 2).reshape(2, -1, H, W), r, p).view(  # noqa: E731
        2, heads, d, H + 2 * (r * p - (r + 1) * p // 2), -1).permute(0, 3, 4, 1, 2)
    want = _dense(windows(q, p, p), windows(ext(k), r * p, p), windows(ext(v), r * p, p), d ** -0.5)
    want = want.view(2, n, n, heads, p, p, d).permute(0, 1, 4, 2, 5, 3, 6).reshape(2, H, W, heads, d)
    offset = -(r * p - (r + 1) * p // 2)
    # triton (slow under the interpreter) is compared with the reference by the sweeps, shift border included
    for backend in ['reference', 'cpu']:
        got = context_window_attention(q, k, v, p, r * p, p, offset, border='shift', backend=backend)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=backend)


@pytest.mark.parametrize('block,halo', [(4, 1), (3, 2), (2, 3)])
def test_zeros_border_is_halonets_blocked_attention(block, halo):
    """timm's HaloAttn blocking without its position logits: kv zero-padded by the halo, unfold (block + 2 halo,
    stride block), query blocks of block x block."""
    heads, d, B, H, W = 2, 4, 1, 2 * block, 3 * block
    q, k, v = (torch.randn(B, H, W, heads, d) for _ in range(3))
    win = block + 2 * halo
    qb = q.view(B, H // block, block, W // block, block, heads, d).permute(0, 1, 3, 5, 2, 4, 6)
    qb = qb.reshape(-1, heads, block * block, d)

    def kv(t):
        x = F.pad(t.permute(0, 3, 4, 1, 2).reshape(B, heads * d, H, W), [halo] * 4)
        cols = F.unfold(x, win, stride=block).view(B, heads, d, win * win, -1)
        return cols.permute(0, 4, 1, 3, 2).reshape(-1, heads, win * win, d)
    want = _dense(qb, kv(k), kv(v), d ** -0.5).view(B, H // block, W // block, heads, block, block, d)
    want = want.permute(0, 1, 4, 2, 5, 3, 6).reshape(B, H, W, heads, d)
    for backend in ['reference'] + FAST:
        got = context_window_attention(q, k, v, block, win, offset=-halo, border='zeros', backend=backend)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=backend)


def test_plain_windows_and_mask_border():
    """context = window = stride is plain window attention; a masked border is attention over the in-map keys."""
    from hiervit.kernels.window import window_attention
    q, k, v = (torch.randn(1, 6, 8, 2, 4) for _ in range(3))
    torch.testing.assert_close(context_window_attention(q, k, v, (3, 4), (3, 4), backend='reference'),
                               window_attention(q, k, v, (3, 4), backend='reference'), atol=1e-6, rtol=0)
    # window (0, 0) with a 1-key halo masked: its context is rows 0..3, columns 0..4 only
    got = context_window_attention(q, k, v, (3, 4), (5, 6), border='mask', backend='reference')
    qs = q[0, :3, :4].reshape(12, 2, 4).transpose(0, 1)
    ks, vs = (t[0, :4, :5].reshape(20, 2, 4).transpose(0, 1) for t in (k, v))
    torch.testing.assert_close(got[0, :3, :4].reshape(12, 2, 4), _dense(qs, ks, vs, 0.5).transpose(0, 1),
                               atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# fast backends vs reference: seeded random sweeps (odd, non-square, overlapping, border-heavy, other key maps)


def _random_case(rng: random.Random) -> dict:
    while True:
        win = [rng.randint(1, 4), rng.randint(1, 4)]
        c = dict(B=rng.randint(1, 2), H=win[0] * rng.randint(1, 3), W=win[1] * rng.randint(1, 3),
                 Hk=rng.randint(1, 12), Wk=rng.randint(1, 12), heads=rng.randint(1, 2), d=rng.choice([4, 8, 12]),
                 dv=rng.choice([4, 8]), window=win, context=[rng.randint(1, 7), rng.randint(1, 7)],
                 stride=[rng.randint(1, 4), rng.randint(1, 4)], offset=[rng.randint(-4, 2), rng.randint(-4, 2)],
                 dilation=[rng.randint(1, 2), rng.randint(1, 2)], border=rng.choice(['zeros', 'mask', 'shift']),
                 scale=rng.choice([None, 0.3]))
        try:
            WINDOW_CONTEXT.problem(*_tensors(c, requires_grad=False), *_attrs(c))
            return c
        except ValueError:
            continue


def _attrs(c):
    return (c['window'], c['context'], c['stride'], c['offset'], c['dilation'], c['border'],
            c['d'] ** -0.5 if c['scale'] is None else c['scale'])


def _tensors(c, dtype=torch.float32, requires_grad=True):
    q = torch.randn(c['B'], c['H'], c['W'], c['heads'], c['d'], dtype=dtype) * 1.5
    k = torch.randn(c['B'], c['Hk'], c['Wk'], c['heads'], c['d'], dtype=dtype) * 1.5
    v = torch.randn(c['B'], c['Hk'], c['Wk'], c['heads'], c['dv'], dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def _run(backend, tensors, c, dout):
    out = context_window_attention(*tensors, c['window'], c['context'], c['stride'], c['offset'], c['dilation'],
                                   c['border'], c['scale'], backend=backend)
    return out, torch.autograd.grad(out, tensors, dout)


def _compare(backend, c, seed, atol=1e-5):
    torch.manual_seed(seed)
    tensors = _tensors(c)
    dout = torch.randn(c['B'], c['H'], c['W'], c['heads'], c['dv'])
    out, grads = _run(backend, tensors, c, dout)
    ref, ref_grads = _run('reference', tensors, c, dout)
    torch.testing.assert_close(out, ref, atol=atol, rtol=0, msg=f'out {c} seed {seed}')
    for name, g, r in zip(('dq', 'dk', 'dv'), grads, ref_grads):
        assert torch.isfinite(g).all(), (name, c)
        torch.testing.assert_close(g, r, atol=atol, rtol=1e-4, msg=f'{name} {c} seed {seed}')


@pytest.mark.parametrize('seed', range(3))
def test_cpu_matches_reference_random_sweep(seed):
    rng = random.Random(seed)
    for i in range(15):
        _compare('cpu', _random_case(rng), 100 * seed + i)


@pytest.mark.skipif(not HAS_TRITON, reason='triton is not installed')
def test_triton_matches_reference_random_sweep():
    rng = random.Random(7)
    for i in range(12):
        _compare('triton', _random_case(rng), 700 + i)


@pytest.mark.skipif(not HAS_TRITON, reason='triton is not installed')
def test_triton_several_blocks_and_strided_views():
    """Contexts of 72 and 80 slots (two key blocks), 64+ query slots (two query blocks), k/v as views of one kv."""
    c = dict(B=1, H=9, W=16, Hk=12, Wk=20, heads=2, d=8, dv=8, window=[9, 8], context=[8, 10], stride=[4, 6],
             offset=[-2, -3], dilation=[1, 1], border='shift', scale=None)
    _compare('triton', c, 3)
    kv = torch.randn(1, 12, 20, 2, 2, 8, requires_grad=True)
    q = torch.randn(1, 9, 16, 2, 8, requires_grad=True)
    dout = torch.randn(1, 9, 16, 2, 8)

    def run(backend):
        out = context_window_attention(q, kv[..., 0, :], kv[..., 1, :], (9, 8), (8, 10), (4, 6), (-2, -3),
                                       border='mask', backend=backend)
        return out, torch.autograd.grad(out, (q, kv), dout)
    for a, b in zip(*(sum(((o,), g), ()) for o, g in (run('triton'), run('reference')))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not HAS_TRITON, reason='triton is not installed')
@pytest.mark.parametrize('dtype,atol', [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)], ids=['fp16', 'bf16'])
def test_triton_half_matches_fp32_reference(dtype, atol):
    c = dict(B=1, H=6, W=4, Hk=7, Wk=5, heads=2, d=8, dv=4, window=[3, 2], context=[4, 3], stride=[2, 2],
             offset=[-1, -1], dilation=[1, 1], border='zeros', scale=None)
    tensors = _tensors(c, dtype)
    dout = torch.randn(1, 6, 4, 2, 4).to(dtype)
    out, grads = _run('triton', tensors, c, dout)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    ref, ref_grads = _run('reference', [t.detach().float().requires_grad_() for t in tensors], c, dout.float())
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.float(), r, atol=atol * max(4.0, r.abs().max().item()), rtol=0)


@pytest.mark.parametrize('backend', ['reference', 'cpu'])
@pytest.mark.parametrize('border', ['zeros', 'mask', 'shift'])
def test_gradcheck(backend, border):
    q = torch.randn(1, 4, 6, 2, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 5, 6, 2, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 5, 6, 2, 2, dtype=torch.float64, requires_grad=True)
    fn = lambda q, k, v: context_window_attention(q, k, v, (2, 3), (3, 4), (2, 2), (-1, -1), border=border,  # noqa
                                                  backend=backend)
    assert torch.autograd.gradcheck(fn, (q, k, v), fast_mode=True)


# ---------------------------------------------------------------------------------------------------------------------
# arguments and errors


def test_resolve_context_defaults():
    # stride = window, centred offset; HaloNet block 4 halo 1 -> offset -1; VWFormer R = 2, p = 4 -> offset -2
    assert resolve_context(4, 6) == ([4, 4], [6, 6], [4, 4], [-1, -1], [1, 1])
    assert resolve_context((4, 3), (8, 6), (4, 3)) == ([4, 3], [8, 6], [4, 3], [-2, -1], [1, 1])
    assert resolve_context(2, 3, 1, None, 2)[3] == [-2, -2]


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(window=0, context=3), ValueError, 'window must be >= 1'),
    (dict(window=(2, 2, 2), context=3), ValueError, 'window must be an int or a pair'),
    (dict(window=2, context=3.0), TypeError, 'context must be an int or a pair'),
    (dict(window=3, context=3), ValueError, 'not a multiple of the query window 3'),
    (dict(window=2, context=3, border='reflect'), ValueError, 'border must be one of'),
    (dict(window=2, context=9, border='shift'), ValueError, "border='shift' on axis 0 moves keys by the context"),
    (dict(window=2, context=1, offset=(-3, 0), border='mask'), ValueError, 'query window 0 on axis 0 has no key'),
    (dict(window=2, context=3, scale='x'), TypeError, 'scale must be a Python number'),
])
def test_bad_arguments(kwargs, error, match):
    q = torch.randn(1, 8, 8, 2, 4)
    k = v = torch.randn(1, 8, 8, 2, 4)
    with pytest.raises(error, match=match):
        context_window_attention(q, k, v, **kwargs)


def test_bad_tensors():
    q, k = torch.randn(1, 4, 4, 2, 4), torch.randn(1, 6, 5, 2, 4)
    with pytest.raises(ValueError, match='k .* must match q .* in batch, heads and head_dim'):
        context_window_attention(q, k[..., :1, :], k, 2, 3)
    with pytest.raises(ValueError, match='v .* must match k'):
        context_window_attention(q, k, k[:, :5], 2, 3)
    with pytest.raises(ValueError, match=r'k must be \[B, H, W, heads, head_dim\]'):
        context_window_attention(q, k[0], k, 2, 3)


# ---------------------------------------------------------------------------------------------------------------------
# custom op: meta tensors, FLOP counting, torch.compile, export

_CALL = ([2, 3], [4, 5], [2, 2], [-1, -1], [1, 1], 'shift', 0.5)


def test_meta_tensors():
    with torch.device('meta'):
        q, k, v = torch.randn(2, 4, 6, 3, 8), torch.randn(2, 5, 7, 3, 8), torch.randn(2, 5, 7, 3, 4)
        out = context_window_attention_op(q, k, v, *_CALL)
    assert out.shape == (2, 4, 6, 3, 4) and out.device.type == 'meta'


def test_flop_counter():
    q = torch.randn(2, 4, 6, 3, 8, requires_grad=True)
    k, v = torch.randn(2, 5, 7, 3, 8), torch.randn(2, 5, 7, 3, 4)
    with FlopCounterMode(display=False) as counter:
        context_window_attention_op(q, k, v, *_CALL).sum().backward()
    fwd = 2 * 2 * 3 * 4 * 6 * 20 * (8 + 4)  # every query against the 4 x 5 keys of its context
    assert context_window_attention_flops(q.shape, [2, 3], [4, 5], v_dim=4) == fwd
    counts = counter.get_flop_counts()['Global']
    assert counts[torch.ops.hiervit.window_context_fwd] == fwd
    assert counts[torch.ops.hiervit.window_context_bwd] == 2 * fwd


def test_torch_compile_fullgraph():
    q, k, v = torch.randn(1, 4, 6, 2, 8), torch.randn(1, 5, 7, 2, 8), torch.randn(1, 5, 7, 2, 8)
    q.requires_grad_()
    fn = torch.compile(lambda q, k, v: context_window_attention(q, k, v, (2, 3), (4, 5), (2, 2), border='shift'),
                       fullgraph=True, backend='eager')
    out = fn(q, k, v)
    want = context_window_attention(q, k, v, (2, 3), (4, 5), (2, 2), border='shift', backend='reference')
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    assert torch.isfinite(torch.autograd.grad(out.sum(), [q])[0]).all()


def test_export_decomposes_to_the_reference():
    class M(torch.nn.Module):
        def forward(self, q, k, v):
            return context_window_attention_op(q, k, v, *_CALL)
    args = torch.randn(1, 4, 6, 2, 4), torch.randn(1, 5, 7, 2, 4), torch.randn(1, 5, 7, 2, 4)
    ep = torch.export.export(M(), args)
    assert torch.ops.hiervit.window_context_fwd.default in [n.target for n in ep.graph.nodes]
    ep = ep.run_decompositions({torch.ops.hiervit.window_context_fwd.default: WINDOW_CONTEXT._decompose})
    assert not any('hiervit' in str(n.target) for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(*args), M()(*args), atol=1e-5, rtol=0)


def test_env_backend_meant_for_other_ops_does_not_break_context_mode(monkeypatch):
    """`HIERVIT_WINDOW_BACKEND=cpp` selects the plain mode's C++ kernel; context mode has no `cpp` and runs auto."""
    q, k, v = (torch.randn(1, 4, 4, 2, 8) for _ in range(3))
    want = context_window_attention(q, k, v, 2, 4, backend='reference')
    for var in ('HIERVIT_WINDOW_BACKEND', 'HIERVIT_BACKEND'):
        monkeypatch.setenv(var, 'cpp')
        torch.testing.assert_close(context_window_attention(q, k, v, 2, 4), want)
        monkeypatch.setenv(var, 'nope')  # a name no op has is still an error, naming where it came from
        with pytest.raises(BackendError, match=f"unknown backend 'nope' \\(from {var}\\)"):
            context_window_attention(q, k, v, 2, 4)
        monkeypatch.delenv(var)
