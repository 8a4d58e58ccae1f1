"""FLatten: parameter counts against the official code, the official key layouts (fixtures) and their conversion,
the mixers' outputs and gradients against a re-statement of the official modules (their current, numerically fixed
formula), position encodings at other and non-square sizes, half precision, and the construction errors."""
import json
from pathlib import Path
from typing import Dict

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import hiervit  # noqa: F401  (registers the models)
from hiervit.backbones.flatten import (
    FLattenAttention, FLattenCSWinAttention, FLattenPVTAttention, checkpoint_filter_fn, focus, resize_pos_encoding)
from hiervit.backbones.layers.window import SwinWindowAttention

FIXTURES = Path(__file__).parent / 'fixtures'

# Parameter counts of the official models (LeapLabTHU/FLatten-Transformer abdb115, models/flatten_*.py built with
# the cfgs/*.yaml arguments and counted with sum(p.numel() for p in model.parameters())).
OFFICIAL_PARAMS = {
    'flatten_swin_tiny': 29_192_384,
    'flatten_swin_small': 50_510_288,
    'flatten_swin_base': 88_972_488,
    'flatten_swin_base_384': 91_433_928,
    'flatten_pvt_tiny': 12_150_504,
    'flatten_pvt_small': 21_670_248,
    'flatten_pvt_medium': 37_242_216,
    'flatten_pvt_large': 50_649_192,
    'flatten_pvt_v2_b0': 3_594_824,
    'flatten_pvt_v2_b1': 12_931_240,
    'flatten_pvt_v2_b2': 22_548_264,
    'flatten_pvt_v2_b3': 38_273_832,
    'flatten_pvt_v2_b4': 51_836_968,
    'flatten_pvt_v2_b5': 67_061_544,
    'flatten_cswin_tiny': 21_201_768,
    'flatten_cswin_small': 35_451_752,
    'flatten_cswin_base': 74_867_032,
    'flatten_cswin_base_384': 78_369_112,
}
# No FLOPs are published (the README gives accuracies only): ours, recorded (torch's FlopCounterMode / 2, i.e.
# multiply-adds, at each variant's input size), so that a change shows.
RECORDED_GMACS = {
    'flatten_swin_tiny': 4.483,
    'flatten_swin_small': 8.734,
    'flatten_swin_base': 15.421,
    'flatten_swin_base_384': 46.382,
    'flatten_cswin_tiny': 4.324,
    'flatten_cswin_small': 6.783,
    'flatten_cswin_base': 14.913,
    'flatten_cswin_base_384': 46.305,
}


# The official PVT v1 models hold a final LayerNorm (2 x 512 parameters) that their forward never applies; here it
# does not exist (every parameter trains) and the checkpoint filter drops it.
UNUSED_OFFICIAL = {n: 1024 for n in OFFICIAL_PARAMS if n.startswith('flatten_pvt_') and '_v2_' not in n}


@pytest.mark.parametrize('name', sorted(OFFICIAL_PARAMS))
def test_params_equal_official(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name] - UNUSED_OFFICIAL.get(name, 0)


def test_registered_variants():
    assert set(OFFICIAL_PARAMS) <= set(timm.list_models(module='flatten'))


def _from_fixture(name: str) -> Dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device='meta') for k, shape in json.loads((FIXTURES / name).read_text()).items()}


@pytest.mark.parametrize('name', ['flatten_swin_tiny', 'flatten_cswin_tiny', 'flatten_pvt_tiny', 'flatten_pvt_v2_b0'])
def test_official_checkpoint_loads_strictly(name):
    """The official key layout (fixture: the released model's keys and shapes) converts and loads strictly; its
    parameters (buffers aside) are the official count."""
    sd = _from_fixture(f'{name}_keys.json')
    buffers = ('relative_position_index', 'attn_mask')
    assert sum(v.numel() for k, v in sd.items() if not k.endswith(buffers)) == OFFICIAL_PARAMS[name]
    with torch.device('meta'):
        model = timm.create_model(name)
        headless = timm.create_model(name, num_classes=0)
    model.load_state_dict(checkpoint_filter_fn({'model': sd}, model), assign=True)
    headless.load_state_dict(checkpoint_filter_fn(sd, headless), assign=True)
    with torch.device('meta'):
        other = timm.create_model(name.replace('tiny', 'small').replace('b0', 'b1'))
    with pytest.raises(ValueError, match='does not fit'):
        checkpoint_filter_fn(sd, other)


# ---------------------------------------------------------------------------------------------------------------------
# A re-statement of the official FocusedLinearAttention (current version, after "fix numerical instability"), with
# its parameter names: qkv, proj, dwc, scale [1, 1, C], positional_encoding [1, N, C]; CSWin's adds get_v (LePE).

def official_focused(q, k, v, scale, pe, dwc: nn.Conv2d, heads: int, H: int, W: int, p: float = 3.):
    B, N, C = q.shape
    k = k + pe
    s = F.softplus(scale)
    q, k = (F.relu(q) + 1e-6) / s, (F.relu(k) + 1e-6) / s
    qn, kn = q.norm(dim=-1, keepdim=True), k.norm(dim=-1, keepdim=True)
    q, k = q ** p, k ** p
    q, k = q / q.norm(dim=-1, keepdim=True) * qn, k / k.norm(dim=-1, keepdim=True) * kn
    q, k, v = (t.reshape(B, N, heads, -1).permute(0, 2, 1, 3) for t in (q, k, v))
    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    kv = (k.transpose(-2, -1) * N ** -0.5) @ (v * N ** -0.5)
    x = (q @ kv * z).transpose(1, 2).reshape(B, N, C)
    v = v.reshape(B * heads, H, W, -1).permute(0, 3, 1, 2)
    return x + dwc(v).reshape(B, C, N).permute(0, 2, 1)


class OfficialSwinL(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, cswin: bool = False):
        super().__init__()
        self.heads, self.window, self.cswin = heads, window, cswin
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.dwc = nn.Conv2d(dim // heads, dim // heads, 5, padding=2, groups=dim // heads)
        self.scale = nn.Parameter(torch.zeros(1, 1, dim))
        self.positional_encoding = nn.Parameter(torch.zeros(1, window * window, dim))
        if cswin:
            self.get_v = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x):  # [B, N, C] of a square map
        B, N, C = x.shape
        H = W = int(N ** 0.5)
        q, k, v = self.qkv(x).reshape(B, N, 3, C).permute(2, 0, 1, 3)
        out = official_focused(q, k, v, self.scale, self.positional_encoding, self.dwc, self.heads, H, W)
        if self.cswin:
            out = out + self.get_v(v.transpose(1, 2).reshape(B, C, H, W)).reshape(B, C, N).transpose(1, 2)
        return self.proj(out)


class OfficialPVTL(nn.Module):
    def __init__(self, dim: int, heads: int, side: int):
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.dwc = nn.Conv2d(dim // heads, dim // heads, 5, padding=2, groups=dim // heads)
        self.scale = nn.Parameter(torch.zeros(1, 1, dim))
        self.positional_encoding = nn.Parameter(torch.zeros(1, side * side, dim))

    def forward(self, x):
        B, N, C = x.shape
        H = W = int(N ** 0.5)
        k, v = self.kv(x).reshape(B, N, 2, C).permute(2, 0, 1, 3)
        return self.proj(official_focused(self.q(x), k, v, self.scale, self.positional_encoding, self.dwc,
                                          self.heads, H, W))


def _randomize(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)


@pytest.mark.parametrize('kind', ['swin', 'cswin', 'pvt'])
def test_mixer_matches_official(kind):
    torch.manual_seed(0)
    dim, heads, side = 24, 3, 6
    official = (OfficialPVTL(dim, heads, side) if kind == 'pvt' else OfficialSwinL(dim, heads, side, kind == 'cswin'))
    official = official.double()
    _randomize(official)
    ours = {'swin': FLattenAttention, 'cswin': FLattenCSWinAttention, 'pvt': FLattenPVTAttention}[kind]
    ours = ours(dim, heads, side).double()
    ours.load_state_dict(official.state_dict())
    x = torch.randn(2, side, side, dim, dtype=torch.float64, requires_grad=True)
    out = ours(x)
    ref = official(x.reshape(2, side * side, dim)).reshape(out.shape)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    g = torch.randn_like(out)
    names = [n for n, _ in official.named_parameters()]
    params, ref_params = dict(ours.named_parameters()), dict(official.named_parameters())
    grads = torch.autograd.grad(out, [x] + [params[n] for n in names], g)
    ref_grads = torch.autograd.grad(ref, [x] + [ref_params[n] for n in names], g)
    for n, a, b in zip(['x'] + names, grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=lambda m: f'{n}: {m}')


def test_position_encoding_exact_at_trained_size_and_interpolated_otherwise():
    pe = torch.randn(1, 4 * 6, 8)
    assert resize_pos_encoding(pe, [4, 6], 4, 6) is pe
    out = resize_pos_encoding(pe, [4, 6], 5, 9)
    grid = pe.reshape(1, 4, 6, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(5, 9), mode='bilinear', align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out, ref)
    # a non-square map through the mixer, position encoding trained for another (non-square) size
    mixer = FLattenAttention(16, 2, (4, 6))
    y = mixer(torch.randn(2, 5, 9, 16))
    assert y.shape == (2, 5, 9, 16) and torch.isfinite(y).all()


def test_focusing_function_is_the_official_one_and_finite_in_half():
    x = torch.rand(3, 7, 16, dtype=torch.float64) + 1e-6
    n = x.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(focus(x, 3.), x ** 3 / (x ** 3).norm(dim=-1, keepdim=True) * n)
    big = torch.full((2, 64), 300., dtype=torch.float16)
    big[:, 0] = 900.
    assert not torch.isfinite((big ** 3).norm(dim=-1)).all()  # the literal formula overflows in fp16
    y = focus(big, 3.)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), focus(big.double(), 3.), rtol=2e-3, atol=1e-2)


def official_swin_window(x, qkv: nn.Linear, proj: nn.Linear, table, heads: int, w: int, shift: int):
    """Swin's W-MSA / SW-MSA on a [B, H, W, C] map (window multiples): roll, partition, -100 region mask."""
    B, H, W, C = x.shape
    if shift:
        x = torch.roll(x, (-shift, -shift), (1, 2))
    win = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)
    q, k, v = qkv(win).reshape(-1, w * w, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing='ij')).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
    bias = table[rel[..., 0] * (2 * w - 1) + rel[..., 1]].permute(2, 0, 1)
    attn = (q * (C // heads) ** -0.5) @ k.transpose(-2, -1) + bias
    if shift:
        img = torch.zeros(1, H, W, 1)
        cnt = 0
        for hs in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
            for ws in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
                img[:, hs, ws] = cnt
                cnt += 1
        mw = img.view(1, H // w, w, W // w, w).permute(0, 1, 3, 2, 4).reshape(-1, w * w)
        mask = (mw[:, None, :] - mw[:, :, None]).ne(0).float() * -100.
        attn = (attn.view(B, -1, heads, w * w, w * w) + mask[None, :, None]).view(-1, heads, w * w, w * w)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, w, w, C)
    out = out.view(B, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
    if shift:
        out = torch.roll(out, (shift, shift), (1, 2))
    return proj(out)


@pytest.mark.parametrize('shift', [0, 2])
def test_swin_window_mixer_matches_official(shift):
    torch.manual_seed(0)
    mixer = SwinWindowAttention(16, 2, window_size=4, shift=shift > 0)
    _randomize(mixer)
    x = torch.randn(2, 8, 12, 16)
    ref = official_swin_window(x, mixer.qkv, mixer.proj, mixer.relative_position_bias_table, 2, 4, shift)
    torch.testing.assert_close(mixer(x), ref, rtol=1e-4, atol=1e-5)
    # no larger than one window: Swin drops the shift; other sizes are padded with masked keys
    assert mixer(torch.randn(1, 4, 9, 16)).shape == (1, 4, 9, 16)


SMALL_SWIN = dict(embed_dim=16, depths=(1, 2, 1, 2), num_heads=(1, 2, 2, 4))


@pytest.mark.parametrize('name, size', [('flatten_swin_tiny', (64, 64)), ('flatten_swin_tiny', (37, 70)),
                                        ('flatten_cswin_tiny', (64, 64)), ('flatten_cswin_tiny', (45, 83))])
def test_any_input_size(name, size):
    extra = {} if 'cswin' in name else dict(SMALL_SWIN)
    if 'cswin' in name:
        extra = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(2, 2, 4, 4), split_size=(1, 2, 2, 2))
    model = timm.create_model(name, num_classes=5, img_size=64, **extra).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 5) and torch.isfinite(out).all()


TINY = {
    'flatten_swin_tiny': SMALL_SWIN,
    'flatten_cswin_tiny': dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(2, 2, 4, 4), split_size=(1, 2, 2, 2)),
    'flatten_pvt_tiny': dict(embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)),
}


@pytest.mark.parametrize('name', sorted(TINY))
def test_layout_mixers_export(name):
    """The Swin-, CSWin- and PVT-layout mixers (PVTv2 gets the whole export battery in test_export.py as the
    family's smallest model) through FX, TorchScript and torch.export, at a non-square size that is not the build
    size (the position encodings are interpolated)."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3, img_size=64, drop_path_rate=0., **TINY[name]).eval()
    x = torch.randn(2, 3, 40, 72)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), ref)
        torch.testing.assert_close(torch.jit.script(model)(x), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), ref, rtol=1e-5, atol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match='attn_type'):
        timm.create_model('flatten_swin_tiny', attn_type='LLS')
    with pytest.raises(ValueError, match='attn_type'):
        timm.create_model('flatten_swin_tiny', attn_type='LLXS')
    with pytest.raises(ValueError, match='la_split_size'):
        timm.create_model('flatten_cswin_tiny', la_split_size=(28, 28, 14, 7))
    with pytest.raises(ValueError, match='kernel_size'):
        FLattenAttention(16, 2, 4, kernel_size=4)
    with pytest.raises(ValueError, match='num_heads'):
        FLattenAttention(16, 3, 4)


@pytest.mark.parametrize('name', sorted(RECORDED_GMACS))
def test_flops_recorded(name):
    with torch.device('meta'):
        model = timm.create_model(name)
        size = model.pretrained_cfg['input_size']
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, *size))
    g = counter.get_total_flops() / 2 / 1e9
    assert abs(g - RECORDED_GMACS[name]) / RECORDED_GMACS[name] < 0.005, f'{name}: {g:.3f} GMACs'
