"""Model benchmark: throughput, latency, parameters and FLOPs of hiervit models beside any timm model."""
from typing import Dict

import torch
from torch.utils.flop_counter import FlopCounterMode

import timm

from ._timing import best_time


def count_flops(model: torch.nn.Module, img_size: int, in_chans: int = 3) -> float:
    """Forward FLOPs of one image (torch's counter: 2 per multiply-add; our ops register their formulas)."""
    x = torch.randn(1, in_chans, img_size, img_size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return float(counter.get_total_flops())


def bench_model(name: str, batch: int, img_size: int, repeats: int, threads: int = 0) -> Dict:
    """One row: img/s at `batch`, batch-1 latency, params, GMACs (the papers' 'FLOPs') and GFLOPs."""
    if threads:
        torch.set_num_threads(threads)
    model = timm.create_model(name, pretrained=False)
    model.eval()
    size = img_size or model.pretrained_cfg['input_size'][-1]
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, size)
    device = torch.device('cpu')
    x = torch.randn(batch, 3, size, size)
    x1 = x[:1]
    with torch.inference_mode():
        t_batch = best_time(lambda: model(x), device, repeats=repeats, warmup=1)
        t_one = best_time(lambda: model(x1), device, repeats=repeats, warmup=1)
    return {'model': name, 'img_size': size, 'params_m': params / 1e6, 'gmacs': flops / 2e9, 'gflops': flops / 1e9,
            'img_per_s': batch / t_batch, 'latency_ms': t_one * 1e3, 'batch': batch}
