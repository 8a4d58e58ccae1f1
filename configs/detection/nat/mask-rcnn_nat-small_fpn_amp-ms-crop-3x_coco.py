# NAT-Small + Mask R-CNN (FPN), COCO 3x multi-scale + crop, fp16; backbone drop path 0.35.
_base_ = ['../_base_/models/mask-rcnn_hiervit_fpn.py', '../_base_/datasets/coco_instance_ms-crop.py',
          '../_base_/schedules/schedule_3x_adamw.py', 'mmdet::_base_/default_runtime.py']
# the ImageNet-1k classification checkpoint the official config fine-tunes from
pretrained = 'https://shi-labs.com/projects/nat/checkpoints/CLS/nat_small.pth'
model = dict(
    backbone=dict(
        type='hiervit.NAT', model_name='nat_small', drop_path_rate=0.35,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
