"""The timm model contract, checked on every model hiervit registers (every family, present and future).

What timm's own model tests check (forward, backward, default_cfg consistency, features_only, forward_intermediates,
pruning), written for this package. Every registered variant gets the cheap structural checks, built and run on the
meta device (shapes only); the smallest variant of each family gets the full battery on real tensors at 64 px.
"""
import json
import math
import re
import subprocess
import sys
from functools import lru_cache
from typing import Dict, List

import pytest
import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import hiervit
from hiervit.backbones import HIERVIT_MODULES

ALL_MODELS = hiervit.list_hiervit_models()
IMG = 64  # full-battery input size: small, but not a multiple of every window or region count


def _num_params(name: str) -> int:
    with torch.device('meta'):
        return sum(p.numel() for p in timm.create_model(name).parameters())


def _flops_at_test_size(name: str) -> int:
    with torch.device('meta'), FlopCounterMode(display=False) as counter:
        timm.create_model(name)(torch.empty(1, 3, IMG, IMG))
    return counter.get_total_flops()


@lru_cache(maxsize=None)
def _smallest_per_family() -> List[str]:
    """Per family, the variant with the fewest parameters; ties go to the cheapest at the test input size."""
    out = []
    for module in HIERVIT_MODULES:
        sizes = {n: _num_params(n) for n in timm.list_models(module=module)}
        if sizes:
            tied = [n for n, s in sizes.items() if s == min(sizes.values())]
            out.append(min(tied, key=lambda n: (_flops_at_test_size(n), n)))
    return out


SMALL_MODELS = _smallest_per_family()


def _spatial(x: torch.Tensor, model: nn.Module) -> tuple:
    return tuple(x.shape[1:3]) if getattr(model, 'output_fmt', 'NCHW') == 'NHWC' else tuple(x.shape[2:])


def _channels(x: torch.Tensor, model: nn.Module) -> int:
    # tokens [B, N, C] (plain ViTs) or channels-last maps: channels last
    return x.shape[-1] if x.ndim == 3 or getattr(model, 'output_fmt', 'NCHW') == 'NHWC' else x.shape[1]


def _plain(model: nn.Module) -> bool:
    """A plain (single-scale) ViT such as InLine-DeiT: every feature at one reduction, and, as timm's
    VisionTransformer, `forward_features` / the unpooled head return tokens `[B, prefix + h * w, C]`."""
    reductions = model.feature_info.reduction() if hasattr(model.feature_info, 'reduction') else \
        [f['reduction'] for f in model.feature_info]
    return len(set(reductions)) == 1


def _tokens(model: nn.Module, h: int, w: int) -> int:
    """Tokens of a plain ViT for an `h x w` feature grid."""
    return model.num_prefix_tokens + h * w


def _compile_matcher(matcher: Dict) -> List[re.Pattern]:
    patterns = []
    for spec in matcher.values():
        if spec is None:
            continue
        specs = spec if isinstance(spec, (list, tuple)) else [(spec, None)]
        patterns += [re.compile(s[0]) for s in specs]
    return patterns


def test_models_registered():
    assert ALL_MODELS, 'hiervit registers no models'
    for module in HIERVIT_MODULES:
        assert timm.list_models(module=module), f'module {module!r} registers nothing'


def test_names_new_to_timm():
    """No hiervit name (or module name) existed in timm before `import hiervit`, and importing overwrites nothing."""
    code = (
        'import json, warnings, timm\n'
        'before = set(timm.list_models())\n'
        'with warnings.catch_warnings(record=True) as w:\n'
        '    warnings.simplefilter("always")\n'
        '    import hiervit\n'
        'ours = hiervit.list_hiervit_models()\n'
        'mods = {m: timm.list_models(module=m) for m in hiervit.backbones.HIERVIT_MODULES}\n'
        'print(json.dumps(dict(before=sorted(before), after=sorted(timm.list_models()), ours=ours, mods=mods,\n'
        '                      warnings=[str(x.message) for x in w if "Overwriting" in str(x.message)])))\n'
    )
    res = json.loads(subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True).stdout)
    ours, before = set(res['ours']), set(res['before'])
    assert ours, 'hiervit registers no models'
    assert not ours & before, f'names already in timm: {sorted(ours & before)}'
    assert ours <= set(res['after'])
    assert not res['warnings'], res['warnings']
    # a module name shared with timm would mix timm's entries into list_models(module=...)
    assert sorted(ours) == sorted(n for names in res['mods'].values() for n in names)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_cfg_and_shapes(name):
    """Per variant, on the meta device: pretrained cfg, head/feature bookkeeping and output shapes at the cfg size."""
    tagged = timm.list_models(name, include_tags=True)
    assert tagged, f'{name} has no pretrained cfg (is default_cfgs defined above the entrypoints?)'
    for full in tagged:
        cfg = timm.models.get_pretrained_cfg(full).to_dict()
        has_weights = cfg.get('url') or cfg.get('file') or cfg.get('hf_hub_id')
        # a model without released weights (a reconstruction) must say so, and timm must not list it as pretrained
        says_none = any('no weights' in note.lower() for note in cfg.get('notes') or ())
        assert has_weights or says_none, f'{full}: no weight source, and its cfg notes do not say none exists'
        assert has_weights or full not in timm.list_models(pretrained=True, include_tags=True)
        for key in ('license', 'mean', 'std', 'crop_pct', 'interpolation', 'first_conv', 'classifier', 'pool_size'):
            assert cfg.get(key) is not None, f'{full}: cfg lacks {key!r}'

    with torch.device('meta'):
        model = timm.create_model(name)
        cfg = model.pretrained_cfg
        state = model.state_dict()
        assert cfg['classifier'] + '.weight' in state and cfg['first_conv'] + '.weight' in state
        assert model.num_classes == cfg['num_classes'] > 0
        assert model.num_features > 0 and model.head_hidden_size > 0

        info = model.feature_info
        assert len(info) >= 3
        assert all(f['num_chs'] > 0 for f in info)
        reductions = [f['reduction'] for f in info]
        assert reductions == sorted(reductions), reductions

        x = torch.empty(1, *cfg['input_size'])
        feat = model.forward_features(x)
        plain = _plain(model)

        def unpooled(out: torch.Tensor) -> bool:  # the cfg's pool_size: the final map, or a plain ViT's token grid
            if plain:
                return out.ndim == 3 and out.shape[1] == _tokens(model, *cfg['pool_size'])
            return out.ndim == 4 and _spatial(out, model) == tuple(cfg['pool_size'])

        assert unpooled(feat)
        assert _channels(feat, model) == model.num_features
        assert model.forward_head(feat, pre_logits=True).shape == (1, model.head_hidden_size)
        assert model.forward_head(feat).shape == (1, model.num_classes)
        model.reset_classifier(0)
        assert model(x).shape == (1, model.head_hidden_size)
        model.reset_classifier(0, '')
        assert unpooled(model(x))

        model = timm.create_model(name, num_classes=0, global_pool='')
        assert unpooled(model(x))

    names = {n for n, _ in model.named_parameters()}
    nwd = set(model.no_weight_decay())
    assert nwd <= names, f'no_weight_decay names that are not parameters: {sorted(nwd - names)[:5]}'
    # The fine matcher must place every parameter but the classifier (timm's grouping puts unmatched names last, by
    # design for the head); the coarse one may leave the final norm with the head too, as timm's own models do.
    patterns = _compile_matcher(model.group_matcher())
    loose = [n for n in names if not any(p.match(n) for p in patterns) and not n.startswith('head.')]
    assert not loose, f'group_matcher() misses {loose[:5]}'
    patterns = _compile_matcher(model.group_matcher(coarse=True))
    assert any(p.match(cfg['first_conv'] + '.weight') for p in patterns)


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_forward_and_grad_checkpointing(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, model.num_classes)
    assert not torch.isnan(out).any()
    model.set_grad_checkpointing()
    out2 = model(x)  # with grad: checkpointing is active only when something needs gradients
    torch.testing.assert_close(out2.detach(), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_backward(name):
    model = timm.create_model(name, num_classes=42).train()
    out = model(torch.randn(2, 3, IMG, IMG))
    assert out.shape == (2, 42)
    out.mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f'parameters without a gradient: {no_grad[:5]}'
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_head_reset_values(name):
    """reset_classifier(0) gives exactly the pre-logits; (0, '') the unpooled features; odd input sizes work."""
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, IMG + 8, IMG - 8)
    with torch.no_grad():
        feat = model.forward_features(x)
        pre = model.forward_head(feat, pre_logits=True)
        model.reset_classifier(0)
        torch.testing.assert_close(model.forward_head(feat), pre)
        model.reset_classifier(0, '')
        torch.testing.assert_close(model.forward_head(feat), feat)
    if _plain(model):
        r = model.feature_info[-1]['reduction']
        assert feat.shape[1] == _tokens(model, math.ceil((IMG + 8) / r), math.ceil((IMG - 8) / r))
    else:
        assert _spatial(feat, model) == (math.ceil((IMG + 8) / 32), math.ceil((IMG - 8) / 32))


@pytest.mark.parametrize('feature_cls', [None, 'getter'])
@pytest.mark.parametrize('name', SMALL_MODELS)
def test_features_only(name, feature_cls):
    kwargs = dict(feature_cls=feature_cls) if feature_cls else {}
    model = timm.create_model(name, features_only=True, **kwargs).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    assert reductions[:4] == [4, 8, 16, 32] or _plain(model), reductions
    with torch.no_grad():
        outs = model(torch.randn(1, 3, IMG, IMG))
    assert len(outs) == len(channels)
    for o, c, r in zip(outs, channels, reductions):
        assert o.ndim == 4 and o.shape[1] == c, f'expected NCHW with {c} channels, got {tuple(o.shape)}'
        assert o.shape[2] <= math.ceil(IMG / r) + 1 and o.shape[3] <= math.ceil(IMG / r) + 1
        assert not torch.isnan(o).any()


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_features_only_out_indices(name):
    full = timm.create_model(name, features_only=True).eval()
    some = timm.create_model(name, features_only=True, out_indices=(1, 3)).eval()
    assert some.feature_info.channels() == [full.feature_info.channels()[i] for i in (1, 3)]
    assert some.feature_info.reduction() == [full.feature_info.reduction()[i] for i in (1, 3)]
    # the subset extractor holds fewer modules (no norms for outputs it does not return): load the keys it has
    wanted = some.state_dict().keys()
    some.load_state_dict({k: v for k, v in full.state_dict().items() if k in wanted})
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        expected = full(x)
        outs = some(x)
    assert len(outs) == 2
    torch.testing.assert_close(outs[0], expected[1])
    torch.testing.assert_close(outs[1], expected[3])


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_forward_intermediates(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(inter) == len(model.feature_info)
        for o, info in zip(inter, model.feature_info):
            assert o.shape[1] == info['num_chs']
            assert o.shape[2] <= math.ceil(IMG / info['reduction']) + 1
        some = model.forward_intermediates(x, indices=[0, -2], stop_early=True, intermediates_only=True)
    assert len(some) == 2
    torch.testing.assert_close(some[0], inter[0])
    torch.testing.assert_close(some[1], inter[-2])


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_prune_intermediate_layers(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        full = model.forward_intermediates(x, intermediates_only=True)
        n_before = sum(p.numel() for p in model.parameters())
        kept = model.prune_intermediate_layers(indices=[0, 1], prune_head=True)
        assert list(kept) == [0, 1]
        assert sum(p.numel() for p in model.parameters()) < n_before
        pruned = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    for a, b in zip(pruned, full[:2]):
        torch.testing.assert_close(a, b)
    assert model.num_classes == 0


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_empty_batch_stop_early_and_pruning_without_prune_norm(name):
    """Calls that crashed: an empty batch; stop_early with the final map; a pruned model whose final norm is kept."""
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        assert model(x[:0]).shape == (0, model.num_classes)
        _, inter = model.forward_intermediates(x)
        final, some = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=False)
        assert len(some) == 1
        torch.testing.assert_close(some[0], inter[1])
        assert _channels(final, model) == model.feature_info[1]['num_chs']
        model.prune_intermediate_layers([0, 1], prune_norm=False)
        feat = model(x)
        _, pruned = model.forward_intermediates(x)
    assert _channels(feat, model) == model.feature_info[1]['num_chs']
    assert len(pruned) == 2
    for a, b in zip(pruned, inter[:2]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('out_indices', [(1, 2), (0, 1, 2, 3)])
@pytest.mark.parametrize('name', SMALL_MODELS)
def test_features_only_subset_trains_every_parameter(name, out_indices):
    """Plain DDP (without find_unused_parameters) needs a gradient for every parameter of a feature extractor: a
    subset of the outputs, and all of them (a final norm that output norms replace must go too)."""
    model = timm.create_model(name, features_only=True, out_indices=out_indices).eval()
    with torch.no_grad():
        empty = model(torch.randn(0, 3, IMG, IMG))
    assert [tuple(o.shape[:2]) for o in empty] == [(0, c) for c in model.feature_info.channels()]
    outs = model.train()(torch.randn(2, 3, IMG, IMG))
    sum(o.square().mean() for o in outs).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f'parameters without a gradient: {no_grad[:5]}'


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_load_state_dict_converts_through_the_filter(name):
    """A family with a `checkpoint_filter_fn` converts foreign key layouts on every `load_state_dict` (the one path
    behind `checkpoint_path=`, hiervit-train/validate and the mm adapter): its own keys load untouched, keys that fit
    neither layout raise instead of being skipped by a non-strict load. Classifier and features_only models alike."""
    with torch.device('meta'):
        models = [timm.create_model(name), timm.create_model(name, features_only=True)]
    if not hasattr(sys.modules[type(models[0]).__module__], 'checkpoint_filter_fn'):
        pytest.skip(f'{name}: its family converts no official layouts')
    for model, prefix in zip(models, ('', 'model.')):  # features_only: the family model is the getter's `model`
        state = model.state_dict()
        assert not model.load_state_dict(state, strict=False).unexpected_keys
        with pytest.raises(ValueError):
            model.load_state_dict({**state, f'{prefix}not_a_module.weight': torch.empty(3, device='meta')},
                                  strict=False)
