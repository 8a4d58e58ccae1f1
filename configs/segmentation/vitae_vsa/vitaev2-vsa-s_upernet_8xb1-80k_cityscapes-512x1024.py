# ViTAEv2*-S+VSA + UperNet, Cityscapes 512x1024 crops, 80k iterations. README (the paper's segmentation benchmark):
# 82.2 mIoU (83.0 multi-scale); 40k: 81.4. No segmentation code or config was released: published are the model,
# dataset, crop and schedule length; [assumption] everything else, Swin's UperNet recipe (schedule file), 8 GPUs x 1
# image, the backbone drop path 0.1 (the ImageNet value) and the detection code's VSA rule (centred padding).
_base_ = [
    '../_base_/models/upernet_hiervit.py', 'mmseg::_base_/datasets/cityscapes.py',
    '../_base_/schedules/schedule_80k_adamw_vsa.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 1024)
# released ImageNet-1k classification weights (README OneDrive link; converted by the family's checkpoint filter)
pretrained = 'https://api.onedrive.com/v1.0/shares/s!AimBgYV7JjTlgcgB0Xlyc3U4WO11AQ/root/content'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.ViTAEv2VSA', model_name='vitaev2_vsa_s', drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=19),
    auxiliary_head=dict(in_channels=256, num_classes=19))
train_dataloader = dict(batch_size=1)
