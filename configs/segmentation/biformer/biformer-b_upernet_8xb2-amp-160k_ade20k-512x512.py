# BiFormer-B + UperNet, ADE20K 512x512, 160k iterations, fp16; n_win=8, backbone drop path 0.4.
_base_ = [
    '../_base_/models/upernet_hiervit.py', 'mmseg::_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_160k_adamw.py', 'mmseg::_base_/default_runtime.py']
crop_size = (512, 512)
# released ImageNet-1k classification weights (README.md; the official configs set pretrained=None and
# their slurm_train.sh passes the file with --cfg-options model.pretrained=...)
pretrained = 'https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHI_XPhoadjaNxtO/root/content'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        type='hiervit.BiFormer', model_name='biformer_base', n_win=8, drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
train_dataloader = dict(batch_size=2)  # 8 GPUs x 2 images
# The released segmentation backbone converts its BatchNorms to SyncBN and trains them (no norm_eval); mmengine converts
# the model when training distributed.
sync_bn = 'torch'
