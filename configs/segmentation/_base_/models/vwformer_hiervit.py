# VWFormer (hiervit.VWHead) on a hiervit or timm backbone, as the official yan-hao-tian/VW
# mmsegmentation-custom/configs/_base_/models/vw_convnext.py and vw_swin.py: EncoderDecoder, VWHead with channels 512,
# nheads 1, short_cut True, dropout 0.1, SyncBN, cross-entropy; no auxiliary head (commented out in every official
# config); whole-image test. Family configs set the backbone and in_channels.
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
    pad_val=0, seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(type='hiervit.TimmBackbone', model_name='nat_tiny', out_indices=(0, 1, 2, 3)),
    decode_head=dict(
        type='hiervit.VWHead', in_channels=[64, 128, 256, 512], in_index=[0, 1, 2, 3], channels=512,
        dropout_ratio=0.1, num_classes=150, short_cut=True, nheads=1, norm_cfg=norm_cfg, align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
