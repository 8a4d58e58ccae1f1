# UperNet 160k schedule assumed for ViTAEv2-VSA (ViTAE-Transformer/ViTAE-VSA released no segmentation code or config):
# [assumption] the Swin UperNet recipe: AdamW lr 6e-5, wd 0.01 without decay on norms and position tables,
# 1500-iteration linear warm-up from 1e-6, then poly (power 1) to 0 over 160k iterations, fp32 (as the released
# detection configs, which leave fp16 off).
_base_ = 'mmseg::_base_/schedules/schedule_160k.py'
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'norm': dict(decay_mult=0.), 'relative_position_bias_table': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
