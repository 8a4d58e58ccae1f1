# BiFormer Semantic FPN 80k schedule (semantic_segmentation/configs/ade20k/sfpn.biformer_*.py, UniFormer's recipe):
# AdamW lr 2e-4, wd 1e-4, no paramwise rules, 1000-iteration linear warm-up from 0.1 x lr, cosine to 1e-8 x lr over
# 80k iterations, fp16 with a static loss scale of 512.
_base_ = 'mmseg::_base_/schedules/schedule_80k.py'
optim_wrapper = dict(
    _delete_=True, type='AmpOptimWrapper', loss_scale=512.,
    optimizer=dict(type='AdamW', lr=0.0002, betas=(0.9, 0.999), weight_decay=0.0001))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=1000),
    dict(type='CosineAnnealingLR', T_max=80000, eta_min_ratio=1e-8, begin=0, end=80000, by_epoch=False),
]
