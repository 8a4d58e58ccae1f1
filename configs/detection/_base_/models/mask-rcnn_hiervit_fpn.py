# Mask R-CNN + FPN (mmdet's reference model) on a hiervit backbone; family configs set model_name and drop path.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'
model = dict(
    backbone=dict(_delete_=True, type='hiervit.TimmBackbone', model_name='nat_tiny', out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[64, 128, 256, 512]))
