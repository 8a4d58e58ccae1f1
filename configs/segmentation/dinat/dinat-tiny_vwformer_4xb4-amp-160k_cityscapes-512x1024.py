# DiNAT-Tiny + VWFormer (hiervit.VWCityHead), cityscapes 512x1024, 160k iterations, 4 images per GPU, fp16.
# Backbone as dinat-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py beside it (a test keeps the two equal); head, schedule
# and data as the official yan-hao-tian/VW
# mmsegmentation-custom/configs/convnext/vw_convnext_tiny_fp16_512x1024_160k_cityscapes.py (stage-wise lr decay 0.9
# over num_layers 6 applied to this backbone's stages: assumed). Head: that file's VWCityHead (hiervit.VWCityHead) with
# its nheads=16 and short_cut=False.
_base_ = [
    '../_base_/models/vwformer_hiervit.py', '../_base_/datasets/vwformer_cityscapes.py',
    '../_base_/schedules/schedule_160k_adamw_vwformer.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 1024)
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_tiny_in1k_224.pth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.DiNAT', model_name='dinat_tiny', out_indices=(0, 1, 2, 3), drop_path_rate=0.3, dilations=[[1,
        16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4, 1, 2, 1, 3, 1, 4, 1, 2, 1, 3, 1, 4], [1, 2, 1, 2, 1]],
        init_cfg=dict(type='Pretrained', checkpoint=pretrained) if pretrained else None),
    decode_head=dict(
        type='hiervit.VWCityHead', in_channels=[64, 128, 256, 512], num_classes=19, nheads=16, short_cut=False))
