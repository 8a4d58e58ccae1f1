"""Model benchmark: throughput, latency, parameters and FLOPs of hiervit models beside any timm model.

All models are built in one process and timed in interleaved rounds (model A, B, C, then A, B, C again, ...), each
keeping its best time, so load that comes and goes on a shared machine hits every model alike and their ratios hold.
"""
import time
from typing import Dict, List

import torch
from torch.utils.flop_counter import FlopCounterMode

import timm

__all__ = ['count_flops', 'bench_models']


def count_flops(model: torch.nn.Module, img_size: int, in_chans: int = 3) -> float:
    """Forward FLOPs of one image (torch's counter: 2 per multiply-add; our ops register their formulas)."""
    x = torch.randn(1, in_chans, img_size, img_size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return float(counter.get_total_flops())


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_models(names: List[str], batch: int, img_size: int, repeats: int, threads: int = 0,
                 train_batch: int = 0) -> List[Dict]:
    """One row per model: img/s at `batch`, batch-1 latency, params, GMACs (the papers' 'FLOPs'), and with
    `train_batch` the training img/s (forward, backward and an AdamW step on a cross-entropy loss)."""
    if threads:
        torch.set_num_threads(threads)
    rows, cases = [], []
    for name in names:
        model = timm.create_model(name, pretrained=False).eval()
        size = img_size or model.pretrained_cfg['input_size'][-1]
        flops = count_flops(model, size)
        rows.append({'model': name, 'img_size': size, 'params_m': sum(p.numel() for p in model.parameters()) / 1e6,
                     'gmacs': flops / 2e9, 'gflops': flops / 1e9, 'batch': batch})
        x = torch.randn(batch, 3, size, size)

        def infer(model=model, x=x):
            with torch.inference_mode():
                model(x)

        def latency(model=model, x=x[:1]):
            with torch.inference_mode():
                model(x)
        case = {'img_per_s': (infer, batch), 'latency_ms': (latency, None)}
        if train_batch:
            train_model = timm.create_model(name, pretrained=False).train()
            opt = torch.optim.AdamW(train_model.parameters(), lr=1e-4)
            xt = torch.randn(train_batch, 3, size, size)
            target = torch.randint(0, train_model.num_classes, (train_batch,))

            def step(model=train_model, opt=opt, x=xt, target=target):
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(x), target).backward()
                opt.step()
            case['train_img_per_s'] = (step, train_batch)
        cases.append(case)
    for case in cases:  # warm-up (allocations, first-use builds, lazy inits)
        for fn, _ in case.values():
            fn()
    best = [{key: float('inf') for key in case} for case in cases]
    for _ in range(repeats):
        for case, b in zip(cases, best):
            for key, (fn, _) in case.items():
                b[key] = min(b[key], _timed(fn))
    for row, case, b in zip(rows, cases, best):
        for key, (_, n) in case.items():
            row[key] = n / b[key] if n else b[key] * 1e3
    return rows
