# ADE20K 640x640 (official yan-hao-tian/VW configs/_base_/datasets/ade20k_640x640.py): mmseg's 640 pipeline, 4 images
# per GPU, test images (2560, 640) keep-ratio resized, then to a multiple of 64 (`ResizeToMultiple(size_divisor=64)`).
_base_ = 'mmseg::_base_/datasets/ade20k_640x640.py'
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2560, 640), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=64),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=4)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
