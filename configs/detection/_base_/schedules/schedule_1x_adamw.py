# BiFormer 1x detection schedule (object_detection/configs/_base_/schedules/schedule_1x.py + maskrcnn.1x.*.py): AdamW
# lr 1e-4, wd 0.05, no decay on norms / position tables, 12 epochs with steps at 8/11, 500-iteration linear warm-up
# (ratio 0.001), fp16 with a static loss scale of 512 (`fp16 = dict()`: mmcv's Fp16OptimizerHook default). 16 images
# per step (8 GPUs x 2).
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    type='AmpOptimWrapper', loss_scale=512.,
    optimizer=dict(_delete_=True, type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'norm': dict(decay_mult=0.), 'absolute_pos_embed': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.)}))
auto_scale_lr = dict(enable=False, base_batch_size=16)
