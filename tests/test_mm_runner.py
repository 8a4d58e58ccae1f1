"""A few mmengine Runner iterations of a repository config on a tiny real dataset lower the loss.

The dataset is scikit-image's `coins` photograph with instance masks from Otsu thresholding + connected components,
written by the test in COCO format; the config is the BiFormer Mask R-CNN one with a tiny backbone, trained through
the Runner with hiervit's optimizer constructor.
"""
import json
import os

import numpy as np
import pytest

pytest.importorskip('mmdet', reason='needs the OpenMMLab extras: pip install "hiervit[det,seg]"')
skimage = pytest.importorskip('skimage', reason='needs scikit-image (test data)')

from hiervit.mm import install_tv_ops  # noqa: E402

install_tv_ops()

from mmengine.hooks import Hook  # noqa: E402
from test_mm_configs import ROOT, load_tiny  # noqa: E402

pytestmark = pytest.mark.mm


def _write_coins_coco(root: str) -> int:
    """coins.png + instances.json (RLE masks) under `root`; returns the number of instances."""
    import cv2
    from pycocotools import mask as mask_utils
    from skimage import data, filters, measure, morphology
    img = data.coins()  # [303, 384] uint8
    fg = morphology.remove_small_objects(morphology.closing(img > filters.threshold_otsu(img), morphology.disk(2)), 150)
    labels = measure.label(fg)
    cv2.imwrite(os.path.join(root, 'coins.png'), np.repeat(img[:, :, None], 3, 2))
    anns = []
    for region in measure.regionprops(labels):
        m = np.asfortranarray((labels == region.label).astype(np.uint8))
        rle = mask_utils.encode(m)
        rle['counts'] = rle['counts'].decode()
        y0, x0, y1, x1 = region.bbox
        anns.append(dict(id=len(anns) + 1, image_id=1, category_id=1, segmentation=rle, area=float(region.area),
                         bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)], iscrowd=0))
    coco = dict(images=[dict(id=1, file_name='coins.png', height=img.shape[0], width=img.shape[1])],
                annotations=anns, categories=[dict(id=1, name='coin')])
    with open(os.path.join(root, 'instances.json'), 'w') as f:
        json.dump(coco, f)
    return len(anns)


class _LossRecorder(Hook):
    def __init__(self):
        self.losses = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append(float(outputs['loss']))


def test_runner_lowers_loss_on_coins(tmp_path):
    from mmengine.runner import Runner
    num = _write_coins_coco(str(tmp_path))
    assert num >= 10  # the photograph has 24 coins; thresholding finds most of them
    cfg = load_tiny(os.path.join(ROOT, 'detection', 'biformer', 'mask-rcnn_biformer-s_fpn_amp-1x_coco.py'))
    cfg.model.roi_head.bbox_head.num_classes = 1
    cfg.model.roi_head.mask_head.num_classes = 1
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='Resize', scale=(192, 160), keep_ratio=True),
        dict(type='PackDetInputs'),
    ]
    dataset = dict(type='CocoDataset', data_root=str(tmp_path), ann_file='instances.json', data_prefix=dict(img=''),
                   metainfo=dict(classes=('coin',)), pipeline=pipeline)
    cfg.train_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                                sampler=dict(type='InfiniteSampler', shuffle=False), dataset=dataset)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=12, val_interval=1000)
    for key in ('val_dataloader', 'val_evaluator', 'val_cfg', 'test_dataloader', 'test_evaluator', 'test_cfg'):
        cfg[key] = None
    # fp32 on CPU (the config's AmpOptimWrapper is for GPUs), constant lr, hiervit's constructor
    cfg.optim_wrapper = dict(
        type='OptimWrapper', constructor='hiervit.LayerDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=3e-4, weight_decay=0.05),
        paramwise_cfg=dict(cfg.optim_wrapper.paramwise_cfg, layer_decay_rate=0.9))
    cfg.param_scheduler = None
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir = str(tmp_path / 'work')
    cfg.randomness = dict(seed=0)
    cfg.launcher = 'none'

    recorder = _LossRecorder()
    runner = Runner.from_cfg(cfg)
    runner.register_hook(recorder, priority='LOWEST')
    runner.train()
    losses = recorder.losses
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    # the constructor's layer decay reached the optimizer
    assert any(g.get('lr_scale', 1.) < 1. for g in runner.optim_wrapper.optimizer.param_groups)
