"""Reference vs fast backends of routed attention at BiFormer-T's routed stage shapes (224 px input).

    python -m hiervit.kernels.routed.bench [--batch 8] [--repeats 9] [--threads 1] [--backends reference cpu]

Time: best of `repeats` wall-clock runs; the backends take turns within every repeat, so a load burst on the shared
host hits all of them alike. An fp32 GEMM measured in the same process gives the yardstick. Memory: peak of the
running sum of the CPU allocator's allocation and free events recorded by `torch.profiler(profile_memory=True)`
during one call, i.e. the extra tensor memory the call needs on top of its inputs (fwd+bwd includes the gradients
of q, k, v, the same for every backend). The routing is BiFormer's: top-k of region-mean affinities.
"""
import argparse
import time
from typing import Callable, Dict, List

import torch
from torch.profiler import ProfilerActivity, profile

from hiervit.kernels.routed import routed_attention, routed_flops

# (map side, regions per side, channels, heads, topk) of BiFormer-T's three routed stages at 224 px
STAGES = {1: (56, 7, 64, 2, 1), 2: (28, 7, 128, 4, 4), 3: (14, 7, 256, 8, 16)}


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def peak_mib(fn: Callable[[], object]) -> float:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == '[memory]')
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2 ** 20


def stage_inputs(stage: int, batch: int):
    side, n_win, dim, heads, topk = STAGES[stage]
    regions, tokens, d = n_win * n_win, (side // n_win) ** 2, dim // heads
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, regions, tokens, d, generator=g).requires_grad_() for _ in range(3))
    affinity = q.detach().mean((1, 3)) @ k.detach().mean((1, 3)).transpose(-1, -2)  # [B, regions, regions]
    return q, k, v, affinity.topk(topk, dim=-1).indices, dim ** -0.5


def run(batch: int, repeats: int, backends: List[str]) -> List[Dict]:
    a = torch.randn(2048, 2048)
    gemm = 2 * 2048 ** 3 / best_ms(lambda: a @ a, 5) / 1e6
    print(f'in-process fp32 GEMM 2048^3: {gemm:.1f} GFLOP/s, threads={torch.get_num_threads()}')
    rows = []
    for stage in STAGES:
        q, k, v, idx, scale = stage_inputs(stage, batch)
        flops = routed_flops(q.shape, k.shape, v.shape, idx.shape)
        dout = torch.randn(*q.shape[:4], v.shape[-1])

        def fwd(name: str):
            return routed_attention(q, k, v, idx, scale=scale, backend=name)

        def fwd_bwd(name: str):
            # q/k/v.grad are reset outside the measured call, so it allocates (and counts) fresh gradients
            fwd(name).backward(dout)

        def reset():
            q.grad = k.grad = v.grad = None

        best = {name: [float('inf'), float('inf')] for name in backends}
        for _ in range(repeats):
            for name in backends:
                best[name][0] = min(best[name][0], best_ms(lambda: fwd(name), 1))
                reset()
                fwd_bwd(name)
                reset()
                t0 = time.perf_counter()
                fwd_bwd(name)
                best[name][1] = min(best[name][1], 1e3 * (time.perf_counter() - t0))
        for name in backends:
            fwd_mib = peak_mib(lambda: fwd(name))
            reset()
            row = dict(stage=stage, backend=name, fwd_ms=best[name][0], fwdbwd_ms=best[name][1], fwd_mib=fwd_mib,
                       fwdbwd_mib=peak_mib(lambda: fwd_bwd(name)))
            row['fwd_gflops'] = flops / row['fwd_ms'] / 1e6
            row['fwdbwd_gflops'] = 3 * flops / row['fwdbwd_ms'] / 1e6
            rows.append(row)
            print(' '.join(f'{k}={v:.2f}' if isinstance(v, float) else f'{k}={v}' for k, v in row.items()), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--repeats', type=int, default=9)
    parser.add_argument('--threads', type=int, default=None, help='intra-op threads (default: torch default)')
    parser.add_argument('--backends', nargs='+', default=['reference', 'cpu'])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args.batch, args.repeats, args.backends)


if __name__ == '__main__':
    main()
