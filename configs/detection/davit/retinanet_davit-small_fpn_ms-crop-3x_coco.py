# DaViT-S + RetinaNet (FPN, P3-P7 from stages 2-4), COCO 3x, multi-scale + crop. Paper: 48.2 AP.
# The official repository has Tiny configs only: this follows the paper's protocol (Tiny's files, the same
# schedule for every size); drop path 0.3 is ASSUMED (unpublished; Swin's 0.2/0.3 for 1x/3x).
_base_ = ['../_base_/models/retinanet_hiervit_fpn.py', '../_base_/datasets/coco_detection_ms-crop.py',
          '../_base_/schedules/schedule_3x_adamw_davit.py', 'mmdet::_base_/default_runtime.py']
pretrained = 'timm/davit_small.msft_in1k'  # timm's ImageNet-1k weights (the official ones); or a path / URL
model = dict(
    backbone=dict(
        type='hiervit.DaViT', model_name='davit_small', drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768]))
