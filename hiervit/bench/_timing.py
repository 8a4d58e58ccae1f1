"""Timing, GEMM-rate and peak-memory helpers shared by the benchmark commands."""
import resource
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
    """Peak extra memory of the code run inside the context, in MiB.

    CUDA: the caching allocator's peak. CPU: growth of the process's maximum resident set size, which only makes sense
    in a process that runs one measured thing (the benchmark's worker processes do exactly that).
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
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == 'cuda':
            synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2 ** 20
        else:
            self.mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._base) / 1024


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
