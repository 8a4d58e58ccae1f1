# DaViT-T + UperNet, ADE20K 512x512, 160k iterations, 8 GPUs x 2 images. Paper: 46.3 mIoU (single scale).
# Official values: dingmyu/davit mmseg/configs/upernet_davit_512x512_160k_ade20k.py (drop path 0.3).
_base_ = [
    '../_base_/models/upernet_hiervit.py', 'mmseg::_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_160k_adamw_davit.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 512)
pretrained = 'timm/davit_tiny.msft_in1k'  # timm's ImageNet-1k weights (the official ones); or a path / URL
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.DaViT', model_name='davit_tiny', drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
train_dataloader = dict(batch_size=2)
