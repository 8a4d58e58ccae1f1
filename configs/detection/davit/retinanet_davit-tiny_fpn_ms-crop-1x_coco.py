# DaViT-T + RetinaNet (FPN, P3-P7 from stages 2-4), COCO 1x, multi-scale + crop. Paper: 44.0 AP.
# Official values: dingmyu/davit mmdet/configs/davit_retinanet_1x_coco.py (drop path 0.1).
_base_ = ['../_base_/models/retinanet_hiervit_fpn.py', '../_base_/datasets/coco_detection_ms-crop.py',
          '../_base_/schedules/schedule_1x_adamw_davit.py', 'mmdet::_base_/default_runtime.py']
pretrained = 'timm/davit_tiny.msft_in1k'  # timm's ImageNet-1k weights (the official ones); or a path / URL
model = dict(
    backbone=dict(
        type='hiervit.DaViT', model_name='davit_tiny', drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768]))
