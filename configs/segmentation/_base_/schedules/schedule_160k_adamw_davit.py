# DaViT UperNet 160k schedule (dingmyu/davit mmseg/configs/upernet_davit_512x512_160k_ade20k.py): AdamW lr 6e-5,
# wd 0.01 on every parameter (the norm exclusion is commented out there), 1500-iteration linear warm-up from 1e-6,
# then poly (power 1) to 0; fp32.
_base_ = 'mmseg::_base_/schedules/schedule_160k.py'
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
