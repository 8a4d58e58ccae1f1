# RetinaNet + FPN (mmdet's reference model, P3-P7 from stages 2-4) on a hiervit backbone.
_base_ = 'mmdet::_base_/models/retinanet_r50_fpn.py'
model = dict(
    backbone=dict(_delete_=True, type='hiervit.TimmBackbone', model_name='biformer_small', out_indices=(1, 2, 3)),
    neck=dict(in_channels=[128, 256, 512], start_level=0, num_outs=5))
