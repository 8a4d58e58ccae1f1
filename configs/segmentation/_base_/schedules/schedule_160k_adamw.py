# UperNet 160k schedule of NAT/DiNAT/BiFormer (Swin recipe): AdamW lr 6e-5, wd 0.01, 1500-iteration linear warm-up
# from 1e-6, then poly (power 1) to 0; no decay on rpb tables (NAT family), position tables (BiFormer's list) and norms;
# fp16 with a static loss scale of 512 (NAT: mmcv's Fp16OptimizerHook default; BiFormer: loss_scale=512. explicitly).
_base_ = 'mmseg::_base_/schedules/schedule_160k.py'
optim_wrapper = dict(
    _delete_=True, type='AmpOptimWrapper', loss_scale=512.,
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.), 'absolute_pos_embed': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
