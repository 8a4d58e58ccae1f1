# Cascade Mask R-CNN + FPN with the Swin recipe's box heads (4 shared convs + 1 fc, SyncBN, GIoU loss on decoded
# boxes), which the NAT/DiNAT detection configs use.
_base_ = 'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py'


def _bbox_head(target_stds):
    return dict(
        type='ConvFCBBoxHead', num_shared_convs=4, num_shared_fcs=1, in_channels=256, conv_out_channels=256,
        fc_out_channels=1024, roi_feat_size=7, num_classes=80,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=target_stds),
        reg_class_agnostic=False, reg_decoded_bbox=True, norm_cfg=dict(type='SyncBN', requires_grad=True),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=10.0))


model = dict(
    backbone=dict(_delete_=True, type='hiervit.TimmBackbone', model_name='nat_tiny', out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[64, 128, 256, 512]),
    roi_head=dict(bbox_head=[
        _bbox_head([0.1, 0.1, 0.2, 0.2]), _bbox_head([0.05, 0.05, 0.1, 0.1]),
        _bbox_head([0.033, 0.033, 0.067, 0.067])]))
del _bbox_head
