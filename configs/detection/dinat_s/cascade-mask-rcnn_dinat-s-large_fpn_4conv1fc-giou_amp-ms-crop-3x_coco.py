# DiNAT_s-Large (ImageNet-22k) + Cascade Mask R-CNN (FPN), COCO 3x multi-scale + crop, fp16; backbone drop path 0.6,
# lr 5e-5 (detection/configs/dinat_s/cascade_mask_rcnn_dinat_s_large_3x_coco.py).
_base_ = ['../_base_/models/cascade-mask-rcnn_hiervit_fpn_4conv1fc-giou.py',
          '../_base_/datasets/coco_instance_ms-crop.py',
          '../_base_/schedules/schedule_3x_adamw.py', 'mmdet::_base_/default_runtime.py']
# the ImageNet-22k classification checkpoint the official config fine-tunes from (dinat_s_large_21k's weights)
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_s_large_in22k_224.pth'
model = dict(
    backbone=dict(
        type='hiervit.DiNATs', model_name='dinat_s_large_21k', drop_path_rate=0.6,
        dilations=[[1, 28], [1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3]],
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768, 1536]))
optim_wrapper = dict(optimizer=dict(lr=0.00005))
