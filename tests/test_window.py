"""Window attention: the reference against timm's Swin path and the official CSWin stripe path (bias layout, shift
regions, stripes, the segmentation backbone's centred zero padding), the cpu and cpp backends against the reference over
seeded random sweeps (outputs and gradients), gradcheck, errors, dispatch, and the custom op (meta, FLOPs, compile,
export)."""
import math
import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hiervit.bench.ops import cswin_stripe_peer, swin_attn_mask, swin_window_peer
from hiervit.kernels import BackendError
from hiervit.kernels.window import (
    WINDOW, cpp, resolve_window, window_attention, window_attention_flops, window_attention_op, window_dispatcher)
from hiervit.kernels.window.reference import region_ids, relative_position_index

# the backends that must agree with the reference (triton: tests/test_window_triton.py; cpp's own sweep and loader:
# tests/test_window_cpp.py); cpu is tested whether or not cpp builds here, as it runs wherever cpp is refused
FAST_BACKENDS = ['cpu'] + (['cpp'] if cpp.availability() is None else [])


# ---------------------------------------------------------------------------------------------------------------------
# the reference against the peers' own formulations


def test_relative_position_index_is_timms():
    from timm.models.swin_transformer import get_relative_position_index
    for wh, ww in [(7, 7), (3, 5), (1, 4), (6, 2)]:
        assert torch.equal(relative_position_index(wh, ww), get_relative_position_index(wh, ww))


def test_region_ids_are_swins_slices():
    # 12 rows, window 4, shift 2: [0, 8) -> 0, [8, 10) -> 1, [10, 12) -> 2; no shift: one region
    assert region_ids(12, 4, 2).tolist() == [0] * 8 + [1] * 2 + [2] * 2
    assert region_ids(12, 4, 0).tolist() == [0] * 12


@pytest.mark.parametrize('H,W,window,shift,heads', [(8, 8, 4, 2, 2), (12, 8, 4, 1, 3), (7, 14, 7, 3, 1)])
@pytest.mark.parametrize('backend', ['reference'] + FAST_BACKENDS)
def test_matches_timm_swin_path(H, W, window, shift, heads, backend):
    """timm's roll + window_partition + bias table + shifted-window mask (-100) + window_reverse."""
    d = 8
    qkv = torch.randn(2, H, W, 3, heads, d)
    table = torch.randn((2 * window - 1) ** 2, heads)
    mask = swin_attn_mask(H, W, window, shift, heads)
    want = swin_window_peer(qkv, table, window, shift, d ** -0.5, mask)
    q, k, v = qkv.unbind(3)
    got = window_attention(q, k, v, window, shift, rpb=table, backend=backend)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize('H,W,stripe,center', [(8, 8, 2, False), (6, 9, 3, False), (7, 10, 3, True),
                                               (9, 5, 2, True), (5, 5, None, False)])
@pytest.mark.parametrize('backend', ['reference'] + FAST_BACKENDS)
def test_matches_cswin_stripes(H, W, stripe, center, backend):
    """The official img2windows path: half the heads in (H, sw) stripes, half in (sw, W); with `center`, the
    segmentation backbone's centred, unmasked zero padding of q, k, v to the stripe multiple."""
    heads, d = 4, 8
    qkv = torch.randn(2, H, W, 3, heads, d)
    want = cswin_stripe_peer(qkv, stripe, d ** -0.5, center_pad=center)
    q, k, v = qkv.unbind(3)
    kw = dict(padding='zeros', pad_position='center') if center else {}
    if stripe is None:
        got = window_attention(q, k, v, (None, None), backend=backend, **kw)
    else:
        h = heads // 2
        got = torch.cat([
            window_attention(q[..., :h, :], k[..., :h, :], v[..., :h, :], (None, stripe), backend=backend, **kw),
            window_attention(q[..., h:, :], k[..., h:, :], v[..., h:, :], (stripe, None), backend=backend, **kw),
        ], dim=3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_mask_padding_equals_attention_on_the_real_tokens():
    """With masked padding a window cut by the border is plain attention over its real tokens."""
    q, k, v = (torch.randn(1, 5, 7, 2, 4) for _ in range(3))
    out = window_attention(q, k, v, (4, 4), backend='reference')
    # window (1, 1) of the padded 8 x 8 map holds rows 4 and columns 4..6 only
    qs, ks, vs = (t[0, 4:5, 4:7].reshape(3, 2, 4).transpose(0, 1) for t in (q, k, v))
    want = torch.softmax(qs @ ks.transpose(1, 2) * 0.5, -1) @ vs
    torch.testing.assert_close(out[0, 4:5, 4:7].reshape(3, 2, 4), want.transpose(0, 1), atol=1e-6, rtol=0)


def test_rpb_one_hot_picks_relative_offset():
    """A large bias at table entry (dy, dx) = query - key = (1, 0) makes each query copy the key one row above it."""
    wh, ww = 3, 4
    v = torch.randn(1, 6, 8, 1, 3)
    q = k = torch.zeros(1, 6, 8, 1, 3)
    rpb = torch.zeros((2 * wh - 1) * (2 * ww - 1), 1)
    rpb[(1 + wh - 1) * (2 * ww - 1) + (0 + ww - 1)] = 100.0
    out = window_attention(q, k, v, (wh, ww), rpb=rpb, backend='reference')
    for y in (1, 2, 4, 5):  # rows with a row above inside their window
        torch.testing.assert_close(out[0, y], v[0, y - 1])


# ---------------------------------------------------------------------------------------------------------------------
# fast backends vs reference: seeded random sweeps (odd, non-square, border-heavy, stripes, shifts, both paddings)


def _random_case(rng: random.Random):
    H, W = rng.randint(1, 13), rng.randint(1, 13)
    window = []
    for L in (H, W):
        window.append(rng.choice([None, rng.randint(1, L + 3)]))
    wh, ww = (L if w is None else w for w, L in zip(window, (H, W)))
    shift = (rng.randrange(wh) if rng.random() < 0.5 else 0, rng.randrange(ww) if rng.random() < 0.5 else 0)
    return dict(
        B=rng.randint(1, 3), H=H, W=W, heads=rng.randint(1, 3), d=rng.choice([4, 8, 16]), dv=rng.choice([4, 8]),
        window=tuple(window), shift=shift, rpb=rng.random() < 0.6, padding=rng.choice(['mask', 'zeros']),
        pad_position=rng.choice(['end', 'center']), scale=rng.choice([None, 0.3]))


def _tensors(c, dtype=torch.float32):
    wh, ww = (L if w is None else w for w, L in zip(c['window'], (c['H'], c['W'])))
    q, k = (torch.randn(c['B'], c['H'], c['W'], c['heads'], c['d'], dtype=dtype) * 1.5 for _ in range(2))
    v = torch.randn(c['B'], c['H'], c['W'], c['heads'], c['dv'], dtype=dtype)
    rpb = torch.randn((2 * wh - 1) * (2 * ww - 1), c['heads'], dtype=dtype) if c['rpb'] else None
    return [t.requires_grad_() for t in (q, k, v)] + ([rpb.requires_grad_()] if rpb is not None else [])


def _run(backend, tensors, c, dout):
    q, k, v, *rest = tensors
    out = window_attention(q, k, v, c['window'], c['shift'], rpb=rest[0] if rest else None, scale=c['scale'],
                           padding=c['padding'], pad_position=c['pad_position'], backend=backend)
    return out, torch.autograd.grad(out, tensors, dout)


def _compare(backend, c, seed):
    torch.manual_seed(seed)
    tensors = _tensors(c)
    dout = torch.randn(c['B'], c['H'], c['W'], c['heads'], c['dv'])
    out, grads = _run(backend, tensors, c, dout)
    ref, ref_grads = _run('reference', tensors, c, dout)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0, msg=f'out {c}')
    for name, g, r in zip(('dq', 'dk', 'dv', 'drpb'), grads, ref_grads):
        assert torch.isfinite(g).all(), (name, c)
        # d_rpb sums dS over the batch and every window: scale its tolerance with the number of summed terms.
        atol = 1e-5 * (c['B'] * c['H'] * c['W'] if name == 'drpb' else 1)
        torch.testing.assert_close(g, r, atol=atol, rtol=1e-4, msg=f'{name} {c}')


@pytest.mark.parametrize('backend', FAST_BACKENDS)
@pytest.mark.parametrize('seed', range(3))
def test_backend_matches_reference_random_sweep(backend, seed):
    rng = random.Random(seed)
    for i in range(10):
        _compare(backend, _random_case(rng), 100 * seed + i)


@pytest.mark.parametrize('backend', FAST_BACKENDS)
@pytest.mark.parametrize('c', [
    # Swin: shifted 7x7 windows with the bias; a map smaller than the window; CSWin stripes with both paddings
    dict(B=2, H=14, W=14, heads=2, d=8, dv=8, window=(7, 7), shift=(3, 3), rpb=True, padding='mask',
         pad_position='end', scale=None),
    dict(B=1, H=3, W=5, heads=2, d=8, dv=8, window=(7, 7), shift=(0, 0), rpb=True, padding='mask',
         pad_position='end', scale=None),
    dict(B=2, H=11, W=9, heads=1, d=8, dv=4, window=(None, 2), shift=(0, 0), rpb=False, padding='zeros',
         pad_position='center', scale=None),
    dict(B=2, H=11, W=9, heads=1, d=8, dv=4, window=(2, None), shift=(0, 0), rpb=False, padding='mask',
         pad_position='end', scale=None),
], ids=['swin', 'small-map', 'cswin-vertical-zeros', 'cswin-horizontal-mask'])
def test_backend_matches_reference_model_cases(backend, c):
    _compare(backend, c, 0)


@pytest.mark.skipif('cpu' not in FAST_BACKENDS, reason='no cpu backend')
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_cpu_chunks_strided_views_and_low_precision(monkeypatch, dtype):
    """One image per backward chunk, q/k/v as strided views of one qkv tensor, and bf16 (computed in fp32)."""
    import hiervit.kernels.window.cpu as cpu
    monkeypatch.setattr(cpu, '_CHUNK_BYTES', 1)
    qkv = torch.randn(3, 10, 9, 3, 2, 8).to(dtype).requires_grad_()
    rpb = torch.randn(7 * 9, 2).to(dtype).requires_grad_()
    dout = torch.randn(3, 10, 9, 2, 8).to(dtype)

    def run(backend, qkv, rpb):
        q, k, v = qkv.unbind(3)
        out = window_attention(q, k, v, (4, 5), (1, 2), rpb=rpb, backend=backend)
        return out, torch.autograd.grad(out, (qkv, rpb), dout.to(qkv.dtype))
    out, grads = run('cpu', qkv, rpb)
    ref, ref_grads = run('reference', qkv.detach().float().requires_grad_(), rpb.detach().float().requires_grad_())
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    atol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.float(), r, atol=atol * max(1.0, r.abs().max().item()), rtol=0)


@pytest.mark.parametrize('backend', ['reference'] + FAST_BACKENDS)
@pytest.mark.parametrize('padding,pad_position', [('mask', 'end'), ('zeros', 'center')])
def test_gradcheck(backend, padding, pad_position):
    torch.manual_seed(1)
    q, k = (torch.randn(1, 5, 6, 2, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(1, 5, 6, 2, 2, dtype=torch.float64, requires_grad=True)
    rpb = torch.randn(5 * 7, 2, dtype=torch.float64, requires_grad=True)
    fn = lambda q, k, v, rpb: window_attention(q, k, v, (3, 4), (1, 2), rpb=rpb, padding=padding,
                                               pad_position=pad_position, backend=backend)
    assert torch.autograd.gradcheck(fn, (q, k, v, rpb), fast_mode=True)


# ---------------------------------------------------------------------------------------------------------------------
# arguments, errors and dispatch


def test_resolve_window():
    assert resolve_window(10, 7, (None, 3)) == ([10, 3], [0, 0], [0, 0, 0, 2])
    assert resolve_window(10, 7, (4, None), 1, 'center') == ([4, 7], [1, 1], [1, 1, 0, 0])
    assert resolve_window(3, 3, 7) == ([7, 7], [0, 0], [0, 4, 0, 4])


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(window_size=0), ValueError, 'window_size must be >= 1'),
    (dict(window_size=(3, 3, 3)), ValueError, 'window_size must be an int or a pair'),
    (dict(window_size=3.0), TypeError, 'window_size must be an int or a pair'),
    (dict(window_size=4, shift_size=4), ValueError, r'0 <= shift < window'),
    (dict(window_size=4, shift_size=-1), ValueError, r'0 <= shift < window'),
    (dict(window_size=4, padding='reflect'), ValueError, "padding must be one of"),
    (dict(window_size=4, pad_position='left'), ValueError, "pad_position must be one of"),
    (dict(window_size=(3, 4), rpb=torch.zeros(35, 2)), ValueError, r'Swin\'s table .*\[35, 3\]'),
    (dict(window_size=4, scale='x'), TypeError, 'scale must be a Python number'),
])
def test_bad_arguments(kwargs, error, match):
    q, k, v = (torch.randn(1, 8, 9, 3, 4) for _ in range(3))
    with pytest.raises(error, match=match):
        window_attention(q, k, v, **kwargs)


def test_bad_tensors():
    q, k, v = (torch.randn(1, 8, 9, 3, 4) for _ in range(3))
    with pytest.raises(ValueError, match='k .* must have the shape of q'):
        window_attention(q, k[:, :7], v, 4)
    with pytest.raises(ValueError, match='v .* must match q'):
        window_attention(q, k, v[..., :2, :], 4)
    with pytest.raises(ValueError, match=r'q must be a \[B, H, W, heads, head_dim\]'):
        window_attention(q[0], k[0], v[0], 4)
    with pytest.raises(ValueError, match='share a dtype'):
        window_attention(q, k.double(), v, 4)
    with pytest.raises(ValueError, match='padding < window that makes the axis a multiple'):
        window_attention_op(q, k, v, [4, 4], [0, 0], [0, 0, 0, 0], True, None, 0.5)


def test_dispatcher_env_override(monkeypatch):
    q, k, v = (torch.randn(1, 8, 8, 2, 4) for _ in range(3))
    with pytest.raises(BackendError, match="unknown backend 'nope'"):
        window_attention(q, k, v, 4, backend='nope')
    calls = []
    import hiervit.kernels.window.reference as ref
    real = ref.forward
    monkeypatch.setattr(ref, 'forward', lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv('HIERVIT_WINDOW_BACKEND', 'reference')
    window_attention(q, k, v, 4)
    assert calls == [1]


def test_auto_picks_a_cpu_backend_on_cpu():
    from hiervit.kernels.window import WindowProblem
    p = WindowProblem(torch.device('cpu'), torch.float32, 2, 8, 8, (7, 7), True)
    assert window_dispatcher.select(p) == ('cpp' if cpp.availability() is None else 'cpu')


# ---------------------------------------------------------------------------------------------------------------------
# custom op: meta tensors, FLOP counting, torch.compile, export


def test_meta_tensors():
    with torch.device('meta'):
        q, k = (torch.randn(2, 9, 11, 3, 8) for _ in range(2))
        v = torch.randn(2, 9, 11, 3, 4)
        out = window_attention(q, k, v, (4, 5), (1, 2), rpb=torch.randn(7 * 9, 3))
    assert out.shape == v.shape and out.device.type == 'meta'


def test_flop_counter():
    q, k, v, rpb = _tensors(dict(B=2, H=9, W=11, heads=3, d=8, dv=4, window=(4, 5), rpb=True))
    with FlopCounterMode(display=False) as counter:
        out = window_attention(q, k, v, (4, 5), rpb=rpb)
        out.sum().backward()
    # padded map 12 x 15, 20 keys per query, QK^T with d = 8 and PV with dv = 4
    fwd = 2 * 2 * 3 * 12 * 15 * 20 * (8 + 4)
    assert window_attention_flops(q.shape, (4, 5), (0, 3, 0, 4), v_dim=4) == fwd
    counts = counter.get_flop_counts()['Global']
    assert counts[torch.ops.hiervit.window_attention_fwd] == fwd
    assert counts[torch.ops.hiervit.window_attention_bwd] == 2 * fwd


def test_torch_compile_fullgraph():
    q, k, v, rpb = _tensors(dict(B=1, H=6, W=7, heads=2, d=8, dv=8, window=(3, 4), rpb=True))
    fn = torch.compile(lambda q, k, v, rpb: window_attention(q, k, v, (3, 4), (1, 1), rpb=rpb), fullgraph=True,
                       backend='eager')
    out = fn(q, k, v, rpb)
    want = window_attention(q, k, v, (3, 4), (1, 1), rpb=rpb, backend='reference')
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    (g,) = torch.autograd.grad(out.sum(), [rpb])
    assert torch.isfinite(g).all()


def test_export_decomposes_to_the_reference():
    class M(torch.nn.Module):
        def forward(self, q, k, v, rpb):
            return window_attention_op(q, k, v, [3, 4], [1, 2], [0, 0, 0, 1], True, rpb, 0.5)
    args = tuple(t.detach() for t in _tensors(dict(B=1, H=6, W=7, heads=2, d=4, dv=4, window=(3, 4), rpb=True)))
    ep = torch.export.export(M(), args)
    assert torch.ops.hiervit.window_attention_fwd.default in [n.target for n in ep.graph.nodes]
    ep = ep.run_decompositions({torch.ops.hiervit.window_attention_fwd.default: WINDOW._decompose})
    assert not any('hiervit' in str(n.target) for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(*args), M()(*args), atol=1e-5, rtol=0)
