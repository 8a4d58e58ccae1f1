# DaViT-B + UperNet, ADE20K 512x512, 160k iterations, 8 GPUs x 2 images. Paper: 49.4 mIoU (single scale).
# The official repository has a Tiny config only: this follows it (the paper's protocol); drop path 0.3 is
# ASSUMED (unpublished; Tiny's and Swin's value).
_base_ = [
    '../_base_/models/upernet_hiervit.py', 'mmseg::_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_160k_adamw_davit.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 512)
pretrained = 'timm/davit_base.msft_in1k'  # timm's ImageNet-1k weights (the official ones); or a path / URL
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.DaViT', model_name='davit_base', drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
train_dataloader = dict(batch_size=2)
