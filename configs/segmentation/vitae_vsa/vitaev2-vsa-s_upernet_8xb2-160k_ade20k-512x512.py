# ViTAEv2*-S+VSA + UperNet, ADE20K 512x512, 160k iterations, 8 GPUs x 2 images. The repository reports no ADE20K
# result and released no segmentation code: [assumption] every value, the Swin UperNet protocol (schedule file), the
# backbone drop path 0.1 (the ImageNet value) and the detection code's VSA rule (centred padding).
_base_ = [
    '../_base_/models/upernet_hiervit.py', 'mmseg::_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_160k_adamw_vsa.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 512)
# released ImageNet-1k classification weights (README OneDrive link; converted by the family's checkpoint filter)
pretrained = 'https://api.onedrive.com/v1.0/shares/s!AimBgYV7JjTlgcgB0Xlyc3U4WO11AQ/root/content'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.ViTAEv2VSA', model_name='vitaev2_vsa_s', drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
train_dataloader = dict(batch_size=2)
