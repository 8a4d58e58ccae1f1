# BiFormer-S + RetinaNet (FPN), COCO 1x, fp16; n_win=16 regions per side, backbone drop path 0.2.
# RetinaNet uses AdamW weight decay 1e-4; its drop path is not published (Mask R-CNN's is used).
_base_ = ['../_base_/models/retinanet_hiervit_fpn.py', 'mmdet::_base_/datasets/coco_detection.py',
          '../_base_/schedules/schedule_1x_adamw.py', 'mmdet::_base_/default_runtime.py']
pretrained = None  # path or URL of the ImageNet-1k classification checkpoint
model = dict(
    backbone=dict(
        type='hiervit.BiFormer', model_name='biformer_small', n_win=16, drop_path_rate=0.2,
        norm_eval=True, init_cfg=dict(type='Pretrained', checkpoint=pretrained) if pretrained else None),
    neck=dict(in_channels=[128, 256, 512]))
optim_wrapper = dict(optimizer=dict(weight_decay=0.0001))
