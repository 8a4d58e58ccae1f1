# NAT/DiNAT 3x detection schedule (detection/configs/_base_/schedules/schedule_3x.py + the model configs): AdamW lr
# 1e-4, wd 0.05, no decay on rpb tables and norms, 36 epochs with steps at 27/33, 500-iteration linear warm-up (ratio
# 0.001), fp16 with a static loss scale of 512 (the configs' Fp16OptimizerHook sets none: mmcv's default 512;
# AmpOptimWrapper in mmdet 3). 16 images per step (8 GPUs x 2).
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'
max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
optim_wrapper = dict(
    type='AmpOptimWrapper', loss_scale=512.,
    optimizer=dict(_delete_=True, type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
auto_scale_lr = dict(enable=False, base_batch_size=16)
