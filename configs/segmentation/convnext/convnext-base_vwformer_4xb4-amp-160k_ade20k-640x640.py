# ConvNeXt-B (timm) + VWFormer (hiervit.VWHead), ade20k 640x640, 160k iterations, 4 images per GPU, fp16.
# Official yan-hao-tian/VW mmsegmentation-custom/configs/convnext/vw_convnext_base_fp16_640x640_160k_ade20k.py. The
# official backbone is mmcls's ConvNeXt, which adds a norm per output (timm's model does not); its released file is in
# that layout, which TimmBackbone does not convert, so `pretrained` is unset: give a timm-layout file of the same
# weights (timm's convnext_base.fb_in22k).
_base_ = [
    '../_base_/models/vwformer_hiervit.py', '../_base_/datasets/vwformer_ade20k_640x640.py',
    '../_base_/schedules/schedule_160k_adamw_vwformer.py', 'mmseg::_base_/default_runtime.py']
crop_size = (640, 640)
pretrained = None
# official file: https://download.openmmlab.com/mmclassification/v0/convnext/downstream/convnext-base_3rdparty_in21k_20220301-262fd037.pth  # noqa: E501
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.TimmBackbone', model_name='convnext_base', drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained) if pretrained else None),
    decode_head=dict(in_channels=[128, 256, 512, 1024], num_classes=150))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))  # official: num_layers 12
