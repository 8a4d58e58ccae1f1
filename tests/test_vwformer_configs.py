"""VWFormer configs (configs/segmentation/*/*_vwformer_*.py): the values of the official yan-hao-tian/VW files they
name, the backbone of each hiervit family's config equal to its UperNet (or FPN) config beside it, and, with a tiny
backbone on CPU, a few Runner iterations lowering the loss and a prediction per head type (VWHead, VWCityHead) plus
a loss + backward step and a prediction for the dynamic-size timm Swin. Every config builds in test_mm_configs.py;
the configs differ from the trained ones only in values checked here."""
import functools
import glob
import math
import os

import numpy as np
import pytest
import timm
import torch

pytest.importorskip('mmseg', reason='needs the OpenMMLab extras: pip install "hiervit[seg]"')

from hiervit.mm import install_tv_ops  # noqa: E402

install_tv_ops()

from mmengine.config import Config  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from test_mm_configs import _cached_external_config_lookup  # noqa: E402,F401  (memoised mmseg:: base lookups)
from test_mm_configs import ROOT, load_tiny  # noqa: E402

from hiervit.mm.bench import build_from_config  # noqa: E402

pytestmark = pytest.mark.mm
VW_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'segmentation', '*', '*_vwformer_*.py')))
VW = 'yan-hao-tian/VW@9bc1891 mmsegmentation-custom/configs/'


@pytest.fixture(scope='module', autouse=True)
def _one_thread():
    """Tiny shapes: intra-op threads only add overhead here, and stall badly when the machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Official values: the head type, its channels / nheads / short_cut, the optimizer, decay, warm-up, iterations, images
# per GPU, crop and loss scale of each file, and the timm weights each timm-backbone file names (hiervit families follow
# the ConvNeXt-T file of the same dataset; Swin Cityscapes has no official file: Swin-B's optimizer with the Cityscapes
# head settings, assumed).
_ADE_T = dict(source=VW + 'convnext/vw_convnext_tiny_fp16_512x512_160k_ade20k.py', head='hiervit.VWHead', nheads=1,
              short_cut=True, decay=(0.9, 'stage_wise', 6), crop=(512, 512), classes=150)
_CITY_T = dict(source=VW + 'convnext/vw_convnext_tiny_fp16_512x1024_160k_cityscapes.py', head='hiervit.VWCityHead',
               nheads=16, short_cut=False, decay=(0.9, 'stage_wise', 6), crop=(512, 1024), classes=19)
_SWIN = dict(decay=(0.85, 'layer_wise', None), checkpoint='timm/swin_base_patch4_window12_384.ms_in22k')
OFFICIAL = {
    'convnext/convnext-tiny_vwformer_4xb4-amp-160k_ade20k-512x512.py': dict(
        _ADE_T, drop_path_rate=0.4, checkpoint='timm/convnext_tiny.fb_in1k'),
    'convnext/convnext-tiny_vwformer_4xb4-amp-160k_cityscapes-512x1024.py': dict(
        _CITY_T, drop_path_rate=0.4, checkpoint='timm/convnext_tiny.fb_in1k'),
    'convnext/convnext-base_vwformer_4xb4-amp-160k_ade20k-640x640.py': dict(
        _ADE_T, source=VW + 'convnext/vw_convnext_base_fp16_640x640_160k_ade20k.py', decay=(0.9, 'stage_wise', 12),
        crop=(640, 640), drop_path_rate=0.4, checkpoint='timm/convnext_base.fb_in22k'),
    'swin/swin-base_vwformer_4xb4-amp-160k_ade20k-640x640.py': dict(
        {**_ADE_T, **_SWIN},
        source=VW + 'swin/vw_swin_base_patch4_window12_640x640_160k_ade20k_pretrain_384x384_22K.py',
        crop=(640, 640), drop_path_rate=0.3),
    'swin/swin-base_vwformer_4xb4-amp-160k_cityscapes-512x1024.py': dict(
        {**_CITY_T, **_SWIN}, source='assumed (see the file)', drop_path_rate=0.3),
}
for family in ('nat', 'dinat', 'dinat_s', 'biformer', 'cswin', 'l2vit', 's2aformer'):
    for path in VW_CONFIGS:
        rel = os.path.relpath(path, os.path.join(ROOT, 'segmentation'))
        if rel.startswith(family + '/'):
            # drop path and weights: those of the family config beside it (compared below)
            OFFICIAL[rel] = dict(_CITY_T if 'cityscapes' in rel else _ADE_T, drop_path_rate=None, checkpoint=None)


def _rel(path):
    return os.path.relpath(path, os.path.join(ROOT, 'segmentation'))


def test_every_vwformer_config_has_a_row():
    assert sorted(_rel(p) for p in VW_CONFIGS) == sorted(OFFICIAL) and len(VW_CONFIGS) == 19


@functools.lru_cache(maxsize=None)
def _backbone_of(path):
    return Config.fromfile(path).model.backbone


@pytest.mark.parametrize('path', VW_CONFIGS, ids=_rel)
def test_values_match_the_official_file(path):
    """Each row's values; a hiervit family's backbone equals that of the family config the file names beside it."""
    row, cfg, text = OFFICIAL[_rel(path)], Config.fromfile(path), open(path).read()
    if 'Backbone as ' in text:
        beside = text.split('Backbone as ')[1].split(' beside it')[0]
        assert cfg.model.backbone == _backbone_of(os.path.join(os.path.dirname(path), beside))
    head = cfg.model.decode_head
    assert (head.type, head.channels, head.nheads, head.short_cut, head.dropout_ratio, head.num_classes) == (
        row['head'], 512, row['nheads'], row['short_cut'], 0.1, row['classes']), row['source']
    assert cfg.model.get('auxiliary_head') is None and cfg.model.test_cfg.mode == 'whole'
    ow = cfg.optim_wrapper
    assert (ow.type, ow.loss_scale, ow.optimizer.type, ow.optimizer.lr, ow.optimizer.betas, ow.optimizer.weight_decay
            ) == ('AmpOptimWrapper', 'dynamic', 'AdamW', 1e-4, (0.9, 0.999), 0.05), row['source']
    pw = ow.paramwise_cfg
    assert (pw.layer_decay_rate, pw.get('layer_decay_type', 'layer_wise'), pw.get('num_layers')) == row['decay']
    warm, poly = cfg.param_scheduler
    assert (warm.type, warm.start_factor, warm.end, poly.type, poly.power, poly.eta_min, poly.end) == (
        'LinearLR', 1e-6, 1500, 'PolyLR', 1.0, 0.0, 160000)
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.batch_size == 4
    assert tuple(cfg.crop_size) == row['crop'] and tuple(cfg.model.data_preprocessor.size) == row['crop']
    if row['drop_path_rate'] is not None:
        assert cfg.model.backbone.drop_path_rate == row['drop_path_rate']
    if row['checkpoint'] is not None:  # timm's weights, named in the file (a tag timm knows; nothing is downloaded)
        assert cfg.model.backbone.init_cfg == dict(type='Pretrained', checkpoint=row['checkpoint'])
        name = row['checkpoint'][len('timm/'):]
        assert name.split('.')[0] == cfg.model.backbone.model_name and name in timm.list_pretrained(name)
        assert name.split('.')[-1] in text
    if row['classes'] == 150:  # ADE20K test images resized to a multiple of 64 (the head's 8x8 window grid)
        assert dict(type='ResizeToMultiple', size_divisor=64) in cfg.test_dataloader.dataset.pipeline


def test_timm_weights_load_through_the_adapter(tmp_path):
    """`checkpoint='timm/<model>.<tag>'` (the timm-backbone configs' init_cfg) loads timm's weights into
    TimmBackbone; offline here through timm's `pretrained_cfg_overlay=dict(file=...)`, a ConvNeXt as in the configs."""
    from hiervit.mm import TimmBackbone
    source = timm.create_model('convnext_atto', depths=(1, 1, 1, 1))
    with torch.no_grad():
        for t in source.state_dict().values():
            if t.is_floating_point():
                t.normal_()
    path = tmp_path / 'convnext_atto.pth'
    torch.save(source.state_dict(), path)
    backbone = TimmBackbone('convnext_atto', depths=(1, 1, 1, 1), init_cfg=dict(
        type='Pretrained', checkpoint='timm/convnext_atto.d2_in1k', pretrained_cfg_overlay=dict(file=str(path))))
    backbone.init_weights()
    want = source.state_dict()
    for k, v in backbone.model.state_dict().items():
        torch.testing.assert_close(v, want[k], msg=k)
    with pytest.raises(ValueError, match="is not a convnext_atto weight"):
        TimmBackbone('convnext_atto', init_cfg=dict(type='Pretrained', checkpoint='timm/convnext_tiny.fb_in1k')
                     ).init_weights()


def _tiny(path):
    cfg = load_tiny(path)
    cfg.model.data_preprocessor.size = (128, 128)  # the 1/8 map 16 x 16: 2 x 2 windows
    cfg.model.decode_head.channels = 64  # the heads at 512 channels are tested against the official ones elsewhere
    return cfg


def _predicts(model, num_classes):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    model.eval()
    sample = SegDataSample(metainfo=dict(img_shape=(64, 128), ori_shape=(64, 128), pad_shape=(64, 128)))
    sample.gt_sem_seg = PixelData(data=torch.zeros(1, 64, 128, dtype=torch.long))
    inputs = [torch.randint(0, 256, (3, 64, 128), dtype=torch.uint8)]
    with torch.no_grad():
        (res,) = model(**model.data_preprocessor(dict(inputs=inputs, data_samples=[sample]), False), mode='predict')
    assert res.pred_sem_seg.data.shape == (1, 64, 128)
    assert int(res.pred_sem_seg.data.max()) < num_classes


def test_swin_loss_backward_and_predict():
    """timm's Swin at the configs' dynamic input size (VWHead; the Runner tests below use ConvNeXt)."""
    cfg = _tiny(os.path.join(ROOT, 'segmentation', 'swin', 'swin-base_vwformer_4xb4-amp-160k_ade20k-640x640.py'))
    model = build_from_config(cfg)
    model.init_weights()
    model.train()
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    packed = dict(inputs=[], data_samples=[])
    for h, w in ((128, 128), (112, 96)):  # padded to 128 x 128
        packed['inputs'].append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(128, 128)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, cfg.model.decode_head.num_classes, (1, h, w)))
        packed['data_samples'].append(sample)
    losses = model(**model.data_preprocessor(packed, True), mode='loss')
    loss, _ = model.parse_losses(losses)
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    _predicts(model, cfg.model.decode_head.num_classes)


class _LossRecorder(Hook):
    def __init__(self):
        self.losses = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append(float(outputs['loss'].detach()))


@pytest.fixture(scope='module')
def coins(tmp_path_factory):
    """scikit-image's coins photograph and its coins (Otsu threshold) as class 1 of 2, as a one-image dataset."""
    skimage = pytest.importorskip('skimage', reason='needs scikit-image (test data)')
    import cv2
    from skimage import filters
    root = tmp_path_factory.mktemp('coins')
    img = skimage.data.coins()[:256, :384]
    os.makedirs(root / 'img')
    os.makedirs(root / 'ann')
    cv2.imwrite(str(root / 'img' / 'coins.png'), np.repeat(img[:, :, None], 3, 2))
    cv2.imwrite(str(root / 'ann' / 'coins.png'), (img > filters.threshold_otsu(img)).astype(np.uint8))
    return root


ITERS = 12
# one config per head type; the other configs differ from these in values checked above (and all build)
RUNNER = ['convnext/convnext-tiny_vwformer_4xb4-amp-160k_ade20k-512x512.py',
          'convnext/convnext-tiny_vwformer_4xb4-amp-160k_cityscapes-512x1024.py']


@pytest.mark.parametrize('rel', RUNNER)
def test_runner_lowers_loss_on_coins(rel, coins, tmp_path):
    """The config with a tiny backbone through the Runner with hiervit's stage-wise decay constructor on 64 x 64
    crops of the coins photograph (1/8 map 8 x 8: one-pixel windows, the smallest the heads take), then a
    prediction."""
    from mmengine.runner import Runner
    cfg = _tiny(os.path.join(ROOT, 'segmentation', rel))
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.model.decode_head.num_classes = 2
    cfg.model.decode_head.norm_cfg = dict(type='BN', requires_grad=True)
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                dict(type='RandomCrop', crop_size=(64, 64)), dict(type='PackSegInputs')]
    dataset = dict(type='BaseSegDataset', data_root=str(coins), data_prefix=dict(img_path='img', seg_map_path='ann'),
                   img_suffix='.png', seg_map_suffix='.png', metainfo=dict(classes=('bg', 'coin')), pipeline=pipeline)
    cfg.train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                                sampler=dict(type='InfiniteSampler', shuffle=False), dataset=dataset)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=ITERS, val_interval=1000)
    for key in ('val_dataloader', 'val_evaluator', 'val_cfg', 'test_dataloader', 'test_evaluator', 'test_cfg'):
        cfg[key] = None
    cfg.optim_wrapper.type = 'OptimWrapper'  # fp32 on CPU; the config's optimizer, constructor and decay otherwise
    cfg.optim_wrapper.pop('loss_scale')
    cfg.optim_wrapper.optimizer.lr = 1e-3
    cfg.param_scheduler = None
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir = str(tmp_path / 'work')
    cfg.randomness = dict(seed=0)
    cfg.launcher = 'none'
    recorder = _LossRecorder()
    runner = Runner.from_cfg(cfg)
    runner.register_hook(recorder, priority='LOWEST')
    runner.train()
    losses = recorder.losses
    assert len(losses) == ITERS and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    scales = {round(g.get('lr_scale', 1.), 6) for g in runner.optim_wrapper.optimizer.param_groups}
    assert {round(0.9 ** k, 6) for k in (3, 4, 5, 6)} <= scales  # stage-wise: 0.9^(7 - (stage + 1)) per stage
    assert type(runner.model.decode_head).__name__ == cfg.model.decode_head.type.split('.')[-1]
    _predicts(runner.model, 2)



def test_bench_heads_compares_vwformer_with_upernet():
    from hiervit.mm.bench import bench_heads
    folder = os.path.join(ROOT, 'segmentation', 'nat')
    paths = [os.path.join(folder, 'nat-tiny_vwformer_4xb4-amp-160k_ade20k-512x512.py'),
             os.path.join(folder, 'nat-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py')]
    # nat_mini has nat_tiny's widths: only the depth shrinks; both heads at 64 channels (their structure is the
    # configs', the FLOP ratio at equal width is still the paper's claim)
    rows = bench_heads(paths, img_size=64, repeats=1, cfg_options={
        'model.backbone.model_name': 'nat_mini', 'model.backbone.depths': (1, 1, 1, 1),
        'model.backbone.init_cfg': None, 'model.decode_head.channels': 64})
    assert [r['head'] for r in rows] == ['VWHead', 'UPerHead']
    for r in rows:  # times are measured (positive), never compared: this machine is shared
        assert r['head_gflops'] > 0 and r['head_peak_mib'] > 0 and r['head_ms'] > 0 and r['fwd_ms'] > 0
    assert rows[0]['head_gflops'] < rows[1]['head_gflops']  # the paper's claim: well under UperNet's cost
