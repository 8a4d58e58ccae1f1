# S2AFormer-M + Mask R-CNN (FPN), COCO 1x, fp16. Published: 42.6 APb / 39.3 APm (paper, via
# heedless-backbones).
# Assumed (unpublished): detector framework settings, AdamW lr 1e-4 / wd 0.05 (schedule_1x_adamw), drop path
# 0.2; S2AFormer has no weights, so `pretrained` must be a checkpoint trained with this repo.
_base_ = ['../_base_/models/mask-rcnn_hiervit_fpn.py', 'mmdet::_base_/datasets/coco_instance.py',
          '../_base_/schedules/schedule_1x_adamw.py', 'mmdet::_base_/default_runtime.py']
# no weights exist: set a checkpoint trained with this repo (or --cfg-options model.backbone.init_cfg.checkpoint=)
pretrained = None
model = dict(
    backbone=dict(
        type='hiervit.S2AFormer', model_name='s2aformer_m', drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[32, 96, 320, 448]))
