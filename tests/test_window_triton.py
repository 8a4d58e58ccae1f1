"""Triton window attention against the reference: outputs and gradients (q, k, v, rpb), fp32/fp16/bf16.

Without a GPU these run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so shapes are tiny: a
few programs per call, but with shifts, both paddings, stripes, windows larger than one 64-slot block, and strided
q/k/v views of one qkv tensor.
"""
import importlib

import pytest
import torch

from hiervit.kernels import BackendError
from hiervit.kernels.window import WindowProblem, window_attention, window_dispatcher

pytestmark = pytest.mark.skipif(importlib.util.find_spec('triton') is None, reason='triton is not installed')
DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'

# (H, W, heads, d, dv, window, shift, rpb, padding, pad_position)
CASES = [
    (8, 8, 2, 8, 8, (4, 4), (2, 1), True, 'mask', 'end'),  # Swin: shifted windows with the bias
    (7, 9, 1, 12, 8, (4, 5), (2, 3), True, 'mask', 'end'),  # padding + shift, d != dv, d not a power of two
    (7, 9, 1, 8, 8, (4, 5), (1, 0), True, 'zeros', 'center'),  # unmasked zero padding, centred
    (5, 9, 1, 8, 4, (None, 2), (0, 0), False, 'zeros', 'center'),  # CSWin vertical stripes, seg padding
    (9, 8, 1, 8, 8, (9, 8), (0, 0), True, 'mask', 'end'),  # 72 slots: two query and two key blocks
    (3, 5, 2, 4, 4, (7, 7), (0, 0), False, 'mask', 'end'),  # map smaller than the window
]


def _inputs(H, W, heads, d, dv, window, rpb, dtype):
    g = torch.Generator().manual_seed(0)
    make = lambda *s: (torch.randn(*s, generator=g) * 1.5).to(DEVICE, dtype).requires_grad_()
    wh, ww = (L if w is None else w for w, L in zip(window, (H, W)))
    tensors = [make(1, H, W, heads, d), make(1, H, W, heads, d), make(1, H, W, heads, dv)]
    if rpb:
        tensors.append(make((2 * wh - 1) * (2 * ww - 1), heads))
    return tensors


def _run(backend, tensors, window, shift, padding, pad_position, dout):
    q, k, v, *rest = tensors
    out = window_attention(q, k, v, window, shift, rpb=rest[0] if rest else None, padding=padding,
                           pad_position=pad_position, backend=backend)
    return out, torch.autograd.grad(out, tensors, dout)


@pytest.mark.parametrize('H,W,heads,d,dv,window,shift,rpb,padding,pad_position', CASES)
def test_triton_fp32_matches_reference(H, W, heads, d, dv, window, shift, rpb, padding, pad_position):
    tensors = _inputs(H, W, heads, d, dv, window, rpb, torch.float32)
    dout = torch.randn(1, H, W, heads, dv, device=DEVICE)
    out, grads = _run('triton', tensors, window, shift, padding, pad_position, dout)
    ref, ref_grads = _run('reference', tensors, window, shift, padding, pad_position, dout)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    for name, g, r in zip(('dq', 'dk', 'dv', 'drpb'), grads, ref_grads):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4, msg=name)


def test_triton_strided_qkv_views():
    qkv = torch.randn(1, 6, 8, 3, 2, 8, device=DEVICE, requires_grad=True)
    rpb = torch.randn(5 * 7, 2, device=DEVICE, requires_grad=True)
    dout = torch.randn(1, 6, 8, 2, 8, device=DEVICE)

    def run(backend):
        q, k, v = qkv.unbind(3)
        out = window_attention(q, k, v, (3, 4), (1, 2), rpb=rpb, backend=backend)
        return out, torch.autograd.grad(out, (qkv, rpb), dout)
    out, grads = run('triton')
    ref, ref_grads = run('reference')
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('dtype,atol', [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)], ids=['fp16', 'bf16'])
def test_triton_half_matches_fp32_reference(dtype, atol):
    H, W, heads, d, dv, window, shift, rpb, padding, pad_position = CASES[1]
    tensors = _inputs(H, W, heads, d, dv, window, rpb, dtype)
    dout = torch.randn(1, H, W, heads, dv, device=DEVICE).to(dtype)
    out, grads = _run('triton', tensors, window, shift, padding, pad_position, dout)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    ref_tensors = [t.detach().float().requires_grad_() for t in tensors]
    ref, ref_grads = _run('reference', ref_tensors, window, shift, padding, pad_position, dout.float())
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=0)
    for name, g, r in zip(('dq', 'dk', 'dv', 'drpb'), grads, ref_grads):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g.float(), r, atol=atol * max(4.0, r.abs().max().item()), rtol=0, msg=name)


def test_triton_refuses_cpu_without_interpreter(monkeypatch):
    problem = WindowProblem(torch.device('cpu'), torch.float32, 2, 8, 8, (4, 4), True)
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    assert 'TRITON_INTERPRET=1' in window_dispatcher.explain(problem)['triton']
    q = torch.randn(1, 8, 8, 2, 8)
    with pytest.raises(BackendError, match="'triton'.*TRITON_INTERPRET=1"):
        window_attention(q, q, q, 4, backend='triton')
    fp64 = WindowProblem(torch.device('cuda'), torch.float64, 2, 8, 8, (4, 4), True)
    assert 'float64' in window_dispatcher.explain(fp64)['triton']
