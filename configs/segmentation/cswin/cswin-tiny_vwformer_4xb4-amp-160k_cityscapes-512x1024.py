# CSWin-T + VWFormer (hiervit.VWCityHead), cityscapes 512x1024, 160k iterations, 4 images per GPU, fp16.
# Backbone as cswin-tiny_upernet_8xb2-160k_ade20k-512x512.py beside it (a test keeps the two equal); head, schedule and
# data as the official yan-hao-tian/VW
# mmsegmentation-custom/configs/convnext/vw_convnext_tiny_fp16_512x1024_160k_cityscapes.py (stage-wise lr decay 0.9
# over num_layers 6 applied to this backbone's stages: assumed). Head: that file's VWCityHead (hiervit.VWCityHead) with
# its nheads=16 and short_cut=False.
_base_ = [
    '../_base_/models/vwformer_hiervit.py', '../_base_/datasets/vwformer_cityscapes.py',
    '../_base_/schedules/schedule_160k_adamw_vwformer.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 1024)
# the released ImageNet-1k classification weights of this size (CSWin-Transformer release v0.1.0)
pretrained = 'https://github.com/microsoft/CSWin-Transformer/releases/download/v0.1.0/cswin_tiny_224.pth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.CSWin', model_name='cswin_tiny', out_indices=(0, 1, 2, 3), drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(
        type='hiervit.VWCityHead', in_channels=[64, 128, 256, 512], num_classes=19, nheads=16, short_cut=False))
