# ViTAEv2*-S+VSA + Cascade Mask R-CNN (FPN, 4conv1fc GIoU heads), COCO 3x, DETR-style multi-scale + crop, fp32. README:
# 51.9 box / 44.8 mask AP, 77M params.
# Official values: ViTAE-Transformer/ViTAE-VSA@75dc986 Object-Detection/configs/vitaev2_vsa/
#   cascade_mask_rcnn_vitaev2_vsa_s_mstrain_480-800_giou_4conv1f_adamw_3x_coco.py
# Backbone drop path 0.25; AdamW lr 1e-4, wd 0.05 without decay on norms and position tables, 3x steps on mmdet 2's
# schedule_1x.py. The backbone runs the detection code's VSA rule (centred padding, its offset divisors); the official
# `load_ema=True` loads the classification EMA weights.
_base_ = [
    '../_base_/models/cascade-mask-rcnn_hiervit_fpn_4conv1fc-giou.py', '../_base_/datasets/coco_instance_ms-crop.py',
    '../_base_/schedules/schedule_3x_adamw_vsa.py', 'mmdet::_base_/default_runtime.py']
# released ImageNet-1k classification weights (README OneDrive link; converted by the family's checkpoint filter)
pretrained = 'https://api.onedrive.com/v1.0/shares/s!AimBgYV7JjTlgcgB0Xlyc3U4WO11AQ/root/content'
model = dict(
    backbone=dict(
        type='hiervit.ViTAEv2VSA', model_name='vitaev2_vsa_s', drop_path_rate=0.25,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
