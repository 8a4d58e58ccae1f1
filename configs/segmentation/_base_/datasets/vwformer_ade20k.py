# ADE20K 512x512 as the official yan-hao-tian/VW configs/_base_/datasets/ade20k.py: mmseg's pipeline, 4 images per GPU
# (`samples_per_gpu=4` in every official file), and the test images resized to a multiple of 64 after the
# (2048, 512) keep-ratio resize (`ResizeToMultiple(size_divisor=64)`: the head's 8x8 window grid needs the 1/8 map
# divisible by 8).
_base_ = 'mmseg::_base_/datasets/ade20k.py'
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=64),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=4)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
