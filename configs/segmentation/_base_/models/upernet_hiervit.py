# UperNet + FCN auxiliary head (mmseg's Swin reference model, SyncBN heads) on a hiervit backbone; family configs set
# model_name, drop path and the head widths.
_base_ = 'mmseg::_base_/models/upernet_swin.py'
model = dict(
    backbone=dict(_delete_=True, type='hiervit.TimmBackbone', model_name='nat_tiny', out_indices=(0, 1, 2, 3)),
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150))
