# DiNAT_s-Tiny (Swin-layout DiNAT) + Cascade Mask R-CNN (FPN), COCO 3x multi-scale + crop,
# fp16; backbone drop path 0.3; detection dilations as in the paper's config.
_base_ = ['../_base_/models/cascade-mask-rcnn_hiervit_fpn_4conv1fc-giou.py',
          '../_base_/datasets/coco_instance_ms-crop.py',
          '../_base_/schedules/schedule_3x_adamw.py', 'mmdet::_base_/default_runtime.py']
# the ImageNet-1k classification checkpoint the official config fine-tunes from
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_tiny_in1k_224.pth'
model = dict(
    backbone=dict(
        type='hiervit.DiNATs', model_name='dinat_s_tiny', drop_path_rate=0.3,
        dilations=[[1, 28], [1, 14], [1, 3, 1, 5, 1, 7], [1, 3]],
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
