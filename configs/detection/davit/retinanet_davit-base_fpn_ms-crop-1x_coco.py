# DaViT-B + RetinaNet (FPN, P3-P7 from stages 2-4), COCO 1x, multi-scale + crop. Paper: 46.7 AP.
# The official repository has Tiny configs only: this follows the paper's protocol (Tiny's files, the same
# schedule for every size); drop path 0.2 is ASSUMED (unpublished; Swin's 0.2/0.3 for 1x/3x).
_base_ = ['../_base_/models/retinanet_hiervit_fpn.py', '../_base_/datasets/coco_detection_ms-crop.py',
          '../_base_/schedules/schedule_1x_adamw_davit.py', 'mmdet::_base_/default_runtime.py']
pretrained = 'timm/davit_base.msft_in1k'  # timm's ImageNet-1k weights (the official ones); or a path / URL
model = dict(
    backbone=dict(
        type='hiervit.DaViT', model_name='davit_base', drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[256, 512, 1024]))
