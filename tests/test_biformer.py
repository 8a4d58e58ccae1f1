"""BiFormer family: size against the paper, checkpoint conversion, equivalence with the released module structure,
padding to `n_win`, odd input sizes and input validation. Generic timm-contract checks live in test_contract.py."""
import json
import math
from pathlib import Path
from typing import Dict, List

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models._features_fx import GraphExtractNet
from torch.utils.flop_counter import FlopCounterMode

import hiervit  # noqa: F401  (registers the models)
from hiervit.backbones.biformer import BiFormer, checkpoint_filter_fn

FIXTURE = Path(__file__).parent / 'fixtures' / 'biformer_tiny_keys.json'
STL_FIXTURE = Path(__file__).parent / 'fixtures' / 'biformer_stl_keys.json'
TINY_DIMS = (64, 128, 256, 512)


# ---------------------------------------------------------------------------------------------------------------------
# Parameters and FLOPs against the paper / README (fvcore FLOPs = multiply-accumulates; torch counts 2 per MAC).

@pytest.mark.parametrize('name,params_m,gmacs', [
    ('biformer_tiny', 13.1, 2.2),
    ('biformer_small', 25.5, 4.5),
    ('biformer_base', 56.8, 9.8),
    ('biformer_stl', 28.4, 4.6),
])
def test_params_and_flops_match_paper(name: str, params_m: float, gmacs: float):
    with torch.device('meta'):
        model = timm.create_model(name).eval()
        x = torch.empty(1, 3, 224, 224)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n_params - params_m) / params_m < 0.01, f'{name}: {n_params:.2f}M params, paper {params_m}M'
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        out = model(x)
    assert out.shape == (1, 1000)
    measured = counter.get_total_flops() / 2e9
    assert abs(measured - gmacs) / gmacs < 0.03, f'{name}: {measured:.3f} GMACs, paper {gmacs}G'
    # the routed op must be counted (it is BRA's token attention), not silently skipped
    assert any('routed_attention' in str(op) for op in counter.get_flop_counts()['Global'])


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoint conversion on the released key layout (fixture: names and shapes of the released biformer_tiny).

def _fixture_state_dict(seed: int = 0, fixture: Path = FIXTURE) -> Dict[str, torch.Tensor]:
    shapes = json.loads(fixture.read_text())['keys']
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randint(0, 1000, (), generator=g) if k.endswith('num_batches_tracked') else torch.randn(s, generator=g)
        for k, s in shapes.items()
    }


def _value_signature(tensors) -> List[float]:
    return sorted(round(float(t.double().sum()), 6) for t in tensors if t.is_floating_point())


def test_classification_checkpoint_loads_strictly(tmp_path):
    sd = _fixture_state_dict()
    path = tmp_path / 'biformer_tiny_in1k.pth'
    torch.save({'model': sd}, path)
    model = timm.create_model('biformer_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    loaded = model.state_dict()
    # every released tensor lands in the model and nothing is left at its initial value
    assert len(loaded) == len(sd)
    assert _value_signature(loaded.values()) == _value_signature(sd.values())
    # spot-check the renamed modules
    torch.testing.assert_close(model.stages[0].blocks[1].attn.proj.weight, sd['stages.0.1.attn.wo.weight'])
    torch.testing.assert_close(model.stages[2].blocks[7].attn.qkv.bias, sd['stages.2.7.attn.qkv.qkv.bias'])
    torch.testing.assert_close(model.stages[3].blocks[0].mlp.fc2.weight, sd['stages.3.0.mlp.3.weight'])
    torch.testing.assert_close(model.stem[1].bn.running_var, sd['downsample_layers.0.4.running_var'])
    torch.testing.assert_close(model.stages[1].downsample.conv.weight, sd['downsample_layers.1.0.weight'])
    torch.testing.assert_close(model.head.fc.weight, sd['head.weight'])

    # head and stem adaptation still go through timm's loader
    model = timm.create_model(
        'biformer_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=7, in_chans=1)
    torch.testing.assert_close(model.stem[0].conv.weight, sd['downsample_layers.0.0.weight'].sum(1, keepdim=True))
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 7)


def test_stl_checkpoint_loads_strictly(tmp_path):
    sd = _fixture_state_dict(fixture=STL_FIXTURE)
    path = tmp_path / 'biformer_stl_in1k.pth'
    torch.save({'model': sd}, path)
    model = timm.create_model('biformer_stl', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    loaded = model.state_dict()
    assert len(loaded) == len(sd)
    assert _value_signature(loaded.values()) == _value_signature(sd.values())
    torch.testing.assert_close(model.stem[0].conv.weight, sd['downsample_layers.0.0.weight'])
    torch.testing.assert_close(model.stem[0].bn.running_mean, sd['downsample_layers.0.1.running_mean'])
    torch.testing.assert_close(model.stages[2].downsample.norm.weight, sd['downsample_layers.2.0.weight'])
    torch.testing.assert_close(model.stages[2].downsample.conv.weight, sd['downsample_layers.2.1.weight'])
    torch.testing.assert_close(model.stages[2].blocks[5].attn.proj.bias, sd['stages.2.blocks.5.attn.wo.bias'])
    torch.testing.assert_close(model.stages[1].blocks[1].mlp.fc2.weight, sd['stages.1.blocks.1.mlp.2.weight'])
    torch.testing.assert_close(model.stages[3].blocks[1].attn.qkv.weight, sd['stages.3.blocks.1.attn.qkv.weight'])
    torch.testing.assert_close(model.norm.running_var, sd['norm.running_var'])
    # the BiFormer-T file is not taken for an STL one, and the other way round
    with pytest.raises(ValueError, match=r'does not fit this BiFormer \(biformer_tiny\): .* missing'):
        timm.create_model('biformer_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def _dense_checkpoint(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The released mmdet/mmseg layout: `backbone.` prefix, no final norm or head, LayerNorm2d `extra_norms`."""
    out = {f'backbone.{k}': v for k, v in sd.items() if not k.startswith(('norm.', 'head.'))}
    for i, d in enumerate(TINY_DIMS):
        out[f'backbone.extra_norms.{i}.weight'] = torch.rand(d) + 0.5
        out[f'backbone.extra_norms.{i}.bias'] = torch.randn(d)
    out['neck.lateral_convs.0.conv.weight'] = torch.randn(256, 64, 1, 1)
    out['decode_head.conv_seg.weight'] = torch.randn(150, 512, 1, 1)
    return out


def test_dense_task_checkpoint_loads_backbone(tmp_path):
    sd = _fixture_state_dict()
    dense = _dense_checkpoint(sd)
    path = tmp_path / 'upernet_biformer_tiny.pth'
    torch.save({'meta': {}, 'state_dict': dense}, path)
    model = timm.create_model(
        'biformer_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), out_norms=True, n_win=8)
    torch.testing.assert_close(model.out_norms[3].bias, dense['backbone.extra_norms.3.bias'])
    torch.testing.assert_close(model.stages[3].blocks[1].attn.qkv.weight, sd['stages.3.1.attn.qkv.weight'])

    with pytest.raises(ValueError, match='out_norms=True'):
        timm.create_model('biformer_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_mismatched_checkpoint_lists_keys():
    with torch.device('meta'):  # the filter only reads the model's key names and shapes
        shallower, tiny = timm.create_model('biformer_tiny', depths=(2, 2, 6, 2)), timm.create_model('biformer_tiny')
    with pytest.raises(ValueError, match=r'unexpected \(first: stages\.2\.blocks\.6\.'):
        checkpoint_filter_fn({'model': _fixture_state_dict()}, shallower)
    sd = _fixture_state_dict()
    del sd['stages.1.0.norm2.bias']
    sd['stages.0.0.attn.lepe.weight'] = torch.randn(64, 1, 3, 3)
    with pytest.raises(ValueError, match=r'missing \(first: stages\.1\.blocks\.0\.norm2\.bias.*mis-shaped'):
        checkpoint_filter_fn({'model': sd}, tiny)


# ---------------------------------------------------------------------------------------------------------------------
# A re-statement of the released module structure (models/biformer.py + ops/bra_legacy.py + models/_common.py) with
# its parameter names and its gather-based BRA, written independently of the model under test.

class _QKVLinear(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)


class _LegacyBRA(nn.Module):
    def __init__(self, dim: int, num_heads: int, n_win: int, topk: int):
        super().__init__()
        self.dim, self.num_heads, self.n_win, self.topk = dim, num_heads, n_win, topk
        self.scale = dim ** -0.5
        self.lepe = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.qkv = _QKVLinear(dim)
        self.wo = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, H_in, W_in, C = x.shape
        p, m, topk = self.n_win, self.num_heads, self.topk
        x = F.pad(x, (0, 0, 0, (p - W_in % p) % p, 0, (p - H_in % p) % p))  # auto_pad
        H, W = x.shape[1:3]
        h, w = H // p, W // p
        x = x.reshape(N, p, h, p, w, C).permute(0, 1, 3, 2, 4, 5).reshape(N, p * p, h, w, C)  # patchify
        q, kv = self.qkv.qkv(x).split([C, 2 * C], dim=-1)
        q_pix = q.reshape(N, p * p, h * w, C)
        kv_pix = kv.reshape(N, p * p, h * w, 2 * C)
        q_win, k_win = q.mean([2, 3]), kv[..., :C].mean([2, 3])
        v_map = kv[..., C:].reshape(N, p, p, h, w, C).permute(0, 5, 1, 3, 2, 4).reshape(N, C, H, W)
        lepe = self.lepe(v_map).permute(0, 2, 3, 1)
        logits = (q_win.detach() * self.scale) @ k_win.detach().transpose(-2, -1)
        r_idx = torch.topk(logits, k=topk, dim=-1).indices  # (N, p^2, topk)
        kv_sel = torch.gather(
            kv_pix.view(N, 1, p * p, h * w, 2 * C).expand(-1, p * p, -1, -1, -1), dim=2,
            index=r_idx.view(N, p * p, topk, 1, 1).expand(-1, -1, -1, h * w, 2 * C))
        k_sel, v_sel = kv_sel.split([C, C], dim=-1)
        k_sel = k_sel.reshape(N * p * p, topk * h * w, m, C // m).permute(0, 2, 3, 1)
        v_sel = v_sel.reshape(N * p * p, topk * h * w, m, C // m).transpose(1, 2)
        q_pix = q_pix.reshape(N * p * p, h * w, m, C // m).transpose(1, 2)
        out = torch.softmax((q_pix * self.scale) @ k_sel, dim=-1) @ v_sel  # (N p^2, m, h w, C // m)
        out = out.reshape(N, p, p, m, h, w, C // m).permute(0, 1, 4, 2, 5, 3, 6).reshape(N, H, W, C)
        out = self.wo(out + lepe)
        return out[:, :H_in, :W_in]


class _LegacyAttentionLePE(nn.Module):
    def __init__(self, dim: int, num_heads: int = 8):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.lepe = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, H, W, C = x.shape
        t = x.reshape(N, H * W, C)
        q, k, v = self.qkv(t).reshape(N, H * W, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        lepe = self.lepe(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        out = (torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1) @ v).transpose(1, 2).reshape(N, H * W, C)
        return self.proj(out + lepe).reshape(N, H, W, C)


class _LegacyBlock(nn.Module):
    def __init__(self, dim: int, topk: int, n_win: int):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _LegacyBRA(dim, dim // 32, n_win, topk) if topk > 0 else _LegacyAttentionLePE(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 3 * dim), nn.Identity(), nn.GELU(), nn.Linear(3 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x + self.pos_embed(x)).permute(0, 2, 3, 1)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x.permute(0, 3, 1, 2)


class _LegacyBiFormer(nn.Module):
    def __init__(self, depths, dims, n_win: int, topks=(1, 4, 16, -2)):
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(3, dims[0] // 2, 3, 2, 1), nn.BatchNorm2d(dims[0] // 2), nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, 2, 1), nn.BatchNorm2d(dims[0]))])
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(nn.Conv2d(dims[i], dims[i + 1], 3, 2, 1), nn.BatchNorm2d(dims[i + 1])))
        self.stages = nn.ModuleList([
            nn.Sequential(*[_LegacyBlock(dims[i], topks[i], n_win) for _ in range(depths[i])]) for i in range(4)])
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head = nn.Linear(dims[-1], 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
        return self.head(self.norm(x).flatten(2).mean(-1))


class _LegacySTLBlock(nn.Module):
    """models/biformer_stl.py BiFormerBlock: no position conv, MLP Linear-GELU-Linear (ratio 4)."""

    def __init__(self, dim: int, topk: int, n_win: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _LegacyBRA(dim, dim // 32, n_win, topk) if topk > 0 else _LegacyAttentionLePE(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _LegacySTLLayer(nn.Module):
    def __init__(self, dim: int, depth: int, topk: int, n_win: int):
        super().__init__()
        self.blocks = nn.ModuleList([_LegacySTLBlock(dim, topk, n_win) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        for blk in self.blocks:
            x = blk(x)
        return x.permute(0, 3, 1, 2)


class _LegacyBiFormerSTL(nn.Module):
    """models/biformer_stl.py BiFormerSTL with `norm_layer=nn.BatchNorm2d` (its biformer_stl entrypoint)."""

    def __init__(self, depths=(2, 2, 6, 2), dims=(96, 192, 384, 768), n_win: int = 7, topks=(1, 4, 16, -2)):
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), nn.BatchNorm2d(dims[0]))])
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(nn.BatchNorm2d(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, 2)))
        self.stages = nn.ModuleList([_LegacySTLLayer(dims[i], depths[i], topks[i], n_win) for i in range(4)])
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head = nn.Linear(dims[-1], 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
        return self.head(self.norm(x).mean([2, 3]))


def _randomize(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith('weight'):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_((0.1 if p.ndim == 1 else 1 / math.sqrt(p[0].numel())) * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


@pytest.mark.parametrize('n_win,size', [(7, (112, 112)), (7, (97, 131)), (8, (75, 112))])
def test_converted_checkpoint_matches_released_structure(n_win, size):
    depths = (1, 1, 2, 1)
    legacy = _LegacyBiFormer(depths, TINY_DIMS, n_win).eval()
    _randomize(legacy)
    model = timm.create_model('biformer_tiny', depths=depths, n_win=n_win).eval()
    model.load_state_dict(checkpoint_filter_fn({'model': legacy.state_dict()}, model), strict=True)

    # 112 = 28 * 4: every BRA stage divides into 7 x 7 regions (released geometry); the others need padding
    x = torch.randn(1, 3, *size)
    ref, out = legacy(x), model(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    # gradients too: routing is detached in both, so only the token attention carries them
    w = torch.randn(ref.shape)
    (ref * w).sum().backward()
    (out * w).sum().backward()
    legacy_params = dict(legacy.named_parameters())
    for ours, theirs in [
        ('stages.0.blocks.0.attn.qkv.weight', 'stages.0.0.attn.qkv.qkv.weight'),
        ('stages.2.blocks.1.attn.qkv.bias', 'stages.2.1.attn.qkv.qkv.bias'),
        ('stages.1.blocks.0.attn.lepe.weight', 'stages.1.0.attn.lepe.weight'),
        ('stem.0.conv.weight', 'downsample_layers.0.0.weight'),
    ]:
        expected = legacy_params[theirs].grad
        torch.testing.assert_close(
            model.get_parameter(ours).grad, expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# Geometry and input checks.

def test_odd_sizes_and_feature_maps():
    model = timm.create_model('biformer_tiny', depths=(1, 1, 1, 1), features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    feats = model(torch.randn(1, 3, 65, 47))
    # each stride-2 conv maps n -> ceil(n / 2)
    assert [tuple(f.shape) for f in feats] == [(1, 64, 17, 12), (1, 128, 9, 6), (1, 256, 5, 3), (1, 512, 3, 2)]
    assert all(torch.isfinite(f).all() for f in feats)


def test_dense_outputs_use_output_norms():
    model = timm.create_model('biformer_tiny', depths=(1, 1, 1, 1), out_norms=True, n_win=4).eval()
    with torch.no_grad():
        for p in model.out_norms.parameters():
            p.normal_()
    x = torch.randn(1, 3, 96, 80)
    raw = model.forward_intermediates(x, intermediates_only=True)
    normed = model.forward_intermediates(x, norm=True, intermediates_only=True)
    for i, (r, n) in enumerate(zip(raw, normed)):
        torch.testing.assert_close(n, model.out_norms[i](r))
    feat_model = timm.create_model(
        'biformer_tiny', depths=(1, 1, 1, 1), out_norms=True, n_win=4, features_only=True, feature_cfg=dict(norm=True))
    # the feature extractor has neither the head nor the final norm (the output norms replace it there)
    feat_model.model.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith(('head.', 'norm.'))})
    for f, n in zip(feat_model.eval()(x), normed):
        torch.testing.assert_close(f, n)


def test_fx_trace_matches_eager():
    model = timm.create_model('biformer_tiny', depths=(1, 1, 1, 1)).eval()
    graph = GraphExtractNet(model, ['head.fc'])
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(graph(x), model(x))


def test_bad_inputs_raise():
    model = timm.create_model('biformer_tiny', depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match='in_chans=3'):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='in_chans=3'):
        model.forward_intermediates(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='NCHW'):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r'topk=16 .*n_win'):
        BiFormer(n_win=3)
    with pytest.raises(ValueError, match='output_fmt'):
        model.forward_intermediates(torch.randn(1, 3, 64, 64), output_fmt='NLC')


def test_stl_parameters_equal_release():
    with torch.device('meta'):
        ours = sum(p.numel() for p in timm.create_model('biformer_stl').parameters())
        released = _LegacyBiFormerSTL()
    assert ours == sum(p.numel() for p in released.parameters()) == 28_372_552
    # the re-statement has the release's key names and shapes (the fixture was taken from models/biformer_stl.py)
    shapes = json.loads(STL_FIXTURE.read_text())['keys']
    assert {k: list(v.shape) for k, v in released.state_dict().items()} == shapes


@pytest.mark.parametrize('size', [(224, 224), (160, 224)])
def test_stl_converted_checkpoint_matches_released_structure(size):
    # the release's layout and attention at reduced widths and depths (every key kind of the full model)
    depths, dims = (1, 1, 2, 1), (32, 64, 128, 256)
    legacy = _LegacyBiFormerSTL(depths, dims).eval()
    _randomize(legacy)
    model = timm.create_model('biformer_stl', depths=depths, embed_dims=dims).eval()
    model.load_state_dict(checkpoint_filter_fn({'model': legacy.state_dict()}, model), strict=True)
    x = torch.randn(1, 3, *size)
    ref, out = legacy(x), model(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    w = torch.randn(ref.shape)
    (ref * w).sum().backward()
    (out * w).sum().backward()
    legacy_params = dict(legacy.named_parameters())
    for ours, theirs in [
        ('stem.0.conv.weight', 'downsample_layers.0.0.weight'),
        ('stages.1.downsample.norm.weight', 'downsample_layers.1.0.weight'),
        ('stages.0.blocks.0.attn.qkv.weight', 'stages.0.blocks.0.attn.qkv.qkv.weight'),
        ('stages.3.blocks.0.attn.lepe.weight', 'stages.3.blocks.0.attn.lepe.weight'),
        ('stages.2.blocks.1.mlp.fc1.weight', 'stages.2.blocks.1.mlp.0.weight'),
    ]:
        expected = legacy_params[theirs].grad
        torch.testing.assert_close(
            model.get_parameter(ours).grad, expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-4)


def test_stl_odd_sizes_and_layout_check():
    model = timm.create_model('biformer_stl', depths=(1, 1, 1, 1), features_only=True).eval()
    # zero padding to a multiple of 4 before the stem and to even before each 2x2 merge: n -> ceil(n / 2) per merge
    feats = model(torch.randn(1, 3, 65, 47))
    assert [tuple(f.shape) for f in feats] == [(1, 96, 17, 12), (1, 192, 9, 6), (1, 384, 5, 3), (1, 768, 3, 2)]
    assert all(torch.isfinite(f).all() for f in feats)
    with pytest.raises(ValueError, match="layout='swin'.*'stl'"):
        BiFormer(layout='swin')
