# DiNAT-Large (ImageNet-22k) + UperNet, ADE20K 640x640, 160k iterations, fp32 (the official config keeps fp16 off for
# DiNAT-L); backbone drop path 0.3, dilations at 640 px
# (segmentation/configs/dinat/upernet_dinat_large_640x640_160k_ade20k.py). 640x640 as that file's name, its dilations
# and the paper say; the file itself inherits crop_size (512, 512) from its _base_/datasets/ade20k.py.
_base_ = [
    '../_base_/models/upernet_hiervit.py', 'mmseg::_base_/datasets/ade20k_640x640.py',
    '../_base_/schedules/schedule_160k_adamw.py', 'mmseg::_base_/default_runtime.py']
crop_size = (640, 640)
# the ImageNet-22k classification checkpoint the official config fine-tunes from (dinat_large_21k's weights)
pretrained = 'https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.DiNAT', model_name='dinat_large_21k', drop_path_rate=0.3,
        dilations=[[1, 20, 1], [1, 5, 1, 10], [1, 2, 1, 3, 1, 4, 1, 5, 1, 2, 1, 3, 1, 4, 1, 5, 1, 5], [1, 2, 1, 2, 1]],
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768))
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
train_dataloader = dict(batch_size=2)  # 8 GPUs x 2 images
