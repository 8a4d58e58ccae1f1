# ViTAEv2-VSA 3x detection schedule (ViTAE-Transformer/ViTAE-VSA Object-Detection/configs/vitaev2_vsa/*_3x_coco.py on
# mmdet 2's schedule_1x.py): AdamW lr 1e-4, wd 0.05, no decay on norms, position tables and absolute position
# embeddings (paramwise custom_keys), no gradient clipping, fp32 (the configs leave fp16 commented out), 36 epochs
# with steps at 27/33, 500-iteration linear warm-up from 0.001. 16 images per step (8 GPUs x 2).
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'
max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'absolute_pos_embed': dict(decay_mult=0.), 'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)}))
auto_scale_lr = dict(enable=False, base_batch_size=16)
