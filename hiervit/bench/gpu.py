"""`python -m hiervit.bench gpu`: the Triton backends on a CUDA GPU, checked and timed.

1. Accuracy: every op's `triton` backend against its `reference` (in fp32, from the same rounded inputs) at the
   registered models' shapes, in fp32, fp16 and bf16: the largest error of the output and of every gradient, relative
   to the magnitude of the reference tensor.
2. Speed: `bench op` on CUDA for each op and dtype, which times every hiervit backend that accepts the call beside
   the installed GPU peers (NATTEN, FlexAttention eager and compiled, the gathered PyTorch baseline).

It needs a CUDA device and refuses to run without one (`require_cuda`).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch

DTYPES = ('float32', 'float16', 'bfloat16')

# (label, spatial, kernel, dilation, heads, head dim): NAT/DiNAT-T stage 1 and 3 at 224 px (head dim 32, rpb).
NA_SHAPES = [('nat stage1', (56, 56), 7, 1, 2, 32), ('dinat stage1', (56, 56), 7, 8, 2, 32),
             ('nat stage3', (14, 14), 7, 1, 8, 32), ('1-D', (500,), 13, 2, 4, 64)]


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def _compare(fn, tensors: List[torch.Tensor], dtype: torch.dtype, names: List[str]) -> Dict[str, float]:
    """Relative errors of fn(triton) in `dtype` against fn(reference) in fp32, output and gradients."""
    low = [t.to(dtype).requires_grad_(t.is_floating_point()) for t in tensors]
    ref = [t.to(dtype).float().requires_grad_(t.is_floating_point()) for t in tensors]  # the same rounded inputs
    out = fn(low, 'triton')
    want = fn(ref, 'reference')
    dout = torch.randn_like(want)
    grads = torch.autograd.grad(out, [t for t in low if t.requires_grad], dout.to(dtype))
    want_grads = torch.autograd.grad(want, [t for t in ref if t.requires_grad], dout)
    return {n: _rel(a, b) for n, a, b in zip(names, (out, *grads), (want, *want_grads))}


def require_cuda() -> torch.device:
    if not torch.cuda.is_available():
        raise SystemExit('bench gpu: no CUDA device (torch.cuda.is_available() is False); it checks and times the '
                         'Triton kernels on a GPU. On CPU use `python -m hiervit.bench op ...`.')
    return torch.device('cuda')


def _routed_shapes() -> List[Tuple]:
    from .ops import BIFORMER_T_STAGES
    return [(f'biformer-t stage{stage}', n_win * n_win, (side // n_win) ** 2, topk, heads, dim // heads)
            for stage, (side, n_win, dim, heads, topk) in BIFORMER_T_STAGES.items()]


def accuracy_rows(device: torch.device, na_shapes: Sequence[Tuple] = NA_SHAPES,
                  routed_shapes: Optional[Sequence[Tuple]] = None) -> List[Dict]:
    """One row per op, shape and dtype with the relative error of the output and each gradient."""
    from hiervit.kernels.neighborhood import neighborhood_attention
    from hiervit.kernels.routed import routed_attention
    rows = []
    g = torch.Generator(device=device).manual_seed(0)
    for label, spatial, kernel, dilation, heads, d in na_shapes:
        shape = (2, *spatial, heads, d)
        tensors = [torch.randn(*shape, device=device, generator=g) for _ in range(3)]
        tensors.append(torch.randn(heads, *(2 * kernel - 1,) * len(spatial), device=device, generator=g) * 0.1)
        fn = lambda t, b: neighborhood_attention(t[0], t[1], t[2], kernel, dilation, rpb=t[3], backend=b)
        for dtype in DTYPES:
            row = dict(op='neighborhood', shape=f'{label} {spatial} k={kernel} d={dilation} {heads}x{d} rpb',
                       dtype=dtype)
            row.update(_compare(fn, tensors, getattr(torch, dtype), ['out', 'dq', 'dk', 'dv', 'drpb']))
            rows.append(row)
    for label, regions, tokens, topk, heads, d in (_routed_shapes() if routed_shapes is None else routed_shapes):
        tensors = [torch.randn(2, heads, regions, tokens, d, device=device, generator=g) for _ in range(3)]
        idx = torch.rand(2, regions, regions, device=device, generator=g).argsort(-1)[..., :topk]
        fn = lambda t, b: routed_attention(t[0], t[1], t[2], idx, backend=b)
        for dtype in DTYPES:
            row = dict(op='routed', shape=f'{label} {regions}x{tokens} topk={topk} {heads}x{d}', dtype=dtype)
            row.update(_compare(fn, tensors, getattr(torch, dtype), ['out', 'dq', 'dk', 'dv']))
            rows.append(row)
    return rows
