"""FLOP formulas for torch's CPU flash SDPA kernel, which `FlopCounterMode` does not count (torch 2.x registers the
CUDA kernels only). Without them a model's `scaled_dot_product_attention` counts zero FLOPs on CPU and on meta tensors
whenever torch picks that kernel (query and value of the same width); the math fallback's matmuls are counted anyway.
"""
import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

_FWD = getattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu', None)
_BWD = getattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu_backward', None)

if _FWD is not None and _FWD not in flop_registry:
    @register_flop_formula(_FWD)
    def _cpu_flash_fwd_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

if _BWD is not None and _BWD not in flop_registry:
    @register_flop_formula(_BWD)
    def _cpu_flash_bwd_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)
