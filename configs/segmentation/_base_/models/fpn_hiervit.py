# Semantic FPN (mmseg's reference FPN + FPNHead) on a hiervit backbone.
_base_ = 'mmseg::_base_/models/fpn_r50.py'
model = dict(
    pretrained=None,  # the base's ResNet checkpoint; hiervit backbones load through init_cfg
    backbone=dict(_delete_=True, type='hiervit.TimmBackbone', model_name='biformer_small', out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[64, 128, 256, 512]),
    decode_head=dict(num_classes=150))
