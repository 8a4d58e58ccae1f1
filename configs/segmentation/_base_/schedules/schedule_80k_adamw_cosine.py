# BiFormer Semantic FPN 80k schedule (PVT / UniFormer recipe): AdamW lr 2e-4, wd 1e-4, cosine to 0 over 80k iterations.
_base_ = 'mmseg::_base_/schedules/schedule_80k.py'
optim_wrapper = dict(
    _delete_=True, type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0002, betas=(0.9, 0.999), weight_decay=0.0001))
param_scheduler = [dict(type='CosineAnnealingLR', T_max=80000, eta_min=0.0, begin=0, end=80000, by_epoch=False)]
