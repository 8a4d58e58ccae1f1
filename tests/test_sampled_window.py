"""Sampled-window attention (VSA): the reference against the official VSAWindowAttention's output (fixture), against
window attention at zero offsets and scales, gradcheck, the grid rule, errors, and the custom op (meta, FLOPs, empty
batch, TorchScript)."""
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from hiervit.kernels import BackendError
from hiervit.kernels.sampled_window import (
    SAMPLED_WINDOW, sampled_window_attention, sampled_window_attention_flops, sampled_window_attention_op,
    sampled_window_dispatcher)
from hiervit.kernels.sampled_window.reference import sampling_grid
from hiervit.kernels.window import window_attention

FIXTURE = Path(__file__).parent / 'fixtures' / 'vsa_window_attention_official.json'
FAST_BACKENDS = [n for n in sampled_window_dispatcher.names if n != 'reference']


def _inputs(B, H, W, heads, d, window, spread=0.5, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    nh, nw = H // window[0], W // window[1]
    q, k, v = (torch.randn(B, H, W, heads, d, generator=g, dtype=dtype).requires_grad_() for _ in range(3))
    offsets, scales = ((torch.randn(B, heads, nh, nw, 2, generator=g, dtype=dtype) * spread).requires_grad_()
                       for _ in range(2))
    rpb = (torch.randn((2 * window[0] - 1) * (2 * window[1] - 1), heads, generator=g, dtype=dtype)).requires_grad_()
    return q, k, v, offsets, scales, rpb


def _tensor(entry):
    return torch.tensor(entry['values'], dtype=torch.float32).view(entry['shape'])


def test_matches_the_official_module():
    """The official VSAWindowAttention (qkv conv, VSR branches, grid, grid_sample, bias, softmax, proj) on a 9x12 map
    with window 3, re-stated around the op from its state-dict keys; its VSR outputs push samples off the map."""
    fix = json.loads(FIXTURE.read_text())
    cfg, sd = fix['config'], {n: _tensor(t) for n, t in fix['state_dict'].items()}
    x, want = _tensor(fix['input']), _tensor(fix['output'])
    B, heads, ws, H, W = cfg['batch'], cfg['heads'], cfg['window'], cfg['height'], cfg['width']
    d = cfg['dim'] // heads

    def vsr(prefix):  # AvgPool(ws) -> LeakyReLU -> 1x1 conv; channel 2 * head + axis -> [B, heads, nh, nw, 2]
        y = F.conv2d(F.leaky_relu(F.avg_pool2d(x, ws, ws)), sd[f'{prefix}.2.weight'], sd[f'{prefix}.2.bias'])
        return y.view(B, heads, 2, H // ws, W // ws).permute(0, 1, 3, 4, 2)

    qkv = F.conv2d(x, sd['qkv.weight'], sd['qkv.bias'])  # [B, 3 * heads * d, H, W], channels (qkv, head, d)
    q, k, v = qkv.view(B, 3, heads, d, H, W).permute(1, 0, 4, 5, 2, 3).unbind(0)  # each [B, H, W, heads, d]
    out = sampled_window_attention(q, k, v, vsr('sampling_offsets'), vsr('sampling_scales'), ws,
                                   rpb=sd['relative_position_bias_table'])
    out = out.reshape(B, H, W, heads * d).permute(0, 3, 1, 2)
    got = F.conv2d(out, sd['proj.weight'], sd['proj.bias'])
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


def test_grid_is_the_pixel_rule():
    """c_J + b_i (1 + s) + o / n in normalised coordinates is pixel J ww + i + (i - (ww - 1) / 2) s + o (W - 1) / 2n."""
    B, heads, H, W, window = 1, 2, 6, 10, [3, 5]
    g = torch.Generator().manual_seed(1)
    offsets, scales = (torch.randn(B, heads, 2, 2, 2, generator=g, dtype=torch.float64) for _ in range(2))
    grid = sampling_grid(offsets, scales, H, W, window)
    px = (grid[..., 0] + 1) * (W - 1) / 2
    py = (grid[..., 1] + 1) * (H - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing='ij')
    i, j = xs % window[1], ys % window[0]
    win = lambda t: t.repeat_interleave(window[0], 2).repeat_interleave(window[1], 3)  # [B, heads, H, W]
    want_x = xs + (i - (window[1] - 1) / 2) * win(scales[..., 0]) + win(offsets[..., 0]) * (W - 1) / (2 * 2)
    want_y = ys + (j - (window[0] - 1) / 2) * win(scales[..., 1]) + win(offsets[..., 1]) * (H - 1) / (2 * 2)
    torch.testing.assert_close(px, want_x)
    torch.testing.assert_close(py, want_y)


@pytest.mark.parametrize('backend', sampled_window_dispatcher.names)
def test_default_window_is_window_attention(backend):
    q, k, v, offsets, scales, rpb = _inputs(2, 6, 8, 3, 4, [3, 4])
    zeros = torch.zeros_like(offsets)
    got = sampled_window_attention(q, k, v, zeros, zeros, (3, 4), rpb=rpb, backend=backend)
    want = window_attention(q, k, v, (3, 4), rpb=rpb, backend='reference')
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize('backend', ['reference', 'cpu'])
def test_gradcheck(backend):
    q, k, v, offsets, scales, rpb = _inputs(1, 4, 6, 2, 3, [2, 3], spread=0.7, dtype=torch.float64)
    fn = lambda *t: sampled_window_attention(*t[:5], [2, 3], rpb=t[5], backend=backend)
    # fast mode: the Jacobian against random directions of every input (the full Jacobian takes ~20 s here)
    assert torch.autograd.gradcheck(fn, (q, k, v, offsets, scales, rpb), fast_mode=True)


# ---------------------------------------------------------------------------------------------------------------------
# fast backends against the reference: seeded random sweeps, outputs and every gradient

def _sweep_case(seed: int) -> dict:
    """Odd and non-square windows (1..5 per axis), 1..3 windows per axis, heads 1..3, odd head dims, offsets and
    scales up to 3 standard deviations (many samples off the map: border-heavy), with and without the bias."""
    r = random.Random(seed)
    wh, ww = r.randint(1, 5), r.randint(1, 5)
    nh, nw = r.randint(1, 3), r.randint(1, 3)
    nh, nw = max(nh, 2 if wh == 1 else 1), max(nw, 2 if ww == 1 else 1)  # at least 2 rows and columns
    return dict(B=r.randint(1, 2), H=nh * wh, W=nw * ww, window=[wh, ww], heads=r.randint(1, 3),
                d=r.choice([1, 3, 5, 8, 16, 17]), spread=r.choice([0.3, 1.0, 3.0]), rpb=r.random() < 0.7)


def _sweep_errors(backend: str, case: dict, seed: int, dtype=torch.float32) -> dict:
    """max|got - want| / max|want| of the output and each gradient, `backend` against the fp32 reference."""
    g = torch.Generator().manual_seed(seed)
    B, H, W, heads, d, (wh, ww) = case['B'], case['H'], case['W'], case['heads'], case['d'], case['window']
    tensors = [torch.randn(B, H, W, heads, d, generator=g) for _ in range(3)]
    tensors += [torch.randn(B, heads, H // wh, W // ww, 2, generator=g) * case['spread'] for _ in range(2)]
    tensors.append(torch.randn((2 * wh - 1) * (2 * ww - 1), heads, generator=g) if case['rpb'] else None)
    tensors = [None if t is None else t.to(dtype).float() for t in tensors]  # one rounding shared by both sides
    dout = torch.randn(B, H, W, heads, d, generator=g)
    names = ['out', 'dq', 'dk', 'dv', 'doffsets', 'dscales'] + (['drpb'] if case['rpb'] else [])
    results = {}
    for name, dt in (('reference', torch.float32), (backend, dtype)):
        inputs = [None if t is None else t.to(dt).requires_grad_() for t in tensors]
        out = sampled_window_attention(*inputs[:5], case['window'], rpb=inputs[5], backend=name)
        grads = torch.autograd.grad(out, [t for t in inputs if t is not None], dout.to(dt))
        results[name] = [t.float() for t in (out, *grads)]
    return {n: ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()
            for n, a, b in zip(names, results['reference'], results[backend])}


# Largest relative error measured over seeds 0..199 (cpu): 4.7e-6 (dk), 4.4e-6 (out), 3.6e-6 (dscales), 3.4e-6 (d_rpb);
# over seeds 0..29 (triton, interpreter): 3.7e-6 (dscales), 2.6e-6 (out), 2.3e-6 (dk).
SWEEP_TOL = 2e-5
SWEEP_CASES = {'cpu': 40, 'triton': 4}  # the interpreter costs about 2 s per case


@pytest.mark.parametrize('backend', FAST_BACKENDS)
def test_sweep_against_reference(backend):
    worst = {}
    for seed in range(SWEEP_CASES.get(backend, 8)):
        case = _sweep_case(seed)
        for name, err in _sweep_errors(backend, case, seed).items():
            assert err < SWEEP_TOL, f'{backend} {name}: relative error {err:.2e} for seed {seed}, case {case}'
            worst[name] = max(worst.get(name, 0.0), err)
    assert set(worst) == {'out', 'dq', 'dk', 'dv', 'doffsets', 'dscales', 'drpb'}


@pytest.mark.parametrize('backend', FAST_BACKENDS)
def test_low_precision_inputs(backend):
    """bf16 and fp16 inputs compute in fp32 and round the results once: within a few bf16/fp16 ulps of the fp32
    reference on the same rounded inputs."""
    case = dict(B=2, H=6, W=10, window=[3, 5], heads=2, d=8, spread=1.0, rpb=True)
    # the interpreter computes every dot in fp32: one dtype is enough there (compiling checks the fp16/bf16 dots)
    dtypes = ((torch.float16, 2e-3),) if backend == 'triton' else ((torch.bfloat16, 1.6e-2), (torch.float16, 2e-3))
    for dtype, tol in dtypes:
        for name, err in _sweep_errors(backend, case, 7, dtype).items():
            assert err < tol, f'{backend} {dtype} {name}: relative error {err:.2e}'


@pytest.mark.parametrize('backend', ['cpu'])  # triton scatters dK/dV with atomics (see its docstring)
def test_backward_is_deterministic(backend):
    q, k, v, offsets, scales, rpb = _inputs(2, 6, 8, 3, 8, [3, 4], spread=2.0)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(3))
    runs = [torch.autograd.grad(sampled_window_attention(q, k, v, offsets, scales, (3, 4), rpb=rpb, backend=backend),
                                (q, k, v, offsets, scales, rpb), dout) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))


# Against the fp64 reference, logits near 100 leave fp32 rounding of about 1e-7 * 100 in each probability: measured
# 1.3e-5 (dscales, cpu), while the fp32 reference itself is 6.1e-5 (doffsets) off.
LARGE_LOGIT_TOL = 5e-5


def test_cpu_softmax_far_below_the_row_maximum():
    """Logits more than 88 below their row's maximum (e^x under the smallest normal float) add nothing to the softmax:
    the C++ exp must not turn them into garbage. 7 x 7 windows on 14 x 14 (the stage shape, padded rows)."""
    q, k, v, offsets, scales, rpb = _inputs(1, 14, 14, 2, 32, [7, 7], seed=5)
    with torch.no_grad():
        q.mul_(40.0)
        # most queries' logits over their window's sampled keys span more than 88: the regime is reached
        grid = sampling_grid(offsets, scales, 14, 14, [7, 7]).reshape(2, 14, 14, 2)
        ks = F.grid_sample(k.permute(0, 3, 4, 1, 2).reshape(2, 32, 14, 14), grid, align_corners=True)
        ks = ks.view(2, 32, 2, 7, 2, 7)  # [heads, d, I, y, J, x]
        qs = q.permute(0, 3, 4, 1, 2).reshape(2, 32, 2, 7, 2, 7)
        logits = torch.einsum('hcIyJx,hcIkJl->hIJyxkl', qs, ks).flatten(-2) * 32 ** -0.5
        assert ((logits.amax(-1) - logits.amin(-1)) > 88).float().mean() > 0.5
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(6))
    results = []
    for backend, dtype in (('reference', torch.float64), ('cpu', torch.float32)):
        params = [t.detach().to(dtype).requires_grad_() for t in (q, k, v, offsets, scales, rpb)]
        out = sampled_window_attention(*params[:5], (7, 7), rpb=params[5], backend=backend)
        results.append([t.double() for t in (out, *torch.autograd.grad(out, params, dout.to(dtype)))])
    for name, want, got in zip(['out', 'dq', 'dk', 'dv', 'doffsets', 'dscales', 'drpb'], *results):
        assert torch.isfinite(got).all(), name
        err = ((got - want).abs().max() / want.abs().max()).item()
        assert err < LARGE_LOGIT_TOL, f'{name}: relative error {err:.2e}'


@pytest.mark.parametrize('backend', FAST_BACKENDS)
def test_strided_views_are_read_in_place(backend):
    """q, k, v as views of one qkv projection (the model's layout) give the result of contiguous copies."""
    qkv = torch.randn(1, 6, 8, 3, 2, 4)
    _, _, _, offsets, scales, rpb = _inputs(1, 6, 8, 2, 4, [3, 4])
    q, k, v = qkv.unbind(3)
    got = sampled_window_attention(q, k, v, offsets, scales, (3, 4), rpb=rpb, backend=backend)
    want = sampled_window_attention(q.contiguous(), k.contiguous(), v.contiguous(), offsets, scales, (3, 4), rpb=rpb,
                                    backend=backend)
    assert torch.equal(got, want)


# ---------------------------------------------------------------------------------------------------------------------
# errors and the custom op


@pytest.mark.parametrize('change,match', [
    (dict(H=7), 'must be a multiple of the window 3x4; pad'),
    (dict(offsets=(1, 2, 2, 3, 2)), r'offsets must be \[B, heads, H // wh, W // ww, 2\]'),
    (dict(scales=(1, 2, 2, 2)), r'scales must be'),
    (dict(rpb=(25, 2)), r"rpb must be Swin's table"),
    (dict(window=(3, 0)), 'window must be an int >= 1'),
    (dict(H=1, window=(1, 4)), 'at least 2 rows'),
])
def test_errors_name_the_argument(change, match):
    H, window = change.get('H', 6), change.get('window', (3, 4))
    q = torch.randn(1, H, 8, 2, 4)
    nh = H // window[0] if window[0] else 1
    offsets = torch.zeros(change.get('offsets', (1, 2, nh, 2, 2)))
    scales = torch.zeros(change.get('scales', (1, 2, nh, 2, 2)))
    rpb = torch.zeros(change.get('rpb', (5 * 7, 2)))
    with pytest.raises(ValueError, match=match):
        sampled_window_attention(q, q, q, offsets, scales, window, rpb=rpb)


def test_non_finite_grid_parameters_are_refused():
    q = torch.randn(1, 6, 8, 2, 4)
    offsets = torch.zeros(1, 2, 2, 2, 2)
    bad = offsets.clone()
    bad[0, 1, 1, 0, 1] = float('nan')
    with pytest.raises(ValueError, match='offsets has non-finite values'):
        sampled_window_attention(q, q, q, bad, offsets, (3, 4))
    with pytest.raises(ValueError, match='scales has non-finite values'):
        sampled_window_attention(q, q, q, offsets, bad.exp() * float('inf'), (3, 4))
    with pytest.raises(ValueError, match='k .* must have the shape of q'):
        sampled_window_attention(q, q[..., :2], q, offsets, offsets, (3, 4))
    with pytest.raises(BackendError, match="unknown backend 'nope'"):
        sampled_window_attention(q, q, q, offsets, offsets, (3, 4), backend='nope')


def test_meta_flops_empty_and_script():
    q, k, v, offsets, scales, rpb = _inputs(2, 6, 8, 2, 4, [3, 4])
    meta = [t.detach().to('meta') for t in (q, k, v, offsets, scales, rpb)]
    out, lse = SAMPLED_WINDOW.fwd(*meta, [3, 4], 0.5, 'auto')
    assert out.shape == q.shape and lse.shape == q.shape[:-1] and lse.dtype == torch.float32
    with FlopCounterMode(display=False) as counter:
        sampled_window_attention(q, k, v, offsets, scales, (3, 4), rpb=rpb).sum().backward()
    fwd = sampled_window_attention_flops(q.shape, [3, 4])
    assert fwd == 2 * 2 * 2 * 48 * 12 * 8 + 16 * 2 * 48 * 2 * 4
    assert counter.get_total_flops() == 3 * fwd
    empty = [t.detach()[:0].requires_grad_() for t in (q, k, v, offsets, scales)]
    out = sampled_window_attention(*empty, (3, 4), rpb=rpb)
    grads = torch.autograd.grad(out.sum(), empty + [rpb])
    assert out.shape == (0,) + q.shape[1:] and not grads[-1].any()

    def model(q, k, v, offsets, scales, rpb):
        return sampled_window_attention_op(q, k, v, offsets, scales, [3, 4], rpb, 0.5, 'auto')
    scripted = torch.jit.script(model)
    args = [t.detach() for t in (q, k, v, offsets, scales, rpb)]
    torch.testing.assert_close(scripted(*args), model(*args))


def test_export_decomposes_to_standard_ops():
    q, k, v, offsets, scales, rpb = (t.detach() for t in _inputs(1, 6, 8, 2, 4, [3, 4]))

    class M(torch.nn.Module):
        def forward(self, q, k, v, offsets, scales):
            return sampled_window_attention_op(q, k, v, offsets, scales, [3, 4], rpb, 0.5, 'auto')
    ep = torch.export.export(M(), (q, k, v, offsets, scales))
    decomposed = ep.run_decompositions({torch.ops.hiervit.sampled_window_attention_fwd.default:
                                        SAMPLED_WINDOW._decompose})
    assert all('hiervit' not in str(n.target) for n in decomposed.graph.nodes)
    torch.testing.assert_close(decomposed.module()(q, k, v, offsets, scales), M()(q, k, v, offsets, scales))


def test_dispatch_order_and_refusals():
    assert sampled_window_dispatcher.names == ['cpu', 'triton', 'reference']
    q = torch.randn(1, 18, 18, 2, 4)
    grid_params = torch.zeros(1, 2, 2, 2, 2)
    problem = SAMPLED_WINDOW.problem(q, q, q, grid_params, grid_params, None, [9, 9], 0.5)
    assert sampled_window_dispatcher.select(problem) == 'cpu'
    assert 'exceeds 64' in sampled_window_dispatcher.explain(problem)['triton']
    with pytest.raises(BackendError, match="backend 'triton' .* window 9x9 exceeds 64"):
        sampled_window_attention(q, q, q, grid_params, grid_params, 9, backend='triton')
