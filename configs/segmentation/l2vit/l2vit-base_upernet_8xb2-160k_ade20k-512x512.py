# L²ViT-B + UperNet, ADE20K 512x512, 160k iterations, 8 GPUs x 2 images, fp32.
# Official values: ChuanyangZheng/L2ViT@fad0341
#   semantic_segmentation/configs/novel/upernet_l2vit_base_512x512_160k_ade20k.py
# (drop path 0.3; AdamW lr 6e-5, wd 0.01 on every parameter, 1500-iteration linear warm-up from 1e-6, poly power 1
# to 0: the same schedule as DaViT's, shared here).
_base_ = [
    '../_base_/models/upernet_hiervit.py', 'mmseg::_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_160k_adamw_davit.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 512)
# released ImageNet-1k classification weights (EMA)
pretrained = 'https://github.com/ChuanyangZheng/L2ViT/releases/download/v1.0/L2ViT-Base-checkpoint-best-ema.pth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.L2ViT', model_name='l2vit_base', drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
train_dataloader = dict(batch_size=2)
