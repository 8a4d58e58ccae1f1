# BiFormer-S + Semantic FPN, ADE20K 512x512, 80k iterations, fp16; n_win=8, backbone drop path 0.15.
_base_ = [
    '../_base_/models/fpn_hiervit.py', 'mmseg::_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_80k_adamw_cosine.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 512)
pretrained = None  # path or URL of the ImageNet-1k classification checkpoint
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.BiFormer', model_name='biformer_small', n_win=8, drop_path_rate=0.15, norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained) if pretrained else None),
    neck=dict(in_channels=[64, 128, 256, 512]))
