"""NAT / DiNAT specifics: published size/cost, small and odd inputs, dilations, and official checkpoint conversion.

The generic timm contract is in test_contract.py. The "official" modules below are a minimal re-statement of the
structure of SHI-Labs/Neighborhood-Attention-Transformer (classification/nat.py, detection/nat.py) and of NATTEN
0.14's NeighborhoodAttention2D, written for this test with the same parameter names, so that a state dict in the
official layout can be produced, converted with `checkpoint_filter_fn` and compared output for output.
"""
import json
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import hiervit  # noqa: F401  (registers the models)
from hiervit.backbones.layers.neighborhood import NeighborhoodAttention2d
from hiervit.backbones.dinats import checkpoint_filter_fn as dinats_filter_fn
from hiervit.backbones.nat import checkpoint_filter_fn
from hiervit.kernels.neighborhood import neighborhood_attention

FIXTURES = Path(__file__).parent / 'fixtures'

# Published (params M, GFLOPs with fvcore: 1 multiply-add = 1 FLOP, input size) from classification/NAT.md, DiNAT.md.
PUBLISHED = {
    'nat_mini': (20, 2.7, 224),
    'nat_tiny': (28, 4.3, 224),
    'nat_small': (51, 7.8, 224),
    'nat_base': (90, 13.7, 224),
    'dinat_mini': (20, 2.7, 224),
    'dinat_tiny': (28, 4.3, 224),
    'dinat_small': (51, 7.8, 224),
    'dinat_base': (90, 13.7, 224),
    'dinat_large': (200, 30.6, 224),
    'dinat_large_384': (200, 89.7, 384),
    'dinat_large_384_11x11': (200, 92.4, 384),
    'dinat_large_21k': (200, None, 224),  # 22k classifier: the tables list the 1k model only
    'dinat_large_21k_11x11': (200, None, 224),
    'dinat_s_tiny': (28, 4.5, 224),
    'dinat_s_small': (50, 8.7, 224),
    'dinat_s_base': (88, 15.4, 224),
    'dinat_s_large': (197, 34.5, 224),
    'dinat_s_large_384': (197, 101.5, 384),
    'dinat_s_large_21k': (197, None, 224),
}

TINY = dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), kernel_size=3)


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_params_and_flops_match_paper(name):
    params, gflops, size = PUBLISHED[name]
    with torch.device('meta'):
        model = timm.create_model(name, num_classes=1000)
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, size, size))
    n = sum(p.numel() for p in model.parameters()) / 1e6
    # within 1%, or equal after the tables' rounding to whole millions (DiNAT_s-T: 28.29M, published "28M")
    assert abs(n - params) / params < 0.01 or round(n) == params, f'{name}: {n:.2f}M params, published {params}M'
    if gflops is not None:
        g = counter.get_total_flops() / 2 / 1e9  # torch counts 2 FLOPs per multiply-add, the papers (fvcore) 1
        assert abs(g - gflops) / gflops < 0.03, f'{name}: {g:.2f} GFLOPs, published {gflops}G'


@pytest.mark.parametrize('name,swin', [
    ('dinat_s_tiny', 'swin_tiny_patch4_window7_224'),
    ('dinat_s_base', 'swin_base_patch4_window7_224'),
])
def test_dinats_params_equal_swin(name, swin):
    """DiNAT_s is Swin with NA: a (2k-1)^2 rpb per layer replaces Swin's (2w-1)^2 table, so the counts are identical."""
    assert _num_params(name) == _num_params(swin)


def _num_params(name: str) -> int:
    with torch.device('meta'):
        return sum(p.numel() for p in timm.create_model(name).parameters())


def test_registered_variants_are_the_official_ones():
    assert set(timm.list_models(module='nat')) | set(timm.list_models(module='dinats')) == set(PUBLISHED)


def test_layer_scale_and_dilations_per_variant():
    with torch.device('meta'):
        models = {n: timm.create_model(n) for n in ('nat_small', 'dinat_small', 'dinat_base', 'dinat_mini')}
    assert models['nat_small'].levels[0].blocks[0].gamma1 is not None
    assert models['dinat_small'].levels[0].blocks[0].gamma1 is None  # no layer scale in the official dinat_small
    assert models['dinat_base'].levels[0].blocks[0].gamma1 is not None
    assert [[b.attn.dilation for b in lv.blocks] for lv in models['dinat_mini'].levels] == [
        [1, 8, 1], [1, 4, 1, 4], [1, 2, 1, 2, 1, 2], [1, 1, 1, 1, 1]]


def test_demo_config_trains_at_32px():
    model = timm.create_model('nat_mini', num_classes=10, mlp_ratio=2., **TINY)
    assert model.levels[0].blocks[0].mlp.fc1.out_features == 64
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    F.cross_entropy(out, torch.arange(4)).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_small_input_padding_rule():
    """Below kernel*dilation the module zero-pads x (bottom/right) *before* qkv and crops after (NATTEN <= 0.14)."""
    attn = NeighborhoodAttention2d(16, num_heads=2, kernel_size=3, dilation=2).eval()
    nn.init.normal_(attn.qkv.bias)  # padded tokens carry this bias: padding after the projection would differ
    x = torch.randn(2, 4, 5, 16)  # both axes < 3 * 2
    padded = F.pad(x, (0, 0, 0, 1, 0, 2))  # [2, 6, 6, 16]: exactly the window, so no further padding
    with torch.no_grad():
        out = attn(x)
        expected = attn(padded)[:, :4, :5]
    torch.testing.assert_close(out, expected)


def test_small_inputs_whole_model():
    model = timm.create_model('dinat_mini', depths=TINY['depths'], embed_dim=16, num_heads=(1, 1, 2, 4),
                              dilations=[[8], [4], [1, 2], [1]]).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 24, 40))  # level maps 6x10 .. 1x2, all below kernel*dilation somewhere
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize('size', [(33, 47), (65, 31)])
def test_odd_sizes(size):
    model = timm.create_model('nat_mini', features_only=True, **TINY).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, *size))
    h, w = size
    for i, f in enumerate(feats):
        # every stride-2 3x3 conv (padding 1) maps L to ceil(L / 2)
        for _ in range(i + 2):
            h, w = -(-h // 2), -(-w // 2)
        assert f.shape[2:] == (h, w)
        h, w = size


def test_in_chans_mismatch_is_a_clear_error():
    model = timm.create_model('nat_mini', **TINY)
    with pytest.raises(ValueError, match='in_chans'):
        model(torch.randn(1, 1, 32, 32))
    gray = timm.create_model('nat_mini', in_chans=1, **TINY)
    assert gray(torch.randn(1, 1, 32, 32)).shape == (1, 1000)


def test_unknown_kwarg_is_a_clear_error():
    with pytest.raises(TypeError, match='windw_size'):
        timm.create_model('nat_mini', windw_size=7)


def test_dilations_override():
    with pytest.raises(ValueError, match='dilations'):
        timm.create_model('dinat_mini', depths=(1, 1, 2, 1))  # the default dilations no longer fit
    with pytest.raises(ValueError, match='dilations'):
        timm.create_model('nat_mini', dilations=[[1, 2], [1], [1], [1]], **TINY)
    det = [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7], [1, 3, 1, 3, 1]]  # official mmdet dilations (mini)
    with torch.device('meta'):
        model = timm.create_model('dinat_mini', dilations=det)
    assert [[b.attn.dilation for b in lv.blocks] for lv in model.levels] == det


def test_dilation_one_dinat_is_nat():
    """DiNAT is NAT with dilations: same parameters, and with all dilations 1 the same function."""
    nat = timm.create_model('nat_mini', **TINY).eval()
    dinat = timm.create_model('dinat_mini', dilations=[[1], [1], [1, 1], [1]], **TINY).eval()
    dinat.load_state_dict(nat.state_dict())
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(dinat(x), nat(x))
        dinat.levels[0].blocks[0].attn.dilation = 2
        assert not torch.allclose(dinat(x), nat(x))


def test_forward_intermediates_output_norms():
    """features_only carries one LayerNorm per output (official mmdet/mmseg backbone); norm=True applies them."""
    model = timm.create_model('nat_mini', output_norms=True, **TINY).eval()
    for ln in list(model.out_norms) + [model.norm]:
        nn.init.normal_(ln.weight)
        nn.init.normal_(ln.bias)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        raw = model.forward_intermediates(x, output_fmt='NHWC', intermediates_only=True)
        normed = model.forward_intermediates(x, norm=True, intermediates_only=True)
    norms = list(model.out_norms) + [model.norm]
    for r, n, ln in zip(raw, normed, norms):
        torch.testing.assert_close(n, ln(r).permute(0, 3, 1, 2))
    feat = timm.create_model('nat_mini', features_only=True, **TINY)
    assert len(feat.model.out_norms) == 3


# ---------------------------------------------------------------------------------------------------------------------
# Minimal re-statement of the official module structure (parameter names as in the official code).


class OfficialNeighborhoodAttention2D(nn.Module):
    """NATTEN 0.14 NeighborhoodAttention2D: [B, heads, H, W, d] layout, pad-to-window below kernel*dilation."""

    def __init__(self, dim: int, kernel_size: int, dilation: Optional[int], num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.kernel_size, self.dilation = kernel_size, dilation or 1
        self.window_size = self.kernel_size * self.dilation
        self.qkv = nn.Linear(dim, dim * 3)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, Hp, Wp, C = x.shape
        H, W = Hp, Wp
        pad_r = pad_b = 0
        if H < self.window_size or W < self.window_size:
            pad_r, pad_b = max(0, self.window_size - W), max(0, self.window_size - H)
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
            _, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H, W, 3, self.num_heads, self.head_dim).permute(3, 0, 4, 1, 2, 5)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]  # [B, heads, H, W, d]
        heads_last = [t.permute(0, 2, 3, 1, 4) for t in (q, k, v)]
        x = neighborhood_attention(*heads_last, self.kernel_size, dilation=self.dilation, rpb=self.rpb, scale=1.,
                                   backend='reference')
        x = x.reshape(B, H, W, C)
        if pad_r or pad_b:
            x = x[:, :Hp, :Wp, :]
        return self.proj(x)


class OfficialMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class OfficialNATLayer(nn.Module):
    def __init__(self, dim, num_heads, kernel_size, dilation, mlp_ratio, layer_scale):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = OfficialNeighborhoodAttention2D(dim, kernel_size, dilation, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = OfficialMlp(dim, int(dim * mlp_ratio))
        self.layer_scale = layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(dim))
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(dim))

    def forward(self, x):
        if not self.layer_scale:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = x + self.gamma1 * self.attn(self.norm1(x))
        return x + self.gamma2 * self.mlp(self.norm2(x))


class OfficialConvDownsampler(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, 3, 2, 1, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x):
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class OfficialNATBlock(nn.Module):
    def __init__(self, dim, depth, num_heads, kernel_size, dilations, downsample, mlp_ratio, layer_scale):
        super().__init__()
        self.blocks = nn.ModuleList([
            OfficialNATLayer(dim, num_heads, kernel_size, None if dilations is None else dilations[i], mlp_ratio,
                             layer_scale)
            for i in range(depth)])
        self.downsample = OfficialConvDownsampler(dim) if downsample else None

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return (x, x) if self.downsample is None else (self.downsample(x), x)


class OfficialNAT(nn.Module):
    """classification/nat.py `NAT` (dense=False) or the mmdet/mmseg backbone of detection/nat.py (dense=True)."""

    def __init__(self, embed_dim, mlp_ratio, depths, num_heads, kernel_size=7, dilations=None, num_classes=1000,
                 layer_scale=None, in_chans=3, dense=False):
        super().__init__()
        self.dense = dense
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, 3, 2, 1), nn.Conv2d(embed_dim // 2, embed_dim, 3, 2, 1))
        self.patch_embed.norm = nn.LayerNorm(embed_dim)
        self.levels = nn.ModuleList([
            OfficialNATBlock(embed_dim * 2 ** i, depths[i], num_heads[i], kernel_size,
                             None if dilations is None else dilations[i], i < len(depths) - 1, mlp_ratio, layer_scale)
            for i in range(len(depths))])
        if dense:
            for i in range(len(depths)):
                self.add_module(f'norm{i}', nn.LayerNorm(embed_dim * 2 ** i))
        else:
            self.norm = nn.LayerNorm(embed_dim * 2 ** (len(depths) - 1))
            self.head = nn.Linear(embed_dim * 2 ** (len(depths) - 1), num_classes)

    def forward(self, x):
        x = self.patch_embed.norm(self.patch_embed.proj(x).permute(0, 2, 3, 1))
        outs = []
        for i, level in enumerate(self.levels):
            x, xo = level(x)
            if self.dense:
                outs.append(getattr(self, f'norm{i}')(xo).permute(0, 3, 1, 2))
        if self.dense:
            return outs
        x = self.norm(x).flatten(1, 2).mean(1)
        return self.head(x)


class OfficialPatchMerging(nn.Module):
    """Swin's PatchMerging as in classification/dinats.py: pad odd sizes, concat the 2x2 phases, LN(4C), Linear."""

    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x):
        H, W = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class OfficialBasicLayer(nn.Module):
    def __init__(self, dim, depth, num_heads, kernel_size, dilations, downsample, mlp_ratio):
        super().__init__()
        self.blocks = nn.ModuleList([
            OfficialNATLayer(dim, num_heads, kernel_size, 1 if dilations is None else dilations[i], mlp_ratio, None)
            for i in range(depth)])
        self.downsample = OfficialPatchMerging(dim) if downsample else None

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return (x, x) if self.downsample is None else (x, self.downsample(x))


class OfficialDiNATs(nn.Module):
    """classification/dinats.py `DiNAT_s` (dense=False) or its mmdet/mmseg backbone (dense=True)."""

    def __init__(self, embed_dim, depths, num_heads, kernel_size=7, dilations=None, mlp_ratio=4., num_classes=1000,
                 dense=False):
        super().__init__()
        self.dense = dense
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, 4, 4)
        self.patch_embed.norm = nn.LayerNorm(embed_dim)
        self.layers = nn.ModuleList([
            OfficialBasicLayer(embed_dim * 2 ** i, depths[i], num_heads[i], kernel_size,
                               None if dilations is None else dilations[i], i < len(depths) - 1, mlp_ratio)
            for i in range(len(depths))])
        if dense:
            for i in range(len(depths)):
                self.add_module(f'norm{i}', nn.LayerNorm(embed_dim * 2 ** i))
        else:
            self.norm = nn.LayerNorm(embed_dim * 2 ** (len(depths) - 1))
            self.head = nn.Linear(embed_dim * 2 ** (len(depths) - 1), num_classes)

    def forward(self, x):
        H, W = x.shape[2:]
        x = F.pad(x, (0, -W % 4, 0, -H % 4))
        x = self.patch_embed.norm(self.patch_embed.proj(x).permute(0, 2, 3, 1))
        outs = []
        for i, layer in enumerate(self.layers):
            xo, x = layer(x)
            if self.dense:
                outs.append(getattr(self, f'norm{i}')(xo).permute(0, 3, 1, 2))
        if self.dense:
            return outs
        return self.head(self.norm(x).flatten(1, 2).mean(1))


def _randomize(module: nn.Module) -> Dict[str, torch.Tensor]:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)
    return module.state_dict()


def _layout(sd: Dict[str, torch.Tensor]) -> Dict[str, List[int]]:
    return {k: list(v.shape) for k, v in sd.items()}


def _from_fixture(name: str) -> Dict[str, torch.Tensor]:
    """Meta tensors in a stored official layout: keys and shapes are all a strict load checks."""
    keys = json.loads((FIXTURES / name).read_text())
    return {k: torch.empty(shape, device='meta') for k, shape in keys.items()}


def _meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device('meta'):
        return timm.create_model(name, **kwargs)


NAT_MINI_ARGS = dict(embed_dim=64, mlp_ratio=3, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16))
OFFICIAL_TINY = dict(embed_dim=16, mlp_ratio=2, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), kernel_size=3)


DINAT_S_TINY_ARGS = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))


@pytest.mark.parametrize('official_cls,args,fixture', [
    (OfficialNAT, NAT_MINI_ARGS, 'nat_mini_keys.json'),
    (OfficialDiNATs, DINAT_S_TINY_ARGS, 'dinat_s_tiny_keys.json'),
])
def test_fixture_matches_official_structure(official_cls, args, fixture):
    """The stored official key layouts (classification) are what the re-statements produce."""
    with torch.device('meta'):
        official = official_cls(**args)
    assert _layout(official.state_dict()) == json.loads((FIXTURES / fixture).read_text())


def test_official_dinats_checkpoint_loads_strictly():
    model = _meta_model('dinat_s_tiny')
    model.load_state_dict(dinats_filter_fn({'model': _from_fixture('dinat_s_tiny_keys.json')}, model), assign=True)
    with pytest.raises(ValueError, match='DiNAT_s'):
        checkpoint_filter_fn(_from_fixture('dinat_s_tiny_keys.json'), _meta_model('nat_tiny'))


@pytest.mark.parametrize('name', ['nat_mini', 'dinat_mini'])
def test_official_checkpoint_loads_strictly(name):
    model = _meta_model(name)
    model.load_state_dict(checkpoint_filter_fn({'model': _from_fixture('nat_mini_keys.json')}, model), assign=True)
    headless = _meta_model(name, num_classes=0)
    headless.load_state_dict(checkpoint_filter_fn(_from_fixture('nat_mini_keys.json'), headless), assign=True)


def test_pretrained_file_through_timm(tmp_path):
    """`pretrained=True` + `pretrained_cfg_overlay=dict(file=...)` on an official-layout file, same and other heads."""
    official = OfficialNAT(num_classes=1000, **OFFICIAL_TINY).eval()
    sd = _randomize(official)
    path = tmp_path / 'nat_official.pth'
    torch.save({'model': sd}, path)
    overlay = dict(file=str(path))
    model = timm.create_model('nat_mini', pretrained=True, pretrained_cfg_overlay=overlay, **OFFICIAL_TINY).eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(x), official(x), rtol=1e-4, atol=1e-4)
    other = timm.create_model(
        'nat_mini', pretrained=True, pretrained_cfg_overlay=overlay, num_classes=7, **OFFICIAL_TINY)
    assert other.head.fc.out_features == 7
    torch.testing.assert_close(other.levels[2].blocks[1].attn.rpb, sd['levels.2.blocks.1.attn.rpb'])


def test_mismatched_checkpoint_error_names_keys_and_variant():
    with pytest.raises(ValueError) as err:
        checkpoint_filter_fn(_from_fixture('nat_mini_keys.json'), _meta_model('nat_tiny'))
    msg = str(err.value)
    assert 'levels.2.blocks.6.' in msg and 'nat_tiny' in msg and 'nat_mini' in msg


def test_dense_checkpoint_loads_into_features_model():
    """mmdet/mmseg checkpoints: `backbone.` stripped, neck/heads dropped, norm{i} -> output norms."""
    sd = _from_fixture('nat_mini_keys.json')
    dense = {f'backbone.{k}': v for k, v in sd.items() if not k.startswith(('head.', 'norm.'))}
    for i, c in enumerate((64, 128, 256, 512)):
        dense[f'backbone.norm{i}.weight'] = dense[f'backbone.norm{i}.bias'] = torch.empty(c, device='meta')
    dense['neck.lateral_convs.0.conv.weight'] = torch.empty(256, 64, 1, 1, device='meta')
    dense['rpn_head.rpn_conv.weight'] = torch.empty(256, 256, 3, 3, device='meta')
    with torch.device('meta'):
        features = timm.create_model('nat_mini', features_only=True)
    converted = checkpoint_filter_fn({'state_dict': dense}, features.model)
    assert converted['out_norms.1.bias'] is dense['backbone.norm1.bias']
    assert converted['norm.weight'] is dense['backbone.norm3.weight']
    features.model.load_state_dict(converted, assign=True)
    with pytest.raises(ValueError, match='output_norms=True'):
        checkpoint_filter_fn(dense, _meta_model('nat_mini', num_classes=0))
    with pytest.raises(ValueError, match='num_classes=0'):
        checkpoint_filter_fn(dense, _meta_model('nat_mini', output_norms=True))


def test_classification_checkpoint_into_features_model_starts_identity_norms():
    """Every output norm starts fresh, the last level's (`norm`) too: the official dense backbone's `norm3` does not
    take the classifier's final `norm` (its non-strict load drops `norm.*`)."""
    sd = _randomize(OfficialNAT(**OFFICIAL_TINY))
    features = timm.create_model('nat_mini', features_only=True, **OFFICIAL_TINY)
    features.model.load_state_dict(checkpoint_filter_fn(sd, features.model))
    for i, ln in enumerate([*features.model.out_norms, features.model.norm]):
        assert torch.equal(ln.weight, torch.ones(16 * 2 ** i)) and torch.equal(ln.bias, torch.zeros(16 * 2 ** i))
    torch.testing.assert_close(features.model.levels[3].blocks[0].norm1.weight, sd['levels.3.blocks.0.norm1.weight'])
    classifier = timm.create_model('nat_mini', **OFFICIAL_TINY)  # the classifier keeps its final norm
    classifier.load_state_dict(checkpoint_filter_fn(sd, classifier))
    torch.testing.assert_close(classifier.norm.weight, sd['norm.weight'])


def _assert_same_function(model: nn.Module, official: nn.Module, x: torch.Tensor, filter_fn) -> None:
    """Same outputs, input gradients and (name-mapped) parameter gradients; ours runs on the op's default backend."""
    x = x.clone().requires_grad_()
    ours, theirs = model(x), official(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(ours)
    ours.backward(grad)
    x_grad, x.grad = x.grad, None
    theirs.backward(grad)
    torch.testing.assert_close(x_grad, x.grad, rtol=1e-4, atol=1e-4)
    expected = filter_fn({n: p.grad for n, p in official.named_parameters()}, model)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-4, atol=1e-4, msg=lambda m: f'{n}: {m}')


SMALL_OFFICIAL = [
    # (official kwargs, input size): DiNAT with dilations that force the small-input padding, and NAT with layer scale
    (dict(OFFICIAL_TINY, depths=(2, 1, 2, 1), dilations=[[1, 4], [2], [1, 2], [1]]), (44, 36)),
    (dict(embed_dim=16, mlp_ratio=3, depths=(1, 2, 1, 1), num_heads=(2, 2, 4, 4), kernel_size=5, layer_scale=0.5),
     (50, 38)),
]


@pytest.mark.parametrize('official_args,size', SMALL_OFFICIAL)
def test_converted_checkpoint_matches_official_outputs(official_args, size):
    official = OfficialNAT(num_classes=10, **official_args).eval()
    sd = _randomize(official)
    model = timm.create_model('nat_mini', num_classes=10, **official_args).eval()
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    x = torch.randn(2, 3, *size)
    _assert_same_function(model, official, x, checkpoint_filter_fn)

    dense = OfficialNAT(dense=True, **official_args).eval()
    dense_sd = {f'backbone.{k}': v for k, v in _randomize(dense).items()}
    features = timm.create_model('nat_mini', features_only=True, **official_args).eval()
    features.model.load_state_dict(checkpoint_filter_fn(dense_sd, features.model), strict=True)
    with torch.no_grad():
        for ours, theirs in zip(features(x), dense(x)):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_converted_dinats_checkpoint_matches_official_outputs():
    args = dict(embed_dim=16, depths=(2, 1, 2, 1), num_heads=(1, 2, 2, 4), kernel_size=3,
                dilations=[[1, 4], [2], [1, 2], [1]])
    official = OfficialDiNATs(num_classes=10, **args).eval()
    model = timm.create_model('dinat_s_tiny', num_classes=10, **args).eval()
    model.load_state_dict(dinats_filter_fn(_randomize(official), model), strict=True)
    x = torch.randn(2, 3, 45, 39)  # odd: exercises the stem padding and PatchMerging's odd-size padding
    _assert_same_function(model, official, x, dinats_filter_fn)

    dense = OfficialDiNATs(dense=True, **args).eval()
    dense_sd = {f'backbone.{k}': v for k, v in _randomize(dense).items()}
    features = timm.create_model('dinat_s_tiny', features_only=True, **args).eval()
    features.model.load_state_dict(dinats_filter_fn({'state_dict': dense_sd}, features.model), strict=True)
    with torch.no_grad():
        for ours, theirs in zip(features(x), dense(x)):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
