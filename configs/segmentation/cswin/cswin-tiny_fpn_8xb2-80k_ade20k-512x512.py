# CSWin-T + Semantic FPN, ADE20K 512x512, 80k iterations. README: 48.2 mIoU. No official config
# exists: published are the method, crop and schedule length (README table); assumed are the PVT-style schedule
# (see the schedule file), 8 GPUs x 2 images and the UperNet configs' drop path (0.3).
_base_ = [
    '../_base_/models/fpn_hiervit.py', 'mmseg::_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_80k_adamw_poly.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 512)
# the released ImageNet-1k classification weights of this size (CSWin-Transformer release v0.1.0)
pretrained = 'https://github.com/microsoft/CSWin-Transformer/releases/download/v0.1.0/cswin_tiny_224.pth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.CSWin', model_name='cswin_tiny', drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
train_dataloader = dict(batch_size=2)
