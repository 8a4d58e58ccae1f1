# S2AFormer-T + Semantic FPN, ADE20K 512x512, fp16. Published: 38.0 mIoU (paper, via heedless-backbones).
# Assumed (unpublished): PVTv2's 40k-iteration schedule (schedule_40k_adamw_poly), drop path 0.1; no weights exist.
_base_ = [
    '../_base_/models/fpn_hiervit.py', 'mmseg::_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_40k_adamw_poly.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 512)
# no weights exist: set a checkpoint trained with this repo (or --cfg-options model.backbone.init_cfg.checkpoint=)
pretrained = None
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.S2AFormer', model_name='s2aformer_t', drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[32, 64, 128, 384]))
train_dataloader = dict(batch_size=2)
