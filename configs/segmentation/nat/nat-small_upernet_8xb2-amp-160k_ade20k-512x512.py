# NAT-Small + UperNet, ADE20K 512x512, 160k iterations, fp16; backbone drop path 0.5.
_base_ = [
    '../_base_/models/upernet_hiervit.py', 'mmseg::_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_160k_adamw.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 512)
# the ImageNet-1k classification checkpoint the official config fine-tunes from
pretrained = 'https://shi-labs.com/projects/nat/checkpoints/CLS/nat_small.pth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.NAT', model_name='nat_small', drop_path_rate=0.5,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
train_dataloader = dict(batch_size=2)  # 8 GPUs x 2 images
