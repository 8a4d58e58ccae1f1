"""Triton routed attention vs the reference, on CPU through the Triton interpreter (tiny shapes) or on a GPU."""
import pytest
import torch

from hiervit.kernels import BackendError
from hiervit.kernels.routed import routed_attention, routed_dispatcher, routed_problem

pytest.importorskip('triton')

from hiervit.kernels.routed.triton import reverse_index  # noqa: E402

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'

CASES = {
    # name: (B, H, Nq, Tq, Nk, Tk, d, dv, topk, per_head, duplicate)
    'topk1': (1, 2, 3, 5, 4, 3, 8, 6, 1, False, False),
    'tq_ne_tk_dv_ne_d': (2, 1, 3, 4, 5, 7, 5, 9, 2, False, False),
    'per_head_duplicates': (1, 2, 3, 2, 5, 4, 8, 8, 3, True, True),
    'topk_all': (1, 1, 2, 3, 3, 5, 6, 4, 3, False, False),
    'tile_16_plus_1': (1, 1, 2, 17, 3, 16, 16, 17, 2, True, False),
}


def make_inputs(B, H, Nq, Tq, Nk, Tk, d, dv, topk, per_head, duplicate, dtype):
    g = torch.Generator().manual_seed(0)
    make = lambda *s: torch.randn(*s, generator=g).to(DEVICE, dtype).requires_grad_()
    q, k, v = make(B, H, Nq, Tq, d), make(B, H, Nk, Tk, d), make(B, H, Nk, Tk, dv)
    lead = (B, H, Nq) if per_head else (B, Nq)
    idx = torch.rand(*lead, Nk, generator=g).argsort(-1)[..., :topk]
    if duplicate:
        idx[..., 0, -1] = idx[..., 0, 0]
    return q, k, v, idx.to(DEVICE)


def grads(backend, q, k, v, idx, dout):
    out = routed_attention(q, k, v, idx, scale=0.35, backend=backend)
    return (out,) + torch.autograd.grad(out, (q, k, v), dout)


@pytest.mark.parametrize('case', list(CASES))
def test_triton_fp32_matches_reference(case):
    q, k, v, idx = make_inputs(*CASES[case], dtype=torch.float32)
    dout = torch.randn(*q.shape[:4], v.shape[-1], device=DEVICE)
    got, want = grads('triton', q, k, v, idx, dout), grads('reference', q, k, v, idx, dout)
    for name, a, b in zip(('out', 'dq', 'dk', 'dv'), got, want):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=lambda m: f'{name}: {m}')


def test_triton_multi_tile_blocks(monkeypatch):
    # blocks larger than one token tile: 3 query tiles and 2 key tiles of 16 per block, ragged at the ends
    import hiervit.kernels.routed.triton as tr
    monkeypatch.setattr(tr, 'MAX_TOKEN_TILE', 16)
    q, k, v, idx = make_inputs(1, 1, 2, 40, 3, 20, 16, 8, 2, False, True, dtype=torch.float32)
    dout = torch.randn(*q.shape[:4], v.shape[-1], device=DEVICE)
    for name, a, b in zip(('out', 'dq', 'dk', 'dv'), grads('triton', q, k, v, idx, dout),
                          grads('reference', q, k, v, idx, dout)):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=lambda m: f'{name}: {m}')


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_triton_half_precision(dtype):
    q, k, v, idx = make_inputs(*CASES['per_head_duplicates'], dtype=dtype)
    dout = torch.randn(*q.shape[:4], v.shape[-1], device=DEVICE, dtype=dtype)
    got = grads('triton', q, k, v, idx, dout)
    want = grads('reference', *(t.detach().float().requires_grad_() for t in (q, k, v)), idx, dout.float())
    for name, a, b in zip(('out', 'dq', 'dk', 'dv'), got, want):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a.float(), b, atol=3e-2, rtol=3e-2, msg=lambda m: f'{name}: {m}')


def test_reverse_index():
    idx = torch.tensor([[[[2, 0], [2, 2], [1, 2]]]])  # B=H=1, Nq=3, topk=2; block 2 listed twice by query block 1
    offsets, qblocks = reverse_index(idx, k_blocks=4)
    assert offsets.tolist() == [0, 1, 2, 6, 6]
    assert qblocks.tolist() == [0, 2, 0, 1, 1, 2]


def test_triton_refuses_cpu_without_interpreter(monkeypatch):
    q, k, v, idx = (t.cpu() for t in make_inputs(*CASES['topk1'], dtype=torch.float32))
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    assert 'TRITON_INTERPRET=1' in routed_dispatcher.explain(routed_problem(q, k, v, idx))['triton']
    with pytest.raises(BackendError, match='TRITON_INTERPRET=1'):
        routed_attention(q, k, v, idx, backend='triton')
    with pytest.raises(BackendError, match='float64'):
        monkeypatch.setenv('TRITON_INTERPRET', '1')
        routed_attention(q.double(), k.double(), v.double(), idx, backend='triton')
