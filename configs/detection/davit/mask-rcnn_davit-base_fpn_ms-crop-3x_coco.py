# DaViT-B + Mask R-CNN (FPN), COCO 3x, multi-scale + crop. Paper: 49.9/44.6 APb/APm.
# The official repository has Tiny configs only: this follows the paper's protocol (Tiny's files, the same
# schedule for every size); drop path 0.3 is ASSUMED (unpublished; Swin's 0.2/0.3 for 1x/3x).
_base_ = ['../_base_/models/mask-rcnn_hiervit_fpn.py', '../_base_/datasets/coco_instance_ms-crop.py',
          '../_base_/schedules/schedule_3x_adamw_davit.py', 'mmdet::_base_/default_runtime.py']
pretrained = 'timm/davit_base.msft_in1k'  # timm's ImageNet-1k weights (the official ones); or a path / URL
model = dict(
    backbone=dict(
        type='hiervit.DaViT', model_name='davit_base', drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
