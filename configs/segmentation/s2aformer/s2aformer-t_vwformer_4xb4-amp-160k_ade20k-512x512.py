# S2AFormer-T + VWFormer (hiervit.VWHead), ade20k 512x512, 160k iterations, 4 images per GPU, fp16.
# Backbone as s2aformer-t_fpn_8xb2-amp-40k_ade20k-512x512.py beside it (a test keeps the two equal); head, schedule and
# data as the official yan-hao-tian/VW
# mmsegmentation-custom/configs/convnext/vw_convnext_tiny_fp16_512x512_160k_ade20k.py (stage-wise lr decay 0.9 over
# num_layers 6 applied to this backbone's stages: assumed).
_base_ = [
    '../_base_/models/vwformer_hiervit.py', '../_base_/datasets/vwformer_ade20k.py',
    '../_base_/schedules/schedule_160k_adamw_vwformer.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 512)
pretrained = None  # path or URL of an ImageNet-1k classification checkpoint
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.S2AFormer', model_name='s2aformer_t', out_indices=(0, 1, 2, 3), drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[32, 64, 128, 384], num_classes=150))
