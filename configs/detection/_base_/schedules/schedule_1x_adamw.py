# BiFormer 1x detection schedule (Swin 1x recipe): AdamW lr 1e-4, wd 0.05, no decay on norms / position tables,
# 12 epochs with steps at 8/11, 1000-iteration linear warm-up, fp16. 16 images per step (8 GPUs x 2).
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'norm': dict(decay_mult=0.), 'absolute_pos_embed': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.)}))
auto_scale_lr = dict(enable=False, base_batch_size=16)
