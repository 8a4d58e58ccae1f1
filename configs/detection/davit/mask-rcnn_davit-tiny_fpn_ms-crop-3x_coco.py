# DaViT-T + Mask R-CNN (FPN), COCO 3x, multi-scale + crop. Paper: 47.4/42.9 APb/APm.
# Official values: dingmyu/davit mmdet/configs/davit_maskrcnn_3x_coco.py (drop path 0.2).
_base_ = ['../_base_/models/mask-rcnn_hiervit_fpn.py', '../_base_/datasets/coco_instance_ms-crop.py',
          '../_base_/schedules/schedule_3x_adamw_davit.py', 'mmdet::_base_/default_runtime.py']
pretrained = 'timm/davit_tiny.msft_in1k'  # timm's ImageNet-1k weights (the official ones); or a path / URL
model = dict(
    backbone=dict(
        type='hiervit.DaViT', model_name='davit_tiny', drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
