# DiNAT-Mini + Mask R-CNN (FPN), COCO 3x multi-scale + crop, fp16; backbone drop path 0.2.
# Detection dilations grow gradually with depth (kernel x dilation ~ feature size at ~800 px).
# Drop path as in detection/configs/dinat/mask_rcnn_dinat_mini_3x_coco.py.
_base_ = ['../_base_/models/mask-rcnn_hiervit_fpn.py', '../_base_/datasets/coco_instance_ms-crop.py',
          '../_base_/schedules/schedule_3x_adamw.py', 'mmdet::_base_/default_runtime.py']
# the ImageNet-1k classification checkpoint the official config fine-tunes from
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth'
model = dict(
    backbone=dict(
        type='hiervit.DiNAT', model_name='dinat_mini', drop_path_rate=0.2,
        dilations=[[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 1, [1, 3, 1, 3, 1]],
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
