"""Loading released weights through timm's entry points, with no network: `pretrained=True` from timm's cache (one
file per model), the error when the download fails, and `checkpoint_path=` on official key layouts.

Official files are laid out from the stored key fixtures (names and shapes of the released checkpoints).
"""
import json
import os
import urllib.error
from pathlib import Path
from typing import Dict

import pytest
import timm
import timm.models._hub as timm_hub
import torch

import hiervit  # noqa: F401  (registers the models)

FIXTURES = Path(__file__).parent / 'fixtures'


def _official(name: str) -> Dict[str, torch.Tensor]:
    keys = json.loads((FIXTURES / name).read_text())
    keys = keys.get('keys', keys)  # biformer's fixture also names its source
    g = torch.Generator().manual_seed(0)
    return {
        k: torch.randint(0, 9, (), generator=g) if k.endswith('num_batches_tracked') else torch.randn(s, generator=g)
        for k, s in keys.items()}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty timm/torch-hub cache under tmp_path, and every download failing as it does without network."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    calls = []

    def unreachable(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')

    monkeypatch.setattr(timm_hub, 'download_url_to_file', unreachable)
    cache = tmp_path / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    return cache, calls


@pytest.mark.parametrize('name,file_name', [
    ('nat_mini', 'nat_mini.pth'),
    ('dinat_s_tiny.shi_in1k', 'dinat_s_tiny_in1k_224.pth'),
    ('biformer_small', 'biformer_small_in1k.pth'),
])
def test_pretrained_offline_names_the_file_and_the_local_call(offline, name, file_name):
    cache, calls = offline
    with torch.device('meta'), pytest.raises(RuntimeError) as err:
        timm.create_model(name, pretrained=True)
    msg = str(err.value)
    url = timm.models.get_pretrained_cfg(name.split('.')[0]).url
    assert calls == [url if isinstance(url, str) else url[0]] and calls[0] in msg
    assert str(cache / file_name) in msg and 'URLError' in msg
    assert f"pretrained_cfg_overlay=dict(file='/path/to/{file_name}')" in msg


def test_biformer_variants_have_their_own_cache_files(offline):
    """The released URLs all end in `/content`; each variant must read its own file from the cache."""
    cache, calls = offline
    names = {timm.models.get_pretrained_cfg(n).url[1] for n in timm.list_models('biformer*', pretrained=True)}
    assert len(names) == len(timm.list_models('biformer*', pretrained=True))
    sd = _official('biformer_tiny_keys.json')
    torch.save({'model': sd}, cache / 'biformer_tiny_in1k.pth')
    model = timm.create_model('biformer_tiny', pretrained=True)  # from the cache, no download attempted
    assert not calls
    torch.testing.assert_close(model.stages[2].blocks[3].attn.qkv.weight, sd['stages.2.3.attn.qkv.qkv.weight'])
    with pytest.raises(RuntimeError, match='biformer_base_in1k.pth'):  # not biformer_tiny's file
        with torch.device('meta'):
            timm.create_model('biformer_base', pretrained=True)


@pytest.mark.parametrize('name,fixture', [
    ('nat_mini', 'nat_mini_keys.json'),
    ('dinat_s_tiny', 'dinat_s_tiny_keys.json'),
    ('biformer_tiny', 'biformer_tiny_keys.json'),
    ('cswin_tiny', 'cswin_tiny_keys.json'),
    ('l2vit_tiny', 'l2vit_tiny_keys.json'),
])
def test_checkpoint_path_loads_official_files(tmp_path, name, fixture):
    """`create_model(checkpoint_path=)` runs no filter in timm; the models convert official layouts on load (strictly:
    every key must land). On the meta device (names and shapes are what a strict load checks); values: below."""
    path = tmp_path / 'official.pth'
    torch.save({'model': {k: v.to('meta') for k, v in _official(fixture).items()}}, path)
    with torch.device('meta'):
        model = timm.create_model(name, checkpoint_path=str(path))
        model.load_state_dict(model.state_dict())  # a hiervit-layout state dict still loads as it is


def test_checkpoint_path_values_land_in_the_renamed_modules(tmp_path):
    sd = _official('biformer_tiny_keys.json')
    path = tmp_path / 'official.pth'
    torch.save({'model': sd}, path)
    model = timm.create_model('biformer_tiny', checkpoint_path=str(path))
    torch.testing.assert_close(model.head.fc.weight, sd['head.weight'])
    torch.testing.assert_close(model.stem[1].bn.running_mean, sd['downsample_layers.0.4.running_mean'])
    torch.testing.assert_close(model.stages[3].blocks[1].mlp.fc2.weight, sd['stages.3.1.mlp.3.weight'])


def test_checkpoint_path_official_classifier_of_another_size(tmp_path):
    """Converted official classifiers are checked against the model's (load_state_dict would report a bare size
    mismatch); as pretrained weights the same file starts a fresh classifier (timm drops it after the filter)."""
    sd = _official('cswin_tiny_keys.json')
    path = tmp_path / 'official.pth'
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r'head\.fc has 1000 classes, the model 10.*num_classes=1000'):
        timm.create_model('cswin_tiny', num_classes=10, checkpoint_path=str(path))
    model = timm.create_model('cswin_tiny', num_classes=10, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert model.head.fc.weight.shape == (10, 512)
    torch.testing.assert_close(model.levels[3].blocks[0].mlp.fc2.weight, sd['stage4.0.mlp.fc2.weight'])


def test_checkpoint_path_wrong_variant_names_keys(tmp_path):
    path = tmp_path / 'nat_mini.pth'
    torch.save({'model': _official('nat_mini_keys.json')}, path)
    with torch.device('meta'), pytest.raises(ValueError, match=r'levels\.2\.blocks\.6\..*nat_mini'):
        timm.create_model('nat_tiny', checkpoint_path=str(path))


def test_biformer_features_only_applies_extra_norms():
    """features_only maps are what the released dense backbone returns: each stage output through its LayerNorm2d."""
    model = timm.create_model('biformer_tiny', depths=(1, 1, 1, 1), n_win=4, features_only=True).eval()
    assert len(model.model.out_norms) == 4
    with torch.no_grad():
        for p in model.model.out_norms.parameters():
            p.normal_()
        x = torch.randn(1, 3, 64, 64)
        raw = model.model.forward_intermediates(x, intermediates_only=True)
        for f, r, ln in zip(model(x), raw, model.model.out_norms):
            torch.testing.assert_close(f, ln(r))


def test_prefetch_leaves_explicit_files_alone(offline, tmp_path):
    cache, calls = offline
    args = dict(depths=(1, 1, 1, 1), embed_dim=16, num_heads=(1, 1, 2, 2))
    sd = timm.create_model('nat_mini', **args).state_dict()
    path = tmp_path / 'mine.pth'
    torch.save(sd, path)
    model = timm.create_model('nat_mini', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **args)
    assert not calls and not os.listdir(cache)
    torch.testing.assert_close(model.head.fc.weight, sd['head.fc.weight'])


def test_checkpoint_key_check_names_keys_argument_and_variants():
    """One key check for every family: the classifier is exempt, the first conv only from the shape check (timm adapts
    it to in_chans later), unexpected output norms name the argument that adds them."""
    from hiervit.backbones._pretrained import check_checkpoint_keys
    target = {'stem.weight': torch.empty(8, 3, 3, 3), 'head.fc.weight': torch.empty(10, 8), 'norm.bias': torch.empty(8)}
    ok = {'stem.weight': torch.empty(8, 1, 3, 3), 'head.fc.weight': torch.empty(1000, 8), 'norm.bias': torch.empty(8)}
    check_checkpoint_keys(ok, target, 'Toy', reshapable=('stem.weight',))
    with pytest.raises(ValueError, match=r'1 mis-shaped \(first: stem\.weight \(8, 1, 3, 3\) vs model '
                                         r'\(8, 3, 3, 3\)\)'):
        check_checkpoint_keys(ok, target, 'Toy')
    dense = {'stem.weight': torch.empty(8, 3, 3, 3), 'out_norms.0.bias': torch.empty(8)}
    with pytest.raises(ValueError, match=r'^Checkpoint does not fit this Toy \(toy_a\): 1 missing '
                                         r'\(first: norm\.bias\); 1 unexpected \(first: out_norms\.0\.bias\)\. '
                                         r'Dense-task checkpoints need output_norms=True\. See toy_b\.$'):
        check_checkpoint_keys(dense, target, 'Toy (toy_a)', norms_arg='output_norms', variants='See toy_b.')
    with pytest.raises(ValueError, match=r'out_norms\.0\.bias\)\.$'):
        check_checkpoint_keys(dense, target, 'Toy')


def test_swin_vsa_checkpoint_filter_unwraps_and_names_what_does_not_fit():
    from hiervit.backbones.swin_vsa import checkpoint_filter_fn
    with torch.device('meta'):
        tiny, small = timm.create_model('swin_vsa_tiny'), timm.create_model('swin_vsa_small')
        dense = timm.create_model('swin_vsa_tiny', output_norms=True)
    sd = tiny.state_dict()
    converted = checkpoint_filter_fn({'state_dict_ema': {f'module.{k}': v for k, v in sd.items()}, 'model': {}}, tiny)
    assert all(converted[k] is v for k, v in sd.items()) and converted.keys() == sd.keys()
    with pytest.raises(ValueError, match=r'does not fit this Swin\+VSA \(swin_vsa_small\): \d+ missing \(first: '
                                         r'levels\.2\.blocks\.6\..*No official Swin\+VSA checkpoint'):
        checkpoint_filter_fn(sd, small)
    with pytest.raises(ValueError, match=r'unexpected \(first: out_norms\.0\..*need output_norms=True'):
        checkpoint_filter_fn(dense.state_dict(), tiny)
