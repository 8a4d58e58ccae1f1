# BiFormer-S + Mask R-CNN (FPN), COCO 1x, fp16; n_win=16 regions per side, backbone drop path 0.2.
_base_ = ['../_base_/models/mask-rcnn_hiervit_fpn.py', 'mmdet::_base_/datasets/coco_instance.py',
          '../_base_/schedules/schedule_1x_adamw.py', 'mmdet::_base_/default_runtime.py']
# released ImageNet-1k classification weights (README.md; the official configs set pretrained=None and
# their slurm_train.sh passes the file with --cfg-options model.pretrained=...)
pretrained = 'https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHDyM-x9KWRBZ832/root/content'
model = dict(
    backbone=dict(
        type='hiervit.BiFormer', model_name='biformer_small', n_win=16, drop_path_rate=0.2,
        norm_eval=True, init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
