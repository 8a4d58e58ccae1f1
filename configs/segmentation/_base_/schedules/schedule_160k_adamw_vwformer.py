# VWFormer's 160k schedule (official yan-hao-tian/VW configs/convnext/vw_convnext_tiny_fp16_512x512_160k_ade20k.py and
# the other convnext/*.py): AdamW lr 1e-4, betas (0.9, 0.999), wd 0.05 (no decay for 1-D parameters and biases, as
# its LearningRateDecayOptimizerConstructor; here also the backbone's timm no_weight_decay names), stage-wise lr decay
# 0.9 over num_layers 6 (12 for the 640x640 Base/Large/XL files), linear warm-up over 1500 iterations from 1e-6 then
# poly (power 1) to 0, 160k iterations, fp16 with a dynamic loss scale (Fp16OptimizerHook loss_scale='dynamic'),
# checkpoints every 8000 iterations, evaluation every 1000 keeping the best mIoU.
_base_ = 'mmseg::_base_/schedules/schedule_160k.py'
optim_wrapper = dict(
    _delete_=True, type='AmpOptimWrapper', loss_scale='dynamic',
    constructor='hiervit.LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(layer_decay_rate=0.9, layer_decay_type='stage_wise', num_layers=6))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=1000)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=8000, save_best='mIoU'))
