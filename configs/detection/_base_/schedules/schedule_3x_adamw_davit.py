# DaViT 3x detection schedule (dingmyu/davit mmdet/configs/davit_*_3x_coco.py on mmdet 2's schedule_1x.py): AdamW
# lr 1e-4, wd 0.05 on every parameter (no paramwise exclusions), no gradient clipping, fp32 (the official configs turn
# mmdet's fp16 off), 36 epochs with steps at 27/33, 500-iteration linear warm-up from 0.001. 16 images per step
# (8 GPUs x 2).
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'
max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05))
auto_scale_lr = dict(enable=False, base_batch_size=16)
