"""Triton neighborhood attention against the reference: outputs and gradients (q, k, v, rpb), fp32/fp16/bf16.

Without a GPU these run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so shapes are tiny:
a few programs per call, but with partial tiles, uneven dilation groups, even kernels and border-dominated maps.
"""
import importlib

import pytest
import torch

from hiervit.kernels import BackendError
from hiervit.kernels.neighborhood import NAProblem, na_dispatcher, neighborhood_attention

pytestmark = pytest.mark.skipif(importlib.util.find_spec('triton') is None, reason='triton is not installed')
DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'

# (spatial, kernel, dilation, heads, d, dv)
CASES = [
    ((11, 9), (3, 5), (2, 1), 2, 8, 8),  # uneven dilation groups along y, partial tiles
    ((6, 7), 3, 2, 1, 12, 12),  # k * d == length along y; head_dim not a power of two
    ((9, 10), (4, 2), (1, 3), 1, 8, 16),  # even kernels, dv != d
    ((5, 13), 5, 1, 1, 4, 4),  # window covers the whole column axis
    ((37,), 7, 2, 2, 8, 8),  # 1-D, several tiles per group
    ((16,), 4, 1, 1, 16, 8),  # 1-D even kernel
]


def _batch(spatial):
    # Interpreter time grows with the program count: batch > 1 only on the (cheap) 1-D cases.
    return 2 if len(spatial) == 1 else 1


def _inputs(spatial, kernel, heads, d, dv, rpb, dtype):
    g = torch.Generator().manual_seed(0)
    make = lambda *s: (torch.randn(*s, generator=g) * 1.5).to(DEVICE, dtype).requires_grad_()
    kernel = (kernel,) * len(spatial) if isinstance(kernel, int) else kernel
    tensors = [make(_batch(spatial), *spatial, heads, d), make(_batch(spatial), *spatial, heads, d),
               make(_batch(spatial), *spatial, heads, dv)]
    if rpb:
        tensors.append(make(heads, *(2 * kk - 1 for kk in kernel)))
    return tensors


def _run(backend, tensors, kernel, dilation, dout):
    q, k, v, *rest = tensors
    out = neighborhood_attention(q, k, v, kernel, dilation, rpb=rest[0] if rest else None, backend=backend)
    return out, torch.autograd.grad(out, tensors, dout)


@pytest.mark.parametrize('spatial,kernel,dilation,heads,d,dv', CASES)
@pytest.mark.parametrize('rpb', [True, False], ids=['rpb', 'no_rpb'])
def test_triton_fp32_matches_reference(spatial, kernel, dilation, heads, d, dv, rpb):
    tensors = _inputs(spatial, kernel, heads, d, dv, rpb, torch.float32)
    dout = torch.randn(_batch(spatial), *spatial, heads, dv, device=DEVICE)
    out, grads = _run('triton', tensors, kernel, dilation, dout)
    ref, ref_grads = _run('reference', tensors, kernel, dilation, dout)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    for name, g, r, atol in zip(('dq', 'dk', 'dv', 'drpb'), grads, ref_grads, (1e-2, 1e-4, 1e-4, 1e-3)):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, r, atol=atol, rtol=1e-4, msg=name)


@pytest.mark.parametrize('dtype,atol', [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)], ids=['fp16', 'bf16'])
@pytest.mark.parametrize('case', [CASES[0], CASES[4]], ids=['2d', '1d'])
def test_triton_half_matches_fp32_reference(case, dtype, atol):
    spatial, kernel, dilation, heads, d, dv = case
    tensors = _inputs(spatial, kernel, heads, d, dv, True, dtype)
    dout = torch.randn(_batch(spatial), *spatial, heads, dv, device=DEVICE).to(dtype)
    out, grads = _run('triton', tensors, kernel, dilation, dout)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    ref_tensors = [t.detach().float().requires_grad_() for t in tensors]
    ref, ref_grads = _run('reference', ref_tensors, kernel, dilation, dout.float())
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=0)
    for name, g, r in zip(('dq', 'dk', 'dv', 'drpb'), grads, ref_grads):
        assert torch.isfinite(g).all(), name
        # d_rpb sums many dS terms: compare relative to its scale.
        tol = atol * (r.abs().max().item() if name == 'drpb' else 4)
        torch.testing.assert_close(g.float(), r, atol=tol, rtol=0, msg=name)


def test_triton_refuses_cpu_without_interpreter(monkeypatch):
    problem = NAProblem(torch.device('cpu'), torch.float32, 1, (8, 8), 2, 8, 8, (3, 3), (1, 1), True, True)
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    assert 'TRITON_INTERPRET=1' in na_dispatcher.explain(problem)['triton']
    q = torch.randn(1, 8, 8, 2, 8)
    with pytest.raises(BackendError, match="'triton'.*TRITON_INTERPRET=1"):
        neighborhood_attention(q, q, q, 3, backend='triton')
    problem3d = NAProblem(torch.device('cuda'), torch.float32, 1, (8, 8, 8), 2, 8, 8, (3,) * 3, (1,) * 3, True, True)
    assert '3-D' in na_dispatcher.explain(problem3d)['triton']
