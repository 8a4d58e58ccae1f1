# Semantic FPN 80k schedule of PVT (the recipe the CSWin paper's Semantic FPN results follow; CSWin released no FPN
# config, so every value here is assumed from PVT's): AdamW lr 1e-4, wd 1e-4, poly (power 0.9) to 0 over 80k
# iterations, fp32.
_base_ = 'mmseg::_base_/schedules/schedule_80k.py'
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.0001))
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=80000, by_epoch=False)]
