# ViTAEv2*-48M+VSA + Mask R-CNN (FPN), COCO 3x, DETR-style multi-scale + crop, fp32. README: 49.9 box / 44.2 mask AP,
# 69M params.
# Official values: ViTAE-Transformer/ViTAE-VSA@75dc986 Object-Detection/configs/vitaev2_vsa/
#   mask_rcnn_vitaev2_vsa_48M_mstrain_480-800_adamw_3x_coco.py
# Backbone drop path 0.35; AdamW lr 1e-4, wd 0.05 without decay on norms and position tables, 3x steps on mmdet 2's
# schedule_1x.py. The backbone runs the detection code's VSA rule (centred padding, its offset divisors); the official
# `load_ema=True` loads the classification EMA weights.
_base_ = [
    '../_base_/models/mask-rcnn_hiervit_fpn.py', '../_base_/datasets/coco_instance_ms-crop.py',
    '../_base_/schedules/schedule_3x_adamw_vsa.py', 'mmdet::_base_/default_runtime.py']
# released ImageNet-1k classification weights (README OneDrive link; converted by the family's checkpoint filter)
pretrained = 'https://api.onedrive.com/v1.0/shares/s!AimBgYV7JjTlgcgCOt1UwhNQRfO0bw/root/content'
model = dict(
    backbone=dict(
        type='hiervit.ViTAEv2VSA', model_name='vitaev2_vsa_48m', drop_path_rate=0.35,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
