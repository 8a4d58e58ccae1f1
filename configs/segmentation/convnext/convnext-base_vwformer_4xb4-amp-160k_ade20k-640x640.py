# ConvNeXt-B (timm) + VWFormer (hiervit.VWHead), ade20k 640x640, 160k iterations, 4 images per GPU, fp16.
# Official yan-hao-tian/VW mmsegmentation-custom/configs/convnext/vw_convnext_base_fp16_640x640_160k_ade20k.py.
# Backbone weights: timm's convnext_base.fb_in22k, the same file as the official one below (the official ImageNet-22k
# ConvNeXt-B release convnext_base_22k_224.pth, mmcls's conversion there). The official backbone is mmcls's ConvNeXt,
# which adds a norm per output (timm's model does not); those norms start fresh here.
_base_ = [
    '../_base_/models/vwformer_hiervit.py', '../_base_/datasets/vwformer_ade20k_640x640.py',
    '../_base_/schedules/schedule_160k_adamw_vwformer.py', 'mmseg::_base_/default_runtime.py']
crop_size = (640, 640)
pretrained = 'timm/convnext_base.fb_in22k'  # timm's weights (see above); or a path / URL
# official file: https://download.openmmlab.com/mmclassification/v0/convnext/downstream/convnext-base_3rdparty_in21k_20220301-262fd037.pth  # noqa: E501
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.TimmBackbone', model_name='convnext_base', drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024], num_classes=150))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))  # official: num_layers 12
