# ViTAEv2*-S+VSA + Mask R-CNN (FPN), COCO 1x, DETR-style multi-scale + crop, fp32. README: 45.9 box / 41.4 mask AP, 37M
# params.
# Official values: ViTAE-Transformer/ViTAE-VSA@75dc986 Object-Detection/configs/vitaev2_vsa/
#   mask_rcnn_vitaev2_vsa_s_mstrain_480-800_adamw_1x_coco.py
# Backbone drop path 0.1; AdamW lr 1e-4, wd 0.05 without decay on norms and position tables, 1x steps on mmdet 2's
# schedule_1x.py. The backbone runs the detection code's VSA rule (centred padding, its offset divisors); the official
# `load_ema=True` loads the classification EMA weights.
_base_ = [
    '../_base_/models/mask-rcnn_hiervit_fpn.py', '../_base_/datasets/coco_instance_ms-crop.py',
    '../_base_/schedules/schedule_1x_adamw_vsa.py', 'mmdet::_base_/default_runtime.py']
# released ImageNet-1k classification weights (README OneDrive link; converted by the family's checkpoint filter)
pretrained = 'https://api.onedrive.com/v1.0/shares/s!AimBgYV7JjTlgcgB0Xlyc3U4WO11AQ/root/content'
model = dict(
    backbone=dict(
        type='hiervit.ViTAEv2VSA', model_name='vitaev2_vsa_s', drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
find_unused_parameters = True  # as the official 1x configs (every backbone parameter gets a gradient here)
