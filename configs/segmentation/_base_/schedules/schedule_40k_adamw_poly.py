# Semantic FPN 40k schedule of PVTv2 (whai362/PVT segmentation configs; assumed for S2AFormer, whose schedule is
# unpublished): AdamW lr 2e-4, wd 1e-4, poly (power 0.9) to 0 over 40k iterations, 16 images per step (8 GPUs x 2).
_base_ = 'mmseg::_base_/schedules/schedule_40k.py'
optim_wrapper = dict(
    _delete_=True, type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0002, betas=(0.9, 0.999), weight_decay=0.0001))
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=40000, by_epoch=False)]
