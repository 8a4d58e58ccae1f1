# CSWin-B + UperNet, ADE20K 512x512, 160k iterations, 8 GPUs x 2 images. README: 51.1 mIoU (single scale).
# Official values: microsoft/CSWin-Transformer segmentation/configs/cswin/upernet_cswin_base.py (drop path 0.6); the
# backbone uses the official segmentation backbone's padding rule (hiervit.CSWin sets seg_padding=True).
_base_ = [
    '../_base_/models/upernet_hiervit.py', 'mmseg::_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_160k_adamw_cswin.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 512)
# the released ImageNet-1k classification weights of this size (CSWin-Transformer release v0.1.0)
pretrained = 'https://github.com/microsoft/CSWin-Transformer/releases/download/v0.1.0/cswin_base_224.pth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.CSWin', model_name='cswin_base', drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
train_dataloader = dict(batch_size=2)
