# DiNAT_s-Small (Swin-layout DiNAT) + Cascade Mask R-CNN (FPN), COCO 3x multi-scale + crop, fp16; detection dilations
# as in the paper's config. Drop path 0.35 is this family's Mask R-CNN value (the Cascade value is not published).
_base_ = ['../_base_/models/cascade-mask-rcnn_hiervit_fpn_4conv1fc-giou.py',
          '../_base_/datasets/coco_instance_ms-crop.py',
          '../_base_/schedules/schedule_3x_adamw.py', 'mmdet::_base_/default_runtime.py']
pretrained = None  # path or URL of the ImageNet-1k classification checkpoint
model = dict(
    backbone=dict(
        type='hiervit.DiNATs', model_name='dinat_s_small', drop_path_rate=0.35,
        dilations=[[1, 28], [1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3]],
        init_cfg=dict(type='Pretrained', checkpoint=pretrained) if pretrained else None),
    neck=dict(in_channels=[96, 192, 384, 768]))
