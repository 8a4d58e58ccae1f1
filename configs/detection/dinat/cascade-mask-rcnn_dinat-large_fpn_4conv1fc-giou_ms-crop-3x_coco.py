# DiNAT-Large (ImageNet-22k) + Cascade Mask R-CNN (FPN), COCO 3x multi-scale + crop; backbone drop path 0.6, lr 7.5e-5,
# fp32 (the official config keeps fp16 off for DiNAT-L):
# detection/configs/dinat/cascade_mask_rcnn_dinat_large_3x_coco.py
_base_ = ['../_base_/models/cascade-mask-rcnn_hiervit_fpn_4conv1fc-giou.py',
          '../_base_/datasets/coco_instance_ms-crop.py',
          '../_base_/schedules/schedule_3x_adamw.py', 'mmdet::_base_/default_runtime.py']
# the ImageNet-22k classification checkpoint the official config fine-tunes from (dinat_large_21k's weights)
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth'
model = dict(
    backbone=dict(
        type='hiervit.DiNAT', model_name='dinat_large_21k', drop_path_rate=0.6,
        dilations=[[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3, 1, 3, 1]],
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768, 1536]))
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.000075, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
