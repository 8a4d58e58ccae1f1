# ConvNeXt-T (timm) + VWFormer (hiervit.VWHead), ade20k 512x512, 160k iterations, 4 images per GPU, fp16.
# Official yan-hao-tian/VW mmsegmentation-custom/configs/convnext/vw_convnext_tiny_fp16_512x512_160k_ade20k.py.
# Backbone weights: timm's convnext_tiny.fb_in1k, the official ImageNet-1k ConvNeXt-T release that the official file
# starts from (its checkpoint, below, is mmcls's conversion of that release's non-EMA weights; timm ships the EMA
# weights of the same run, convnext_tiny_1k_224_ema.pth, and no non-EMA tag). The official backbone is mmcls's
# ConvNeXt, which adds a norm per output (timm's model does not); those norms start fresh here.
_base_ = [
    '../_base_/models/vwformer_hiervit.py', '../_base_/datasets/vwformer_ade20k.py',
    '../_base_/schedules/schedule_160k_adamw_vwformer.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 512)
pretrained = 'timm/convnext_tiny.fb_in1k'  # timm's weights (see above); or a path / URL
# official file: https://download.openmmlab.com/mmclassification/v0/convnext/downstream/convnext-tiny_3rdparty_32xb128-noema_in1k_20220301-795e9634.pth  # noqa: E501
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.TimmBackbone', model_name='convnext_tiny', drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150))
