# CSWin-T + Cascade Mask R-CNN (FPN), COCO 3x multi-scale + crop. README: 52.5 / 45.3 AP.
# The official repository released no detection code (CSWin issue #25). Published (README / paper): detector, 3x
# schedule, ImageNet-1k pretraining. Assumed: everything else follows Swin's 3x recipe as the paper compares against
# it (AdamW lr 1e-4, wd 0.05, 16 images, multi-scale + crop, schedule file), and the backbone drop path 0.2
# (the ImageNet value; none is published for detection). The backbone pads as the official segmentation backbone.
_base_ = ['../_base_/models/cascade-mask-rcnn_hiervit_fpn_4conv1fc-giou.py',
          '../_base_/datasets/coco_instance_ms-crop.py',
          '../_base_/schedules/schedule_3x_adamw.py', 'mmdet::_base_/default_runtime.py']
# the released ImageNet-1k classification weights of this size (CSWin-Transformer release v0.1.0)
pretrained = 'https://github.com/microsoft/CSWin-Transformer/releases/download/v0.1.0/cswin_tiny_224.pth'
model = dict(
    backbone=dict(
        type='hiervit.CSWin', model_name='cswin_tiny', drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
