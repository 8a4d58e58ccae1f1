"""Seeded randomized sweeps: every fast backend against the reference, outputs AND gradients, and the reference
against NATTEN itself.

Each case is drawn from its own seed (`random.Random(seed)` for the case, `torch.Generator` seeded with it for the
tensors), so a failure message names the case and the seed that reproduces it alone. Shapes are tiny and many cases
run in one test (the per-call overhead dominates; one intra-op thread is much faster at these sizes).

Errors are measured relative to the magnitude of the tensor they are in, `max|got - want| / max|want|` (for the
gradients through the scores with a floor, `score_grad_floor`). The bounds
are a small factor above the largest error measured over the whole sweep (values in the comments: seeds as written,
torch 2.14.1 on x86 CPU).
"""
import random
from typing import Dict, List, Optional, Sequence

import pytest
import torch

from hiervit.kernels.neighborhood import neighborhood_attention
from hiervit.kernels.neighborhood import reference as na_reference
from hiervit.kernels.routed import routed_attention

NA_NAMES = ('out', 'dq', 'dk', 'dv', 'drpb')
ROUTED_NAMES = ('out', 'dq', 'dk', 'dv')


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_err(got: torch.Tensor, want: torch.Tensor, floor: float = 0.0) -> float:
    """max|got - want| / max(max|want|, floor)."""
    want = want.double()
    return ((got.double() - want).abs().max() / max(want.abs().max().item(), floor, 1e-30)).item()


def score_grad_floor(dout: torch.Tensor, v: torch.Tensor) -> float:
    """Magnitude floor for the gradients that flow through the scores (dq, dk, d_rpb): they are sums of
    dS = P * (dP - rowsum(P * dP)) with dP = dO . v, whose rounding error scales with |dP| even where dS cancels
    to exactly zero (a query that sees one key has a constant softmax: dq = dk = 0 in exact arithmetic)."""
    return 0.1 * dout.abs().max().item() * v.abs().max().item()


class Worst:
    """Largest relative error per tensor name over a sweep, with the seed where it occurred."""

    def __init__(self, bounds: Dict[str, float]):
        self.bounds, self.worst = bounds, {}

    def check(self, seed: int, case: dict, names: Sequence[str], got: Sequence, want: Sequence,
              floor: float = 0.0) -> None:
        for name, a, b in zip(names, got, want):
            if b is None:
                continue
            assert a.shape == b.shape and torch.isfinite(a).all(), f'{name} seed={seed} case={case}'
            err = rel_err(a, b, floor if name in ('dq', 'dk', 'drpb') else 0.0)
            assert err <= self.bounds[name], (f'{name}: relative error {err:.3g} > {self.bounds[name]:.3g} at '
                                              f'seed={seed} case={case}')
            if err > self.worst.get(name, (0.0,))[0]:
                self.worst[name] = (err, seed)

    def __repr__(self) -> str:
        return ', '.join(f'{n} {e:.2g} (seed {s})' for n, (e, s) in self.worst.items())


# ---------------------------------------------------------------------------------------------------------------------
# neighborhood


def na_case(rng: random.Random, rank_weights=(4, 5, 1), max_len=(12, 12, 6), min_kernel=1, d_choices=None,
            rpb_p=0.7) -> dict:
    """Odd and non-square axes, border-heavy windows (kernel near the axis length), k * d == L, dilation, even and
    size-1 kernels, batch and heads > 1, d != dv."""
    rank = rng.choices([1, 2, 3], rank_weights)[0]
    spatial, kernel, dilation = [], [], []
    for _ in range(rank):
        length = rng.randint(min_kernel, max_len[rank - 1])
        k = rng.choice([min_kernel, length, rng.randint(min_kernel, length), rng.randint(min_kernel, length)])
        dil = rng.randint(1, length // k)
        if rng.random() < 0.25:  # k * d equal to the axis
            length = k * dil
        spatial.append(length)
        kernel.append(k)
        dilation.append(dil)
    d = rng.choice(d_choices) if d_choices else rng.randint(1, 9)
    return dict(spatial=spatial, kernel=kernel, dilation=dilation, batch=rng.randint(1, 3), heads=rng.randint(1, 3),
                d=d, dv=d if d_choices else rng.randint(1, 9), rpb=rng.random() < rpb_p,
                scale=rng.choice([None, round(rng.uniform(0.1, 2.0), 3)]), mag=rng.choice([0.5, 1.0, 3.0]))


def na_tensors(case: dict, seed: int, dtype=torch.float32, grad=True) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lead = (case['batch'], *case['spatial'], case['heads'])
    rand = lambda *s, m=1.0: (torch.randn(*s, generator=g) * m).to(dtype)
    tensors = [rand(*lead, case['d'], m=case['mag']), rand(*lead, case['d'], m=case['mag']), rand(*lead, case['dv']),
               rand(*lead, case['dv'])]  # q, k, v, dout
    if case['rpb']:
        tensors.append(rand(case['heads'], *(2 * k - 1 for k in case['kernel']), m=case['mag']))
    return [t.requires_grad_(grad and i != 3) for i, t in enumerate(tensors)]


def na_run(backend: str, case: dict, tensors: List[torch.Tensor]) -> List[Optional[torch.Tensor]]:
    q, k, v, dout, *rpb = tensors
    out = neighborhood_attention(q, k, v, case['kernel'], case['dilation'], rpb=rpb[0] if rpb else None,
                                 scale=case['scale'], backend=backend)
    inputs = [q, k, v] + rpb
    return [out, *torch.autograd.grad(out, inputs, dout)] + ([] if rpb else [None])


# fp32 bounds; measured maxima over the 1000 cases: out 7.3e-6, dq 6.1e-6, dk 6.2e-6, dv 2.1e-6, drpb 6.8e-6
NA_CPU_BOUNDS = dict(out=2e-5, dq=2e-5, dk=2e-5, dv=1e-5, drpb=2e-5)


@pytest.mark.parametrize('first', range(0, 1000, 250))
def test_na_cpu_matches_reference_sweep(first, one_thread):
    worst = Worst(NA_CPU_BOUNDS)
    for seed in range(first, first + 250):
        case = na_case(random.Random(seed))
        tensors = na_tensors(case, seed)
        worst.check(seed, case, NA_NAMES, na_run('cpu', case, tensors), na_run('reference', case, tensors),
                    score_grad_floor(tensors[3], tensors[2]))
    print(f'neighborhood cpu vs reference, seeds {first}..{first + 249}: {worst}')


# reference vs NATTEN 0.21.7 on CPU: its FlexAttention backend (`flex-fna`, the only one without libnatten) runs
# forward only, without rpb, for power-of-two head dims >= 8 and kernels >= 2. Besides the output, the
# log-sum-exp NATTEN returns is compared with the reference's: the logits themselves agree, not only their softmax.
# Measured maxima over the 200 cases: out 7.9e-6, lse 3.0e-7 (relative to the tensor's magnitude).
NATTEN_BOUNDS = dict(out=2.5e-5, lse=1e-6)


@pytest.mark.parametrize('first', range(0, 200, 100))
def test_reference_matches_natten_sweep(first, one_thread):
    import natten
    worst = Worst(NATTEN_BOUNDS)
    for seed in range(10_000 + first, 10_000 + first + 100):
        case = na_case(random.Random(seed), rank_weights=(4, 5, 1), max_len=(16, 12, 7), min_kernel=2,
                       d_choices=(8, 16), rpb_p=0.0)
        q, k, v, _ = na_tensors(case, seed, grad=False)
        scale = case['scale'] if case['scale'] is not None else case['d'] ** -0.5
        fn = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(case['spatial'])]
        want, want_lse = fn(q, k, v, tuple(case['kernel']), dilation=tuple(case['dilation']), scale=scale,
                            backend='flex-fna', return_lse=True)
        got = neighborhood_attention(q, k, v, case['kernel'], case['dilation'], scale=scale, backend='reference')
        _, lse = na_reference.forward(q, k, v, None, case['kernel'], case['dilation'], scale)
        worst.check(seed, case, ('out', 'lse'), (got, lse), (want, want_lse.float()))
    print(f'neighborhood reference vs NATTEN flex-fna, seeds {10_000 + first}..: {worst}')


# ---------------------------------------------------------------------------------------------------------------------
# routed


def routed_case(rng: random.Random, max_blocks=7, max_tokens=6, max_dim=9) -> dict:
    """Varied blocks, tokens, topk (1 to all), per-head or shared routing, repeated blocks, d != dv, B and heads > 1."""
    nk = rng.randint(1, max_blocks)
    return dict(batch=rng.randint(1, 3), heads=rng.randint(1, 3), nq=rng.randint(1, max_blocks),
                tq=rng.randint(1, max_tokens), nk=nk, tk=rng.randint(1, max_tokens),
                topk=rng.choice([1, nk, rng.randint(1, nk)]), d=rng.randint(1, max_dim), dv=rng.randint(1, max_dim),
                per_head=rng.random() < 0.5, repeats=rng.random() < 0.2,
                scale=rng.choice([None, round(rng.uniform(0.1, 2.0), 3)]), mag=rng.choice([0.5, 1.0, 3.0]))


def routed_tensors(case: dict, seed: int, dtype=torch.float32) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B, H = case['batch'], case['heads']
    rand = lambda *s, m=1.0: (torch.randn(*s, generator=g) * m).to(dtype)
    q = rand(B, H, case['nq'], case['tq'], case['d'], m=case['mag']).requires_grad_()
    k = rand(B, H, case['nk'], case['tk'], case['d'], m=case['mag']).requires_grad_()
    v = rand(B, H, case['nk'], case['tk'], case['dv']).requires_grad_()
    dout = rand(B, H, case['nq'], case['tq'], case['dv'])
    lead = (B, H, case['nq']) if case['per_head'] else (B, case['nq'])
    if case['repeats']:  # blocks may be listed more than once
        idx = torch.randint(0, case['nk'], (*lead, case['topk']), generator=g)
    else:
        idx = torch.rand(*lead, case['nk'], generator=g).argsort(-1)[..., :case['topk']]
    return [q, k, v, dout, idx]


def routed_run(backend: str, case: dict, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    q, k, v, dout, idx = tensors
    out = routed_attention(q, k, v, idx, scale=case['scale'], backend=backend)
    return [out, *torch.autograd.grad(out, (q, k, v), dout)]


# fp32 bounds; measured maxima over the 1000 cases: out 3.2e-6, dq 9.9e-6, dk 1.4e-5, dv 2.8e-6
ROUTED_CPU_BOUNDS = dict(out=1e-5, dq=3e-5, dk=4e-5, dv=1e-5)


@pytest.mark.parametrize('first', range(0, 1000, 250))
def test_routed_cpu_matches_reference_sweep(first, one_thread):
    from hiervit.kernels.routed.cpu import use_dense
    worst, strategies = Worst(ROUTED_CPU_BOUNDS), set()
    for seed in range(first, first + 250):
        case = routed_case(random.Random(seed))
        tensors = routed_tensors(case, seed)
        strategies.add(use_dense(case['nk'], case['topk']))
        worst.check(seed, case, ROUTED_NAMES, routed_run('cpu', case, tensors), routed_run('reference', case, tensors),
                    score_grad_floor(tensors[3], tensors[2]))
    assert strategies == {True, False}  # both cpu strategies (gathered blocks, block-masked dense) were swept
    print(f'routed cpu vs reference, seeds {first}..{first + 249}: {worst}')


# cpp: the same 1000 cases, and 150 wider ones (up to 40 tokens per block and head dims up to 70) so that the
# register-blocked products see rows and columns past their 8 x 64 blocks and masked partial vectors.
# fp32 bounds; measured maxima over the 1150 cases: out 2.3e-6, dq 1.0e-5, dk 1.8e-5, dv 6.0e-6 (all in wide cases)
ROUTED_CPP_BOUNDS = dict(out=1e-5, dq=3e-5, dk=5e-5, dv=2e-5)


@pytest.mark.parametrize('first', [*range(0, 1000, 500), 'wide'])
def test_routed_cpp_matches_reference_sweep(first, one_thread):
    from hiervit.kernels.routed import cpp
    if cpp.availability() is not None:
        pytest.skip(f'cpp backend unavailable here: {cpp.availability()}')
    worst = Worst(ROUTED_CPP_BOUNDS)
    seeds = range(40_000, 40_150) if first == 'wide' else range(first, first + 500)
    for seed in seeds:
        rng = random.Random(seed)
        case = routed_case(rng, max_blocks=5, max_tokens=40, max_dim=70) if first == 'wide' else routed_case(rng)
        tensors = routed_tensors(case, seed)
        worst.check(seed, case, ROUTED_NAMES, routed_run('cpp', case, tensors), routed_run('reference', case, tensors),
                    score_grad_floor(tensors[3], tensors[2]))
    print(f'routed cpp vs reference, seeds {seeds.start}..{seeds.stop - 1}: {worst}')


# ---------------------------------------------------------------------------------------------------------------------
# Triton, through the interpreter (conftest.py sets TRITON_INTERPRET=1 without a GPU): few programs per call, but
# several query tiles per dilation group, partial tiles, and the chunk loops (forward/dQ key columns in chunks of BN,
# dK/dV query columns in chunks of BQ) iterating more than once.


def triton_na_case(rng: random.Random) -> dict:
    """1-D and 2-D only (the triton backend's range); wide axes so that a group holds several query tiles (4 x 8 in
    2-D, 1 x 16 or 1 x 32 in 1-D); kernels up to 12 columns so the union of a tile's windows (TX + kw - 1) exceeds a
    16-column chunk, and kw > TX, where the dK/dV query range of the second tile is wider than one chunk."""
    rank = rng.choice([1, 2])
    if rank == 1:
        length = rng.randint(17, 44)
        kernel = [rng.choice([1, 2, rng.randint(3, 18), rng.randint(17, min(length, 33))])]
        dilation = [rng.randint(1, max(1, min(3, length // kernel[0])))]
        spatial = [length]
    else:
        spatial = [rng.randint(1, 4), rng.randint(9, 22)]
        kernel = [rng.randint(1, spatial[0]), rng.choice([1, rng.randint(2, 8), rng.randint(9, min(12, spatial[1]))])]
        dilation = [rng.randint(1, spatial[0] // kernel[0]), rng.randint(1, max(1, min(2, spatial[1] // kernel[1])))]
    return dict(spatial=spatial, kernel=kernel, dilation=dilation, batch=rng.randint(1, 2), heads=rng.randint(1, 2),
                d=rng.choice([4, 8, 12, 16]), dv=rng.choice([4, 8]), rpb=rng.random() < 0.6,
                scale=rng.choice([None, 0.5]), mag=rng.choice([0.5, 1.0, 2.0]))


# Measured maxima over the 100 cases (fp32 dots in the interpreter): out 1.0e-6, dq 1.8e-6, dk 2.4e-6, dv 1.2e-6,
# drpb 3.4e-6
NA_TRITON_BOUNDS = dict(out=4e-6, dq=6e-6, dk=8e-6, dv=4e-6, drpb=1e-5)


@pytest.mark.triton
@pytest.mark.parametrize('first', range(0, 100, 25))
def test_na_triton_matches_reference_sweep(first, one_thread, monkeypatch):
    import hiervit.kernels.neighborhood.triton as tr
    if first % 50 == 0:  # half of the cases with the smallest chunk, so that the chunk loops iterate more often
        monkeypatch.setattr(tr, '_MAX_CHUNK', 16)
    worst = Worst(NA_TRITON_BOUNDS)
    for seed in range(20_000 + first, 20_000 + first + 25):
        case = triton_na_case(random.Random(seed))
        tensors = na_tensors(case, seed)
        worst.check(seed, case, NA_NAMES, na_run('triton', case, tensors), na_run('reference', case, tensors),
                    score_grad_floor(tensors[3], tensors[2]))
    print(f'neighborhood triton (interpreter) vs reference, seeds {20_000 + first}..: {worst}')


# Measured maxima over the 50 cases (fp32 dots in the interpreter): out 2.6e-6, dq 1.2e-5, dk 7.8e-6, dv 2.9e-6
ROUTED_TRITON_BOUNDS = dict(out=1e-5, dq=4e-5, dk=3e-5, dv=1e-5)


@pytest.mark.triton
@pytest.mark.parametrize('first', range(50, 100, 25))
def test_routed_triton_matches_reference_sweep(first, one_thread, monkeypatch):
    import hiervit.kernels.routed.triton as tr
    monkeypatch.setattr(tr, 'MAX_TOKEN_TILE', 16)  # blocks of up to 40 tokens span several 16-token tiles
    worst = Worst(ROUTED_TRITON_BOUNDS)
    for seed in range(30_000 + first, 30_000 + first + 25):
        case = routed_case(random.Random(seed), max_blocks=4, max_tokens=40, max_dim=16)
        tensors = routed_tensors(case, seed)
        worst.check(seed, case, ROUTED_NAMES, routed_run('triton', case, tensors),
                    routed_run('reference', case, tensors), score_grad_floor(tensors[3], tensors[2]))
    print(f'routed triton (interpreter) vs reference, seeds {30_000 + first}..: {worst}')
