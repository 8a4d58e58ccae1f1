"""Released checkpoints in mmdet/mmseg: detector/segmentor state dicts in the official key layouts (`backbone.levels.*`,
`backbone.norm{i}`, `backbone.extra_norms.*`, ...) load into our detectors through the adapter's pre-hook (the path of
`load_from=` and `tools/test.py`), keys that do not fit raise, and `init_cfg` loads classification files, from
`--cfg-options` and from URLs via timm's cache, with no network in the tests.
"""
import json
import os
import urllib.error
from pathlib import Path
from typing import Dict

import pytest
import torch
import torch.nn as nn

pytest.importorskip('mmengine', reason='needs the OpenMMLab extras: pip install "hiervit[det,seg]"')

import timm  # noqa: E402
import timm.models._hub as timm_hub  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.runner.checkpoint import load_checkpoint, load_state_dict  # noqa: E402

import hiervit.mm.backbone as mm_backbone  # noqa: E402
from hiervit.registry import MODELS  # noqa: E402

pytestmark = pytest.mark.mm

FIXTURES = Path(__file__).parent / 'fixtures'
CONFIGS = Path(__file__).parent.parent / 'configs'


def _fixture(name: str, device: str = 'meta') -> Dict[str, torch.Tensor]:
    """An official classification checkpoint laid out from the stored names and shapes."""
    keys = json.loads((FIXTURES / name).read_text())
    keys = keys.get('keys', keys)
    if device == 'meta':
        return {k: torch.empty(s, device='meta') for k, s in keys.items()}
    g = torch.Generator().manual_seed(0)
    return {k: torch.randint(0, 9, (), generator=g) if k.endswith('num_batches_tracked')
            else torch.randn(s, generator=g) for k, s in keys.items()}


class _Neck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.lateral_convs = nn.ModuleList([nn.Sequential()])
        self.lateral_convs[0].add_module('conv', nn.Conv2d(c, 8, 1))


class _Detector(nn.Module):
    """The parts of an mmdet detector the loading path sees: `backbone`, `neck`, a head."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.neck = _Neck(backbone.out_channels[0])
        self.rpn_head = nn.Conv2d(8, 3, 1)


def _dense_official(backbone_sd: Dict[str, torch.Tensor], model: _Detector) -> Dict[str, torch.Tensor]:
    """A whole-detector state dict: the official backbone keys under `backbone.`, plus the neck/head keys."""
    sd = {f'backbone.{k}': v for k, v in backbone_sd.items()}
    sd.update({k: v for k, v in model.state_dict().items() if not k.startswith('backbone.')})
    return sd


def _nat_family_dense(cls_sd: Dict[str, torch.Tensor], dims) -> Dict[str, torch.Tensor]:
    """NAT/DiNAT/DiNAT_s mmdet/mmseg backbone layout: the classifier's keys without `head`/`norm`, plus `norm{i}`."""
    out = {k: v for k, v in cls_sd.items() if not k.startswith(('head.', 'norm.'))}
    like = next(iter(cls_sd.values()))
    for i, c in enumerate(dims):
        out[f'norm{i}.weight'] = torch.rand(c, device=like.device) + 0.5
        out[f'norm{i}.bias'] = torch.randn(c, device=like.device)
    return out


def _biformer_dense(cls_sd: Dict[str, torch.Tensor], dims) -> Dict[str, torch.Tensor]:
    """BiFormer_mm layout: no `head`/final `norm`, LayerNorm2d `extra_norms.{i}`."""
    out = {k: v for k, v in cls_sd.items() if not k.startswith(('head.', 'norm.'))}
    like = next(iter(cls_sd.values()))
    for i, c in enumerate(dims):
        out[f'extra_norms.{i}.weight'] = torch.rand(c, device=like.device) + 0.5
        out[f'extra_norms.{i}.bias'] = torch.randn(c, device=like.device)
    return out


RELEASED = [
    # (adapter type, model, official classification fixture, dense layout, widths)
    ('hiervit.NAT', 'nat_mini', 'nat_mini_keys.json', _nat_family_dense, (64, 128, 256, 512)),
    ('hiervit.DiNAT', 'dinat_mini', 'nat_mini_keys.json', _nat_family_dense, (64, 128, 256, 512)),
    ('hiervit.DiNATs', 'dinat_s_tiny', 'dinat_s_tiny_keys.json', _nat_family_dense, (96, 192, 384, 768)),
    ('hiervit.BiFormer', 'biformer_tiny', 'biformer_tiny_keys.json', _biformer_dense, (64, 128, 256, 512)),
]


@pytest.mark.parametrize('type_,name,fixture,dense,dims', RELEASED, ids=[r[1] for r in RELEASED])
def test_released_dense_layout_loads_strictly(type_, name, fixture, dense, dims):
    """Every key of a released detector checkpoint lands (names and shapes, on the meta device)."""
    with torch.device('meta'):
        det = _Detector(MODELS.build(dict(type=type_, model_name=name)))
    sd = _dense_official(dense(_fixture(fixture), dims), det)
    load_state_dict(det, sd, strict=True)  # mmengine's loader (load_from, tools/test.py); raises on any leftover


def test_released_nat_checkpoint_values_through_load_from(tmp_path):
    """`load_from=` path (mmengine load_checkpoint, non-strict) with values: levels, norm{i} -> output norms."""
    det = _Detector(MODELS.build(dict(type='hiervit.NAT', model_name='nat_mini')))
    cls_sd = _fixture('nat_mini_keys.json', device='cpu')
    sd = _dense_official(_nat_family_dense(cls_sd, (64, 128, 256, 512)), det)
    sd['neck.lateral_convs.0.conv.weight'] = torch.randn_like(sd['neck.lateral_convs.0.conv.weight'])
    torch.save({'meta': {}, 'state_dict': sd}, tmp_path / 'cascade_mask_rcnn_nat_mini.pth')
    load_checkpoint(det, str(tmp_path / 'cascade_mask_rcnn_nat_mini.pth'), map_location='cpu', strict=False)
    m = det.backbone.model
    torch.testing.assert_close(m.levels[2].blocks[5].attn.qkv.weight, sd['backbone.levels.2.blocks.5.attn.qkv.weight'])
    torch.testing.assert_close(m.out_norms[1].bias, sd['backbone.norm1.bias'])
    torch.testing.assert_close(m.norm.weight, sd['backbone.norm3.weight'])  # the last level's output norm
    torch.testing.assert_close(det.neck.lateral_convs[0].conv.weight, sd['neck.lateral_convs.0.conv.weight'])


def test_released_biformer_checkpoint_values_through_load_from(tmp_path):
    det = _Detector(MODELS.build(dict(type='hiervit.BiFormer', model_name='biformer_tiny', n_win=8)))
    sd = _dense_official(_biformer_dense(_fixture('biformer_tiny_keys.json', device='cpu'), (64, 128, 256, 512)), det)
    torch.save({'state_dict': sd}, tmp_path / 'upernet_biformer_tiny.pth')
    load_checkpoint(det, str(tmp_path / 'upernet_biformer_tiny.pth'), map_location='cpu', strict=False)
    m = det.backbone.model
    torch.testing.assert_close(m.out_norms[3].weight, sd['backbone.extra_norms.3.weight'])
    torch.testing.assert_close(m.stages[2].blocks[7].attn.proj.weight, sd['backbone.stages.2.7.attn.wo.weight'])
    torch.testing.assert_close(m.stem[0].bn.running_var, sd['backbone.downsample_layers.0.1.running_var'])


def test_backbone_keys_that_do_not_fit_raise_and_name_them():
    with torch.device('meta'):
        tiny = _Detector(MODELS.build(dict(type='hiervit.NAT', model_name='nat_tiny')))
        mini = _Detector(MODELS.build(dict(type='hiervit.NAT', model_name='nat_mini')))
    mini_sd = _dense_official(_nat_family_dense(_fixture('nat_mini_keys.json'), (64, 128, 256, 512)), mini)
    # another variant's checkpoint: mmengine's non-strict load would leave the missing blocks random
    with pytest.raises(ValueError, match=r'levels\.2\.blocks\.6\.'):
        load_state_dict(tiny, mini_sd, strict=False)
    # a damaged checkpoint of the right variant
    del mini_sd['backbone.norm2.weight']
    with pytest.raises(ValueError, match=r'out_norms\.2\.weight'):
        load_state_dict(mini, mini_sd, strict=False)
    # checkpoints saved by this adapter (backbone.model.*) are checked the same way
    ours = {k: v for k, v in mini.state_dict().items() if 'levels.3.blocks.4.' not in k}
    with pytest.raises(ValueError, match=r'missing \[\'levels\.3\.blocks\.4\.'):
        load_state_dict(mini, ours, strict=False)
    load_state_dict(mini, mini.state_dict(), strict=True)


# ---------------------------------------------------------------------------------------------------------------------
# init_cfg from the configs: the `--cfg-options` override, the random-init warning, URLs through timm's cache.

TINY_NAT = {'model.backbone.depths': (1, 1, 1, 1), 'model.backbone.embed_dim': 16,
            'model.backbone.num_heads': (1, 1, 2, 2)}
NAT_CONFIG = CONFIGS / 'detection' / 'nat' / 'mask-rcnn_nat-mini_fpn_amp-ms-crop-3x_coco.py'


def _backbone_from_config(path: Path, options: Dict) -> nn.Module:
    cfg = Config.fromfile(str(path))
    cfg.merge_from_dict(options)  # what tools/train.py does with --cfg-options
    return MODELS.build(cfg.model.backbone)


@pytest.fixture
def logged(monkeypatch):
    lines = []
    original = mm_backbone.print_log

    def capture(msg, *args, **kwargs):
        lines.append(msg)
        original(msg, *args, **kwargs)

    monkeypatch.setattr(mm_backbone, 'print_log', capture)
    return lines


def test_cfg_options_init_cfg_checkpoint_loads_a_local_official_file(tmp_path, logged):
    ours = timm.create_model('nat_mini', **{k.split('.')[-1]: v for k, v in TINY_NAT.items()})
    # official classification layout: the classifier is `head`, not `head.fc`
    official = {k.replace('head.fc.', 'head.'): torch.randn_like(v) for k, v in ours.state_dict().items()}
    path = tmp_path / 'nat_mini.pth'
    torch.save({'model': official}, path)
    backbone = _backbone_from_config(NAT_CONFIG, {**TINY_NAT, 'model.backbone.init_cfg.checkpoint': str(path)})
    backbone.init_weights()
    torch.testing.assert_close(backbone.model.levels[1].blocks[0].attn.rpb, official['levels.1.blocks.0.attn.rpb'])
    for ln in [*backbone.model.out_norms, backbone.model.norm]:  # all output norms start fresh (official norm{i})
        assert torch.equal(ln.weight, torch.ones_like(ln.weight)) and torch.equal(ln.bias, torch.zeros_like(ln.bias))
    assert any(f'from {path}' in line for line in logged)


def test_random_init_is_logged(logged):
    backbone = _backbone_from_config(NAT_CONFIG, {**TINY_NAT, 'model.backbone.init_cfg': None})
    backbone.init_weights()
    assert any('random initialisation' in line for line in logged)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))

    def unreachable(url, *args, **kwargs):
        raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')

    monkeypatch.setattr(timm_hub, 'download_url_to_file', unreachable)
    cache = tmp_path / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    return cache


def test_config_url_offline_names_the_file_and_the_override(offline):
    backbone = _backbone_from_config(NAT_CONFIG, TINY_NAT)
    assert backbone.init_cfg['checkpoint'] == 'https://shi-labs.com/projects/nat/checkpoints/CLS/nat_mini.pth'
    with pytest.raises(RuntimeError) as err:
        backbone.init_weights()
    msg = str(err.value)
    assert str(offline / 'nat_mini.pth') in msg and '--cfg-options model.backbone.init_cfg.checkpoint=' in msg


def test_config_url_reads_timm_cache_under_the_registered_file_name(offline):
    """BiFormer's released URLs end in `/content`: the adapter uses the cache name timm's pretrained cfg registers."""
    args = dict(depths=(1, 1, 1, 1), embed_dims=(32, 64, 128, 256), n_win=4)
    sd = timm.create_model('biformer_tiny', **args).state_dict()
    torch.save({'model': sd}, offline / 'biformer_tiny_in1k.pth')
    url = timm.models.get_pretrained_cfg('biformer_tiny').url[0]
    backbone = MODELS.build(dict(type='hiervit.BiFormer', model_name='biformer_tiny', **args,
                                 init_cfg=dict(type='Pretrained', checkpoint=url)))
    backbone.init_weights()
    torch.testing.assert_close(backbone.model.stages[1].blocks[0].attn.qkv.weight,
                               sd['stages.1.blocks.0.attn.qkv.weight'])
    assert sorted(os.listdir(offline)) == ['biformer_tiny_in1k.pth']
