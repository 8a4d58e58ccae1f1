# Cityscapes 512x1024 (official yan-hao-tian/VW configs/_base_/datasets/cityscapes.py): mmseg's pipeline (test at
# 2048x1024, a multiple of 64 already), 4 images per GPU.
_base_ = 'mmseg::_base_/datasets/cityscapes.py'
train_dataloader = dict(batch_size=4)
