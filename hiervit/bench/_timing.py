"""Timing, GEMM-rate and peak-memory helpers shared by the benchmark commands."""
import time
from typing import Callable, Dict, List

import torch


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1,
              min_time: float = 0.0) -> float:
    """Best wall time of `fn` in seconds over `repeats` runs after `warmup` runs (best-of-N resists a noisy host)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: List[float] = []
    start_all = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start_all < min_time:
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_gflops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """Achieved GFLOP/s of an n x n x n matmul measured in this process: the yardstick for '% of GEMM'."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = best_time(lambda: a @ b, device, repeats=repeats, warmup=1)
    return 2 * n ** 3 / t / 1e9


class PeakMemory:
    """Peak memory of the tensors allocated inside the context (beyond what was live before), in MiB.

    CUDA: the caching allocator's peak. CPU: torch keeps no CPU peak counter, so the context runs under the profiler's
    memory timeline (tensor create/destroy events) and replays it; this costs time, so time runs separately.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.mib = float('nan')

    def __enter__(self) -> 'PeakMemory':
        if self.device.type == 'cuda':
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            from torch.profiler import ProfilerActivity, profile
            # The memory timeline needs shapes, memory and stacks recorded.
            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                                 with_stack=True)
            self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == 'cuda':
            synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2 ** 20
            return
        self._prof.__exit__(*exc)
        from torch.profiler._memory_profiler import Action  # private, but the only CPU allocation timeline in torch
        live = peak = 0
        for _, action, _, size in self._prof._memory_profile().timeline:
            if action == Action.CREATE:
                live += size
            elif action == Action.DESTROY:
                live -= size
            peak = max(peak, live)
        self.mib = peak / 2 ** 20


def format_table(rows: List[Dict[str, object]], columns: List[str]) -> str:
    """Plain-text table (also valid Markdown) of `rows` restricted to `columns`."""
    def cell(v: object) -> str:
        if isinstance(v, float):
            if v != v:
                return '-'
            return f'{v:.1f}' if abs(v) >= 10 else f'{v:.2f}'
        return '-' if v is None else str(v)

    table = [[c for c in columns]] + [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    lines = ['| ' + ' | '.join(v.ljust(w) for v, w in zip(row, widths)) + ' |' for row in table]
    lines.insert(1, '|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    return '\n'.join(lines)
