# CSWin-T + UperNet, ADE20K 512x512, 160k iterations, 8 GPUs x 2 images. README: 49.3 mIoU (single scale).
# Official values: microsoft/CSWin-Transformer segmentation/configs/cswin/upernet_cswin_tiny.py (drop path 0.3); the
# backbone uses the official segmentation backbone's padding rule (hiervit.CSWin sets seg_padding=True).
_base_ = [
    '../_base_/models/upernet_hiervit.py', 'mmseg::_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_160k_adamw_cswin.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 512)
# the released ImageNet-1k classification weights of this size (CSWin-Transformer release v0.1.0)
pretrained = 'https://github.com/microsoft/CSWin-Transformer/releases/download/v0.1.0/cswin_tiny_224.pth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.CSWin', model_name='cswin_tiny', drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
train_dataloader = dict(batch_size=2)
