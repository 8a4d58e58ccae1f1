# DiNAT-Mini + UperNet, ADE20K 512x512, 160k iterations, fp16; backbone drop path 0.2.
# Segmentation dilations at 512 px (kernel x dilation ~ feature size).
# Drop path as in segmentation/configs/dinat/upernet_dinat_mini_512x512_160k_ade20k.py.
_base_ = [
    '../_base_/models/upernet_hiervit.py', 'mmseg::_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_160k_adamw.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 512)
# the ImageNet-1k classification checkpoint the official config fine-tunes from
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.DiNAT', model_name='dinat_mini', drop_path_rate=0.2,
        dilations=[[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4] * 1, [1, 2, 1, 2, 1]],
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
train_dataloader = dict(batch_size=2)  # 8 GPUs x 2 images
