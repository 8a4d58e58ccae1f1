"""ViTAEv2-VSA: parameter counts against the official code, the official key layout (fixture) and checkpoint
conversion (classification EMA and mmdet backbone), outputs and gradients against a re-statement of the official
modules (classification rule, and the detection backbone's padding and offset rule on non-square inputs), any input
size, no CUDA at construction, the released VSR initialisation and drop-path schedule."""
import json
import math
from pathlib import Path
from typing import List, Sequence, Tuple

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import hiervit  # noqa: F401  (registers the models)
from hiervit.backbones.vitae_vsa import ViTAEv2VSA, _VARIANT_ARGS, checkpoint_filter_fn, official_drop_path_rates

FIXTURES = Path(__file__).parent / 'fixtures'

# Parameter counts of the official Image-Classification/vitaev2_vsa/models.py (ViTAEv2_VSA_S, _widePCM_48M, _widePCM_B),
# counted by building them (with `.cuda()` removed); the README gives none.
OFFICIAL_PARAMS = {'vitaev2_vsa_s': 19_773_300, 'vitaev2_vsa_48m': 51_089_119, 'vitaev2_vsa_b': 93_711_532}

# ---------------------------------------------------------------------------------------------------------------------
# A re-statement of the official modules (vsa.py, ReductionCell.py, NormalCell.py, base_model.py of the classification
# code; window.py of the detection backbone) with the official parameter names: layers.{i}.RC.{PRM.convs.{k}.0, pos,
# norm1, attn, PCM, norm2, mlp}, layers.{i}.NC.{j}.{pos, norm1, attn, PCM, norm2, mlp}, head. Tokens are [B, N, C].


class OfficialVSA(nn.Module):
    def __init__(self, dim: int, heads: int, out_dim: int, ws: int = 7, detection: bool = False):
        super().__init__()
        self.heads, self.out_dim, self.ws, self.detection = heads, out_dim, ws, detection
        self.scale = (dim // heads) ** -0.5
        self.sampling_offsets = nn.Sequential(nn.AvgPool2d(ws, ws), nn.LeakyReLU(), nn.Conv2d(dim, 2 * heads, 1))
        self.sampling_scales = nn.Sequential(nn.AvgPool2d(ws, ws), nn.LeakyReLU(), nn.Conv2d(dim, 2 * heads, 1))
        self.qkv = nn.Conv2d(dim, 3 * out_dim, 1)
        self.proj = nn.Conv2d(out_dim, out_dim, 1)
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * ws - 1) ** 2, heads) * .02)
        c = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing='ij')).flatten(1)
        rel = (c[:, :, None] - c[:, None, :]).permute(1, 2, 0)
        self.register_buffer('relative_position_index', (rel[..., 0] + ws - 1) * (2 * ws - 1) + rel[..., 1] + ws - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, h, w]
        b, _, h, w = x.shape
        ws, nh_ = self.ws, self.heads
        ph, pw = -h % ws, -w % ws
        top, left = (ph // 2, pw // 2) if self.detection else (0, 0)
        pad = (left, pw - left, top, ph - top)
        H, W = h + ph, w + pw
        nh, nw = H // ws, W // ws
        # window centres (mean of linspace(-1, 1) over the window) + centred in-window offsets, [1, 2, nh, ws, nw, ws]
        ref = torch.stack(torch.meshgrid(torch.linspace(-1, 1, W), torch.linspace(-1, 1, H), indexing='ij'))
        ref = ref.permute(0, 2, 1)[None]
        centre = F.avg_pool2d(ref, ws).reshape(1, 2, nh, 1, nw, 1)
        bh = torch.arange(ws) * 2 / (H - 1)
        bw = torch.arange(ws) * 2 / (W - 1)
        bh, bw = (bh - bh.mean()).repeat(nh), (bw - bw.mean()).repeat(nw)
        coords = torch.stack(torch.meshgrid(bw, bh, indexing='ij')).permute(0, 2, 1).reshape(1, 2, nh, ws, nw, ws)
        xp = F.pad(x, pad)
        off = self.sampling_offsets(xp).reshape(b * nh_, 2, nh, nw)
        div_x, div_y = (h // ws, w // ws) if self.detection else (w // ws, h // ws)
        off = torch.stack([off[:, 0] / div_x, off[:, 1] / div_y], 1)
        sc = self.sampling_scales(xp).reshape(b * nh_, 2, nh, nw)
        grid = centre + coords + coords * sc[:, :, :, None, :, None] + off[:, :, :, None, :, None]
        grid = grid.permute(0, 2, 3, 4, 5, 1).reshape(b * nh_, H, W, 2)
        d = self.out_dim // nh_
        qkv = F.pad(self.qkv(x), pad).reshape(b, 3, nh_, d, H, W).transpose(0, 1).reshape(3, b * nh_, d, H, W)
        q = qkv[0]
        k = F.grid_sample(qkv[1], grid, padding_mode='zeros', align_corners=True)
        v = F.grid_sample(qkv[2], grid, padding_mode='zeros', align_corners=True)

        def windows(t):  # [b * heads, d, H, W] -> [b * nh * nw, heads, ws * ws, d]
            t = t.reshape(b, nh_, d, nh, ws, nw, ws).permute(0, 3, 5, 1, 4, 6, 2)
            return t.reshape(b * nh * nw, nh_, ws * ws, d)

        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = (windows(q) @ windows(k).transpose(-2, -1)) * self.scale + bias.reshape(ws * ws, ws * ws, -1).permute(
            2, 0, 1)[None]
        out = attn.softmax(-1) @ windows(v)
        out = out.reshape(b, nh, nw, nh_, ws, ws, d).permute(0, 3, 6, 1, 4, 2, 5).reshape(b, nh_ * d, H, W)
        return self.proj(out[:, :, top:top + h, left:left + w])


class OfficialMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


def _pcm(cin: int, c1: int, c2: int, cout: int, strides: Sequence[int], g: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, c1, 3, strides[0], 1, groups=g), nn.BatchNorm2d(c1), nn.SiLU(),
        nn.Conv2d(c1, c2, 3, strides[1], 1, groups=g), nn.BatchNorm2d(c2), nn.SiLU(),
        nn.Conv2d(c2, cout, 3, strides[2], 1, groups=g))


class OfficialPRM(nn.Module):
    def __init__(self, cin: int, e: int, k: int, r: int, dilations: Sequence[int], extra: int):
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Sequential(nn.Conv2d(cin, e, k, r, math.ceil(((k - 1) * d + 1 - r) / 2) + extra, d), nn.GELU())
            for d in dilations])

    def forward(self, x):
        return torch.cat([c(x) for c in self.convs], 1)


class OfficialRC(nn.Module):
    def __init__(self, size: int, cin: int, e: int, t: int, r: int, k: int, dil, heads: int, g: int, wide: bool,
                 detection: bool, ws: int):
        super().__init__()
        self.PRM = OfficialPRM(cin, e, k, r, dil, 0 if detection or size % r == 0 else 1)
        c = e * len(dil)
        self.pos = nn.Conv2d(c, c, 7, 1, 3, groups=c)
        self.norm1 = nn.LayerNorm(c)
        self.attn = OfficialVSA(c, heads, t, ws, detection)
        h = 2 * t if wide else e
        self.PCM = _pcm(cin, h, h, t, (2, 2, 1) if r == 4 else (2, 1, 1), g)
        self.norm2 = nn.LayerNorm(t)
        self.mlp = OfficialMlp(t, t)

    def forward(self, x):  # NCHW in, tokens out
        y = self.PRM(x)
        y = y + self.pos(y)
        B, C, h, w = y.shape
        y = self.attn(self.norm1(y.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(B, C, h, w))
        y = y.flatten(2).transpose(1, 2) + self.PCM(x).flatten(2).transpose(1, 2)
        return y + self.mlp(self.norm2(y)), (h, w)


class OfficialNC(nn.Module):
    def __init__(self, dim: int, heads: int, g: int, detection: bool, ws: int):
        super().__init__()
        self.pos = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = OfficialVSA(dim, heads, dim, ws, detection)
        self.PCM = _pcm(dim, 4 * dim, dim, dim, (1, 1, 1), g)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = OfficialMlp(dim, 4 * dim)

    def forward(self, x, hw):
        B, N, C = x.shape
        img = x.transpose(1, 2).reshape(B, C, *hw)
        y = x + self.pos(img).flatten(2).transpose(1, 2)
        y = self.attn(self.norm1(y).transpose(1, 2).reshape(B, C, *hw)).flatten(2).transpose(1, 2)
        x = x + y + self.PCM(img).flatten(2).transpose(1, 2)
        return x + self.mlp(self.norm2(x))


class OfficialLayer(nn.Module):
    def __init__(self, rc: OfficialRC, ncs: List[OfficialNC]):
        super().__init__()
        self.RC, self.NC = rc, nn.ModuleList(ncs)


class OfficialViTAEv2VSA(nn.Module):
    """The official classification model built for `img_size` (detection=True: the mmdet backbone's rules)."""

    def __init__(self, img_size: int = 224, detection: bool = False, num_classes: int = 1000, window_size: int = 7,
                 embed_dims=(64, 64, 128, 256), token_dims=(64, 128, 256, 512), depths=(2, 2, 8, 2),
                 num_heads=(2, 4, 8, 16), rc_heads=(2, 2, 4, 8), nc_groups=(1, 32, 64, 128), rc_groups=(1, 16, 32, 64),
                 wide_pcm=False, **_):
        super().__init__()
        layers, cin, size = [], 3, img_size
        dil = ((1, 2, 3, 4), (1, 2, 3), (1, 2), (1, 2))
        for i, r in enumerate((4, 2, 2, 2)):
            rc = OfficialRC(size, cin, embed_dims[i], token_dims[i], r, (7, 3, 3, 3)[i], dil[i], rc_heads[i],
                            rc_groups[i], wide_pcm, detection, window_size)
            layers.append(OfficialLayer(rc, [
                OfficialNC(token_dims[i], num_heads[i], nc_groups[i], detection, window_size)
                for _ in range(depths[i])]))
            cin, size = token_dims[i], size // r
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(token_dims[-1], num_classes) if num_classes else None

    def stage_outputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs = []
        for layer in self.layers:
            x, hw = layer.RC(x)
            for nc in layer.NC:
                x = nc(x, hw)
            x = x.transpose(1, 2).reshape(x.shape[0], -1, *hw)
            outs.append(x)
        return outs

    def forward(self, x):
        return self.head(self.stage_outputs(x)[-1].mean((2, 3)))


# ---------------------------------------------------------------------------------------------------------------------

# Tiny widths and a 3 x 3 default window (the CPE convs stay 7 x 7 as released), so small inputs pad every stage
TINY = dict(window_size=3, embed_dims=(8, 8, 16, 16), token_dims=(16, 32, 32, 64), depths=(1, 1, 1, 1),
            num_heads=(2, 2, 4, 4), rc_heads=(2, 2, 2, 4), nc_groups=(1, 4, 4, 8), rc_groups=(1, 4, 4, 8))


def _randomize(model: nn.Module) -> nn.Module:
    """Random values in every parameter and BN statistic (the VSR branches scaled up, so windows really move)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith('running_var'):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * (0.3 if 'sampling' in name else 0.1))
    return model


def _official_pair(detection: bool, img_size: int = 96, **kwargs) -> Tuple[nn.Module, ViTAEv2VSA]:
    official = _randomize(OfficialViTAEv2VSA(img_size=img_size, detection=detection, num_classes=10, **TINY)).eval()
    rules = dict(vsa_padding='center', vsa_offset_rule='detection') if detection else {}
    ours = ViTAEv2VSA(num_classes=10, **TINY, **rules, **kwargs).eval()
    ours.load_state_dict(checkpoint_filter_fn({'state_dict_ema': official.state_dict(), 'model': {}}, ours))
    return official, ours


def test_params_equal_official_code():
    for name, count in OFFICIAL_PARAMS.items():
        with torch.device('meta'):
            ours = timm.create_model(name)
            restated = OfficialViTAEv2VSA(**_VARIANT_ARGS[name])
        assert sum(p.numel() for p in ours.parameters()) == count, name
        assert sum(p.numel() for p in restated.parameters()) == count, name


def test_official_key_layout_converts():
    """The released S checkpoint layout (fixture: every key and shape of the official model's state dict) converts,
    EMA weights first, and so does the backbone of an mmdet checkpoint (`backbone.` keys, no head)."""
    shapes = json.loads((FIXTURES / 'vitaev2_vsa_s_keys.json').read_text())
    with torch.device('meta'):
        restated = OfficialViTAEv2VSA()
    assert {k: list(v.shape) for k, v in restated.state_dict().items()
            if not k.endswith('num_batches_tracked')} == {k: v for k, v in shapes.items()
                                                          if not k.endswith('num_batches_tracked')}
    with torch.device('meta'):  # keys and shapes only
        official = {k: torch.empty(v) for k, v in shapes.items()}
        model = timm.create_model('vitaev2_vsa_s')
        backbone = timm.create_model('vitaev2_vsa_s', num_classes=0)
    model.load_state_dict(checkpoint_filter_fn({'state_dict_ema': official, 'model': {}}, model), assign=True)
    detector = {'backbone.' + k: v for k, v in official.items() if not k.startswith('head.')}
    detector['neck.lateral_convs.0.conv.weight'] = torch.empty(256, 64, 1, 1, device='meta')
    backbone.load_state_dict(checkpoint_filter_fn({'state_dict': detector, 'meta': {}}, backbone), assign=True)
    with pytest.raises(ValueError, match='no classifier'):
        checkpoint_filter_fn({'state_dict': detector}, model)
    with pytest.raises(ValueError, match='does not fit'):
        checkpoint_filter_fn({k: v for k, v in official.items() if 'layers.3' not in k}, model)


@pytest.mark.parametrize('size', [96, 128])
def test_classification_matches_official_modules(size):
    """Logits and input gradients against the official classification structure built for `size` (96: no padding;
    128: every stage is padded and the official offset divisors differ from the padded window counts)."""
    official, ours = _official_pair(detection=False, img_size=size)
    x = torch.randn(1, 3, size, size, requires_grad=True)
    want = official(x)
    (g_want,) = torch.autograd.grad(want.square().sum(), x)
    got = ours(x)
    (g_got,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_got, g_want, rtol=1e-3, atol=1e-5)


def test_detection_backbone_matches_official_modules():
    """Stage outputs on a non-square detection input (multiple of 32): centred padding and the detection code's
    swapped offset divisors, as the official mmdet backbone."""
    official, ours = _official_pair(detection=True)
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        want = official.stage_outputs(x)
        got = ours.forward_intermediates(x, intermediates_only=True)
    assert [tuple(o.shape[2:]) for o in got] == [(32, 40), (16, 20), (8, 10), (4, 5)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_any_input_size_and_prm_padding():
    """Every stage has ceil(L / stride) rows/cols for any L (PRM and PCM branches agree), outputs are finite."""
    model = ViTAEv2VSA(num_classes=0, **TINY).eval()
    with torch.no_grad():
        for h, w in [(1, 1), (5, 30), (33, 17), (62, 63)]:
            outs = model.forward_intermediates(torch.randn(1, 3, h, w), intermediates_only=True)
            assert [tuple(o.shape[2:]) for o in outs] == [
                (math.ceil(h / r), math.ceil(w / r)) for r in (4, 8, 16, 32)], (h, w)
            assert all(torch.isfinite(o).all() for o in outs)


def test_construction_is_cpu_and_init_as_released():
    """No CUDA at construction (the official code calls .cuda() in __init__); the VSR branches keep PyTorch's default
    random init (the official zero init is never called), the MLPs the official truncated normal."""
    model = timm.create_model('vitaev2_vsa_s', **TINY)
    assert all(p.device.type == 'cpu' for p in model.parameters())
    attn = model.stages[3].blocks[0].attn
    bound = 1 / math.sqrt(attn.dim)  # kaiming_uniform(a=sqrt(5)) of a 1x1 conv / Linear with this fan-in
    for branch in (attn.sampling_offsets, attn.sampling_scales, attn.qkv):
        assert branch.weight.abs().max() <= bound and branch.weight.std().item() > bound / 3
        assert branch.bias.abs().max() > 0
    fc1 = model.stages[3].blocks[0].mlp.fc1
    assert fc1.weight.std().item() == pytest.approx(0.02, rel=0.1) and not fc1.bias.any()


def test_official_drop_path_schedule():
    assert official_drop_path_rates(0.13, (2, 2, 8, 2)) == [
        pytest.approx([0., .01]), pytest.approx([.02, .03]), pytest.approx([.02 + .01 * i for i in range(8)]),
        pytest.approx([.08, .09])]
    with torch.device('meta'):
        model = timm.create_model('vitaev2_vsa_s', drop_path_rate=0.13)
        cumulative = timm.create_model('vitaev2_vsa_s', drop_path_rate=0.13, official_dpr=False)
    rates = [[getattr(b.drop_path, 'drop_prob', 0.) for b in s.blocks] for s in model.stages]
    assert rates == official_drop_path_rates(0.13, (2, 2, 8, 2))
    assert cumulative.stages[3].blocks[1].drop_path.drop_prob == pytest.approx(0.13)


def test_features_only_uses_the_detection_rule():
    with torch.device('meta'):
        features = timm.create_model('vitaev2_vsa_s', features_only=True)
    attn = features.model.stages[1].blocks[0].attn if hasattr(features, 'model') else None
    assert attn is not None and attn.center and attn.swap_divisors
    assert features.feature_info.channels() == [64, 128, 256, 512]


def test_bad_arguments():
    with pytest.raises(ValueError, match='one entry per stage'):
        ViTAEv2VSA(num_heads=(2, 4, 8))
    with pytest.raises(ValueError, match='in_chans'):
        ViTAEv2VSA(**TINY)(torch.randn(1, 1, 32, 32))
