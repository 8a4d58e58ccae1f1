"""hiervit.mm backbone adapter, scoped registry and optimizer constructor (needs mmengine; mmdet/mmseg for scopes)."""
import pytest
import torch
import torch.nn as nn

pytest.importorskip('mmengine', reason='needs the OpenMMLab extras: pip install "hiervit[det,seg]"')

import timm  # noqa: E402

import hiervit  # noqa: E402,F401
from hiervit.mm import TimmBackbone  # noqa: E402
from hiervit.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS  # noqa: E402

pytestmark = pytest.mark.mm

# Tiny versions of the families (same code paths, small widths/depths).
TINY = {
    'biformer': dict(type='hiervit.BiFormer', model_name='biformer_tiny', depths=(1, 1, 2, 1),
                     embed_dims=(32, 64, 128, 256), n_win=4),
    'nat': dict(type='hiervit.NAT', model_name='nat_mini', depths=(1, 1, 2, 1), embed_dim=32, num_heads=(1, 2, 4, 8)),
    'dinat': dict(type='hiervit.DiNAT', model_name='dinat_mini', depths=(1, 1, 2, 1), embed_dim=32,
                  num_heads=(1, 2, 4, 8), dilations=[[1], [2], [1, 2], [1]]),
    'dinat_s': dict(type='hiervit.DiNATs', model_name='dinat_s_tiny', depths=(1, 1, 2, 1), embed_dim=32,
                    num_heads=(1, 2, 4, 8), dilations=[[1], [2], [1, 2], [1]]),
    's2aformer': dict(type='hiervit.S2AFormer', model_name='s2aformer_mini', depths=(1, 1, 1, 1),
                      embed_dims=(32, 64, 96, 128), stem_dims=(8, 8, 16)),
    'l2vit': dict(type='hiervit.L2ViT', model_name='l2vit_tiny', depths=(2, 2, 2, 2), embed_dims=(32, 64, 128, 256),
                  num_heads=(1, 2, 4, 8)),
}


def _cfg(family: str, **kwargs) -> dict:
    cfg = dict(TINY[family], **kwargs)
    if cfg['model_name'] not in timm.list_models():
        pytest.skip(f'{cfg["model_name"]} is not registered with timm in this checkout')
    return cfg


def _build(family: str, **kwargs) -> TimmBackbone:
    return MODELS.build(_cfg(family, **kwargs))


@pytest.mark.parametrize('family,out_indices', [(f, o) for f in TINY for o in [(0, 1, 2, 3), (1, 3), (0, 2)]])
def test_outputs_and_every_param_used(family, out_indices):
    m = _build(family, out_indices=out_indices)
    x = torch.randn(2, 3, 72, 104)  # not a multiple of 32 (nor of the region grid)
    outs = m(x)
    assert len(outs) == len(out_indices) == len(m.out_channels)
    for o, c, s in zip(outs, m.out_channels, m.strides):
        assert o.shape[:2] == (2, c) and o.shape[2] == -(-72 // s) and o.shape[3] == -(-104 // s)
    sum(o.float().pow(2).mean() for o in outs).backward()
    # Unused parameters (pruned head / final norm, norms of stages not returned) would break DDP training.
    unused = [n for n, p in m.named_parameters() if p.grad is None]
    assert not unused, unused


@pytest.mark.parametrize('family', ['biformer', 'nat', 's2aformer', 'l2vit'])
def test_out_norms_are_applied(family):
    m = _build(family, out_indices=(0, 1, 2, 3)).eval()
    x = torch.randn(1, 3, 64, 64)
    raw = m.model.forward_intermediates(x, norm=False, intermediates_only=True)
    normed = m(x)
    for i, (r, n) in enumerate(zip(raw, normed)):
        assert not torch.allclose(r, n), f'output {i} is not normalised'
        # per-output LayerNorm over channels at init (weight 1, bias 0): zero mean over C at every position
        torch.testing.assert_close(n.mean(1), torch.zeros_like(n.mean(1)), atol=1e-4, rtol=0)
    assert isinstance(m.model.norm, nn.Identity) == (family != 'nat')  # NAT's last output norm is `norm`


def test_registry_scope_resolves_from_mmdet_and_mmseg_without_custom_imports():
    pytest.importorskip('mmdet')
    pytest.importorskip('mmseg')
    from hiervit.mm import install_tv_ops
    install_tv_ops()
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS
    for registry in (DET_MODELS, SEG_MODELS):
        m = registry.build(_cfg('biformer'))
        assert type(m).__name__ == 'BiFormer' and isinstance(m, TimmBackbone)
    assert DET_MODELS.get('hiervit.TimmBackbone') is TimmBackbone


def test_frozen_stages_freeze_and_stay_frozen():
    m = _build('biformer', frozen_stages=2, drop_path_rate=0.5)
    m.train()
    frozen_prefixes = ('model.stem.', 'model.stages.0.', 'model.stages.1.', 'model.out_norms.0.', 'model.out_norms.1.')
    for name, p in m.named_parameters():
        assert p.requires_grad == (not name.startswith(frozen_prefixes)), name
    assert not m.model.stem.training and not m.model.stages[1].training
    assert m.model.stages[2].training and m.model.stages[2].blocks[0].drop_path1.training
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    # frozen stages in eval mode: drop path off, BatchNorm statistics fixed
    stem_bn = m.model.stem[0].bn
    running = stem_bn.running_mean.clone()
    sum(o.mean() for o in m(torch.randn(2, 3, 64, 64))).backward()
    opt.step()
    torch.testing.assert_close(stem_bn.running_mean, running)
    changed = {name for name, p in m.named_parameters() if not torch.equal(p, before[name])}
    assert not {n for n in changed if n.startswith(frozen_prefixes)}
    assert any(n.startswith('model.stages.2.') for n in changed)
    m.train()  # train() must not undo the freezing
    assert not m.model.stages[0].training and not m.model.stem[0].conv.weight.requires_grad


@pytest.mark.parametrize('family', ['nat', 'dinat'])
def test_frozen_stages_nat(family):
    m = _build(family, frozen_stages=1)
    m.train()
    for name, p in m.named_parameters():
        frozen = name.startswith(('model.patch_embed.', 'model.levels.0.', 'model.out_norms.0.'))
        assert p.requires_grad != frozen, name


def test_norm_eval_freezes_batchnorm_statistics():
    m = _build('biformer', norm_eval=True).train()
    bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert bns and all(not bn.training for bn in bns)
    running = [bn.running_mean.clone() for bn in bns]
    m(torch.randn(2, 3, 64, 64))
    for bn, r in zip(bns, running):
        torch.testing.assert_close(bn.running_mean, r)


@pytest.mark.parametrize('family', ['biformer', 'nat'])
def test_with_cp_same_outputs_and_grads(family):
    torch.manual_seed(0)
    ref = _build(family, drop_path_rate=0.)
    cp = _build(family, with_cp=True, drop_path_rate=0.)
    cp.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 96)
    outs_ref, outs_cp = ref(x), cp(x)
    for a, b in zip(outs_ref, outs_cp):
        torch.testing.assert_close(a, b)
    sum(o.sum() for o in outs_ref).backward()
    sum(o.sum() for o in outs_cp).backward()
    for (n, a), b in zip(ref.named_parameters(), cp.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=n)


def _classifier(family: str) -> nn.Module:
    cfg = dict(TINY[family])
    cfg.pop('type')
    return timm.create_model(cfg.pop('model_name'), **cfg)


@pytest.mark.parametrize('family', ['biformer', 'nat'])
@pytest.mark.parametrize('wrapper,prefix', [('model', None), ('state_dict', 'backbone.')])
def test_init_cfg_pretrained_loads_classification_checkpoint(tmp_path, family, wrapper, prefix):
    _cfg(family)
    cls = _classifier(family)
    sd = cls.state_dict()
    path = tmp_path / 'ckpt.pth'
    stored = {f'{prefix or ""}{k}': v for k, v in sd.items()}
    if prefix:
        stored['neck.conv.weight'] = torch.zeros(1)  # a detector checkpoint also holds neck/heads
    torch.save({wrapper: stored}, path)
    m = _build(family, init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix=prefix))
    m.init_weights()
    loaded = m.model.state_dict()
    common = [k for k in loaded if k in sd]
    assert len(common) > 0.8 * len(loaded)
    for k in common:
        torch.testing.assert_close(loaded[k], sd[k], msg=k)
    assert not any(k.startswith('head') for k in loaded)


def test_init_cfg_rejects_foreign_checkpoint(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save({'state_dict': {'conv.weight': torch.zeros(3)}}, path)
    m = _build('biformer', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(ValueError):
        m.init_weights()
    m = _build('biformer', init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    with pytest.raises(ValueError, match='prefix'):
        m.init_weights()


def test_bad_arguments():
    with pytest.raises(ValueError, match='model_name'):
        TimmBackbone('no_such_model')
    with pytest.raises(ValueError, match='out_indices'):
        _build('biformer', out_indices=(0, 4))
    with pytest.raises(ValueError, match='out_indices'):
        _build('biformer', out_indices=(2, 1))
    with pytest.raises(ValueError, match='frozen_stages'):
        _build('biformer', frozen_stages=7)
    with pytest.raises(TypeError, match='init_cfg'):
        _build('biformer', pretrained=True)


def test_layer_depth_follows_group_matcher():
    m = _build('biformer')
    depth = lambda n: m.get_layer_depth('backbone.' + n, prefix='backbone.')  # noqa: E731
    stem, n = depth('model.stem.0.conv.weight')
    b0, _ = depth('model.stages.0.blocks.0.attn.qkv.weight')
    b3, _ = depth('model.stages.3.blocks.0.attn.qkv.weight')
    neck, _ = m.get_layer_depth('neck.fpn.weight', prefix='backbone.')
    assert stem == 0 < b0 < b3 < neck == n - 1


class _Detector(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))


@pytest.mark.parametrize('family', ['nat', 'biformer'])
def test_layer_decay_constructor(family):
    model = _Detector(_build(family))
    ctor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type='hiervit.LayerDecayOptimWrapperConstructor',
        optim_wrapper_cfg=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)),
        paramwise_cfg=dict(layer_decay_rate=0.5, custom_keys={'neck.0': dict(lr_mult=2.)})))
    wrapper = ctor(model)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {names[id(g['params'][0])]: g for g in wrapper.optimizer.param_groups}
    assert len(groups) == len(list(model.parameters()))
    wd = {n: g['weight_decay'] for n, g in groups.items()}
    lr = {n: g['lr'] for n, g in groups.items()}
    for n, p in model.backbone.named_parameters():
        full = 'backbone.' + n
        exempt = p.ndim <= 1 or n.endswith('.rpb')
        assert (wd[full] == 0.) == exempt, full
    assert groups['neck.0.weight']['lr'] == pytest.approx(2e-3)  # custom_keys still honoured
    assert groups['neck.1.weight']['lr'] == pytest.approx(1e-3)
    first = min(lr[n] for n in lr if n.startswith(('backbone.model.stages.0.', 'backbone.model.levels.0.')))
    last = max(lr[n] for n in lr if n.startswith(('backbone.model.stages.3.', 'backbone.model.levels.3.')))
    assert first < last < 1e-3
    if family == 'nat':
        assert any(n.endswith('.rpb') for n in wd)
