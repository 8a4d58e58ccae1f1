"""Triton linear attention vs the reference, on CPU through the Triton interpreter (tiny shapes) or on a GPU."""
import pytest
import torch

from hiervit.kernels import BackendError
from hiervit.kernels.linear import linear_attention, linear_dispatcher, linear_problem

pytest.importorskip('triton')

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'

CASES = {
    # name: (B, H, N, d, dv, normalizer, temperature, fused)
    'clamp_temperature': (2, 3, 37, 8, 8, 'clamp', True, False),
    'mean_d_ne_dv': (1, 2, 45, 5, 9, 'mean', False, False),
    'sum_fused_views': (2, 2, 33, 16, 16, 'sum', False, True),
    'injective_signed': (1, 3, 20, 8, 8, 'injective', True, False),
    'none_one_token': (3, 1, 1, 4, 3, 'none', True, False),
    'clamp_many_splits': (1, 1, 300, 17, 16, 'clamp', True, False),  # > 1 token split, ragged tile
}


def make_inputs(B, H, N, d, dv, normalizer, temperature, fused, dtype):
    g = torch.Generator().manual_seed(0)
    signed = normalizer in ('none', 'injective')
    if fused:
        qkv = torch.randn(B, N, 3, H, d, generator=g)
        if not signed:
            qkv[:, :, :2] = qkv[:, :, :2].abs()
        qkv = qkv.to(DEVICE, dtype).requires_grad_()
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # strided [B, H, N, d] views
        leaves = [qkv]
    else:
        q, k = (torch.randn(B, H, N, d, generator=g) for _ in range(2))
        if not signed:
            q, k = q.abs(), k.abs()
        v = torch.randn(B, H, N, dv, generator=g)
        q, k, v = (x.to(DEVICE, dtype).requires_grad_() for x in (q, k, v))
        leaves = [q, k, v]
    t = None
    if temperature:
        t = (torch.rand(H, 1, 1, generator=g) + 0.5).to(DEVICE).requires_grad_()  # fp32 parameter
        leaves.append(t)
    r = (q.detach().float() @ k.detach().float().sum(-2).unsqueeze(-1)).flatten().sort().values
    clamp_min = (r[len(r) // 2 - 1] + r[len(r) // 2]).item() / 2 if len(r) > 1 else r.item() * 1.5
    return q, k, v, t, leaves, clamp_min


def grads(backend, q, k, v, t, leaves, normalizer, clamp_min, dout):
    out = linear_attention(q, k, v, normalizer, t, clamp_min=clamp_min, backend=backend)
    return [out] + list(torch.autograd.grad(out, leaves, dout))


@pytest.mark.parametrize('case', list(CASES))
def test_triton_fp32_matches_reference(case):
    B, H, N, d, dv, normalizer, temperature, fused = CASES[case]
    q, k, v, t, leaves, c = make_inputs(*CASES[case], dtype=torch.float32)
    dout = torch.randn(B, H, N, dv, device=DEVICE)
    got = grads('triton', q, k, v, t, leaves, normalizer, c, dout)
    want = grads('reference', q, k, v, t, leaves, normalizer, c, dout)
    for i, (a, b) in enumerate(zip(got, want)):
        assert torch.isfinite(a).all(), i
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5, msg=lambda m: f'output {i}: {m}')


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('case', ['clamp_temperature', 'injective_signed'])
def test_triton_half_precision(dtype, case):
    B, H, N, d, dv, normalizer, temperature, fused = CASES[case]
    q, k, v, t, leaves, c = make_inputs(*CASES[case], dtype=dtype)
    dout = torch.randn(B, H, N, dv, device=DEVICE, dtype=dtype)
    got = grads('triton', q, k, v, t, leaves, normalizer, c, dout)
    ref = [x.detach().float().requires_grad_() for x in (q, k, v)]
    want = grads('reference', *ref, t, ref + ([t] if t is not None else []), normalizer, c, dout.float())
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == (dtype if i < 4 else torch.float32), i
        torch.testing.assert_close(a.float(), b, atol=3e-2, rtol=3e-2, msg=lambda m: f'output {i}: {m}')


def test_triton_refuses(monkeypatch):
    q, k, v, *_ = make_inputs(*CASES['mean_d_ne_dv'], dtype=torch.float32)
    q, k, v = (x.detach().cpu() for x in (q, k, v))
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    assert 'TRITON_INTERPRET=1' in linear_dispatcher.explain(linear_problem(q, k, v))['triton']
    with pytest.raises(BackendError, match='TRITON_INTERPRET=1'):
        linear_attention(q, k, v, backend='triton')
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    with pytest.raises(BackendError, match='float64'):
        linear_attention(q.double(), k.double(), v.double(), backend='triton')
    wide = torch.rand(1, 1, 4, 130)
    with pytest.raises(BackendError, match='exceed 128'):
        linear_attention(wide, wide, wide, backend='triton')
