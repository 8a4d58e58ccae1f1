"""`bench_config`: forward time of a detection/segmentation config (backbone + neck + heads), beside mmdet's Swin-T.

Used by `python -m hiervit.bench det CONFIG` (and `--compare OTHER ...`: `bench_heads`, the decode heads of segmentation
configs side by side). The model is built from the config with random weights, put in eval
mode and timed on one random image (best of `repeats` after a warm-up) through the detector's / segmentor's
tensor-mode forward, i.e. everything up to the heads' raw outputs (no NMS / mask pasting). Two-stage detectors get
the same 100 fixed proposals for every backbone (see `_time_forward`).
"""
import copy
import os
import time
from typing import Any, Dict, List, Sequence, Tuple

import torch

from .tv_ops import install_tv_ops

__all__ = ['bench_config', 'bench_heads', 'build_from_config', 'swap_in_channels', 'SWIN_T']

# mmdet / mmseg Swin-T as in their Swin configs (same drop path as the detection reference config).
SWIN_T = dict(
    type='SwinTransformer', embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, mlp_ratio=4,
    qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0., drop_path_rate=0.2, patch_norm=True,
    out_indices=(0, 1, 2, 3), with_cp=False)
SWIN_T_CHANNELS = [96, 192, 384, 768]
NUM_PROPOSALS = 100


def _scope(cfg: Any) -> str:
    scope = cfg.get('default_scope')
    if scope not in ('mmdet', 'mmseg'):
        raise ValueError(f"config default_scope must be 'mmdet' or 'mmseg' (from their default_runtime), got {scope!r}")
    return scope


def build_from_config(cfg: Any) -> torch.nn.Module:
    """Build `cfg.model` with the registries of the config's scope (mmdet or mmseg)."""
    install_tv_ops()
    from mmengine.registry import init_default_scope
    scope = _scope(cfg)
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    return MODELS.build(cfg.model)


def swap_in_channels(cfg: Any, old: Sequence[int], new: Sequence[int]) -> None:
    """Re-point the modules that read backbone outputs from `old` widths to `new`: the neck if the model has one, else
    the decode and auxiliary heads (UperNet)."""
    mapping = dict(zip(old, new))
    readers = ['neck'] if cfg.model.get('neck') else ['decode_head', 'auxiliary_head']
    for key in readers:
        heads = cfg.model.get(key)
        for head in heads if isinstance(heads, list) else [heads] if heads else []:
            ch = head.get('in_channels')
            if isinstance(ch, (list, tuple)):
                head['in_channels'] = [mapping[c] for c in ch]
            else:
                head['in_channels'] = mapping[ch]


def _best(fn, repeats: int) -> float:
    with torch.inference_mode():
        fn()
        best = float('inf')
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    return best


def _time_forward(model: torch.nn.Module, scope: str, img_size: int, repeats: int) -> Tuple[float, float]:
    """Best seconds of (backbone + neck, whole tensor-mode forward) on one random image."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, img_size, img_size, generator=gen)
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData
        sample = DetDataSample(metainfo=dict(
            img_shape=(img_size, img_size), ori_shape=(img_size, img_size), pad_shape=(img_size, img_size),
            batch_input_shape=(img_size, img_size), scale_factor=(1., 1.)))
        # Two-stage detectors: fixed proposals, so the RoI heads' cost does not depend on how many boxes a randomly
        # initialised RPN happens to keep (which differs between backbones and dominates the time).
        xy = torch.rand(NUM_PROPOSALS, 2, generator=gen) * img_size * 0.75
        wh = torch.rand(NUM_PROPOSALS, 2, generator=gen) * img_size * 0.25 + 8
        sample.proposals = InstanceData(bboxes=torch.cat([xy, xy + wh], 1))
        full = lambda: model._forward(x, [sample])  # noqa: E731
    else:
        full = lambda: model._forward(x)  # noqa: E731
    return _best(lambda: model.extract_feat(x), repeats), _best(full, repeats)


def bench_config(config_path: str, img_size: int = 512, repeats: int = 3, compare_swin: bool = True,
                 cfg_options: Dict[str, Any] = None) -> List[Dict[str, Any]]:
    """Time a config's backbone + neck + heads forward, and optionally the same config with Swin-T swapped in.

    Args:
        config_path: An mmdet or mmseg config file (e.g. one under hiervit's configs/detection).
        img_size: Side of the square input image.
        repeats: Timed runs (best is reported) after one warm-up run.
        compare_swin: Add a row for the same detector/segmentor with the scope's Swin-T backbone.
        cfg_options: Overrides merged into the config first (mmengine `merge_from_dict` keys).

    Returns:
        One dict per row: backbone, img_size, params_m (whole model), backbone_neck_ms (`extract_feat`), fwd_ms (whole
        forward), img_per_s.
    """
    from mmengine.config import Config
    if img_size < 32 or repeats < 1:
        raise ValueError(f'img_size must be >= 32 and repeats >= 1, got {img_size} and {repeats}')
    cfg = Config.fromfile(config_path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = _scope(cfg)
    variants = [(cfg.model.backbone.get('model_name', cfg.model.backbone['type']), cfg)]
    if compare_swin:
        swin_cfg = copy.deepcopy(cfg)
        ours = build_from_config(cfg).backbone.out_channels
        swin_cfg.model.backbone = Config(dict(SWIN_T, out_indices=tuple(range(len(ours)))))
        swap_in_channels(swin_cfg, ours, SWIN_T_CHANNELS[:len(ours)])
        variants.append(('swin_tiny (mmdet/mmseg)', swin_cfg))
    rows = []
    for name, variant_cfg in variants:
        model = build_from_config(variant_cfg).eval()
        feat_s, full_s = _time_forward(model, scope, img_size, repeats)
        rows.append(dict(
            backbone=name, img_size=img_size, params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            backbone_neck_ms=round(feat_s * 1e3, 1), fwd_ms=round(full_s * 1e3, 1), img_per_s=round(1. / full_s, 2)))
    return rows


def bench_heads(config_paths: Sequence[str], img_size: int = 512, repeats: int = 3,
                cfg_options: Dict[str, Any] = None) -> List[Dict[str, Any]]:
    """Decode-head cost of segmentation configs on the same random image (e.g. VWFormer vs UperNet on one backbone).

    Each config is built with random weights in eval mode; the backbone features of one image are computed once and
    the decode head alone is measured on them: FLOPs (torch's `FlopCounterMode`, which counts hiervit's attention ops
    by their registered formulas; 1 multiply-add = 2 FLOPs), peak memory of the head's forward (`PeakMemory`) and its
    best forward time; `fwd_ms` is the whole tensor-mode forward. The auxiliary head (training only) is not counted.
    """
    from mmengine.config import Config
    from torch.utils.flop_counter import FlopCounterMode

    from hiervit.bench._timing import PeakMemory
    rows = []
    x = torch.randn(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    for path in config_paths:
        cfg = Config.fromfile(path)
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
        if _scope(cfg) != 'mmseg':
            raise ValueError(f'{path}: bench_heads compares segmentation decode heads; got scope {cfg.default_scope}')
        model = build_from_config(cfg).eval()
        head = model.decode_head
        with torch.inference_mode():
            feats = model.extract_feat(x)
            with FlopCounterMode(display=False) as counter:
                head(feats)
            with PeakMemory(torch.device('cpu')) as mem:
                head(feats)
        head_s = _best(lambda: head(feats), repeats)
        _, full_s = _time_forward(model, 'mmseg', img_size, repeats)
        rows.append(dict(
            config=os.path.basename(path), head=type(head).__name__, img_size=img_size,
            head_params_m=round(sum(p.numel() for p in head.parameters()) / 1e6, 2),
            head_gflops=round(counter.get_total_flops() / 1e9, 2), head_peak_mib=round(mem.mib, 1),
            head_ms=round(head_s * 1e3, 1), fwd_ms=round(full_s * 1e3, 1)))
    return rows
