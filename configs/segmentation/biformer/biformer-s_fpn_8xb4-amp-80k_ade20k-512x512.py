# BiFormer-S + Semantic FPN, ADE20K 512x512, 80k iterations, fp16; n_win=8, backbone drop path 0.15.
_base_ = [
    '../_base_/models/fpn_hiervit.py', 'mmseg::_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_80k_adamw_cosine.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 512)
# released ImageNet-1k classification weights (README.md; the official configs set pretrained=None and
# their slurm_train.sh passes the file with --cfg-options model.pretrained=...)
pretrained = 'https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHDyM-x9KWRBZ832/root/content'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.BiFormer', model_name='biformer_small', n_win=8, drop_path_rate=0.15,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
# The released segmentation backbone converts its BatchNorms to SyncBN and trains them (no norm_eval); mmengine converts
# the model when training distributed.
sync_bn = 'torch'
# Test-time resize of the official ade20k_sfpn.py (UniFormer's AlignResize): keep ratio to 2048x512, then to a
# multiple of 32.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
