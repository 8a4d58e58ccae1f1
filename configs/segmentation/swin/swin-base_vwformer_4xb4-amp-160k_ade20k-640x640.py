# Swin-B 384 window 12 (timm) + VWFormer (hiervit.VWHead), ade20k 640x640, 160k iterations, 4 images per GPU, fp16.
# Official yan-hao-tian/VW
# mmsegmentation-custom/configs/swin/vw_swin_base_patch4_window12_640x640_160k_ade20k_pretrain_384x384_22K.py.
# Backbone weights: timm's swin_base_patch4_window12_384.ms_in22k (Microsoft's swin_base_patch4_window12_384_22k.pth,
# ImageNet-22k at 384 px): the paper's Swin-B rows are ImageNet-22k pre-trained and the official file's name says
# pretrain_384x384_22K, while that file's checkpoint URL (below) is mmseg's conversion of the ImageNet-1k 384 px
# weights (mmseg's own in1k-384x384-pre Swin config uses it; timm's ms_in1k tag); we follow the paper. The official
# backbone is mmseg's SwinTransformer, which adds a norm per output (timm's model does not); those norms start fresh.
_base_ = [
    '../_base_/models/vwformer_hiervit.py', '../_base_/datasets/vwformer_ade20k_640x640.py',
    '../_base_/schedules/schedule_160k_adamw_vwformer.py', 'mmseg::_base_/default_runtime.py']
crop_size = (640, 640)
pretrained = 'timm/swin_base_patch4_window12_384.ms_in22k'  # timm's weights (see above); or a path / URL
# official file: https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/swin/swin_base_patch4_window12_384_20220317-55b0104a.pth  # noqa: E501
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.TimmBackbone', model_name='swin_base_patch4_window12_384', drop_path_rate=0.3,
        strict_img_size=False, dynamic_img_size=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024], num_classes=150))
# official: LearningRateDecayOptimizerConstructor decay_type='layer_wise', decay_rate 0.85, num_layers 12; here
# layer-wise 0.85 over timm's per-block groups (the official groups two blocks of stage 3 per layer)
optim_wrapper = dict(paramwise_cfg=dict(_delete_=True, layer_decay_rate=0.85))
