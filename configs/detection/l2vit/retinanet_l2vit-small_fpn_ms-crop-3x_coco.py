# L²ViT-S + RetinaNet (FPN, P3-P7 from stages 2-4), COCO 3x, DETR-style multi-scale + crop, fp32.
# Official values: ChuanyangZheng/L2ViT@fad0341
#   object_detection/configs/L2ViT/retinanet_3x_l2vit_v0_small_coco.py (drop path 0.2;
# AdamW lr 1e-4, wd 0.05, no clipping, no fp16, 36 epochs, steps 27/33 on mmdet 2's schedule_1x.py with its
# 500-iteration linear warm-up from 0.001: the same schedule as DaViT's, shared here).
_base_ = [
    '../_base_/models/retinanet_hiervit_fpn.py', '../_base_/datasets/coco_detection_ms-crop.py',
    '../_base_/schedules/schedule_3x_adamw_davit.py', 'mmdet::_base_/default_runtime.py']
# released ImageNet-1k classification weights (EMA); the official configs set pretrained=None and take the file
# from the command line
pretrained = 'https://github.com/ChuanyangZheng/L2ViT/releases/download/v1.0/L2ViT-Small-checkpoint-best-ema.pth'
model = dict(
    backbone=dict(
        type='hiervit.L2ViT', model_name='l2vit_small', drop_path_rate=0.2, out_indices=(1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768]))
