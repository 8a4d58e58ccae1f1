"""hiervit.VWHead and hiervit.VWCityHead against re-statements of the official VWFormer heads (yan-hao-tian/VW
`mmsegmentation-custom/mmseg/models/decode_heads/vw_head.py`, MIT; mmseg 0.x there): the same key names and shapes
(fixtures), the same parameter count, and the same output for the same weights (VWHead's loaded through the checkpoint
converter, VWCityHead's as they are). The re-statements follow the official module structures and forwards:
copy-shift padding + `F.unfold` contexts, space-to-depth of R x R blocks, and NonLocal2d-based attention with `g` /
`phi` replaced by 1x1 ConvModules (VWHead) or `nn.MultiheadAttention` over windows as sequences (VWCityHead)."""
import json
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip('mmseg', reason='needs the OpenMMLab extras: pip install "hiervit[seg]"')

from hiervit.mm import install_tv_ops  # noqa: E402

install_tv_ops()

from mmcv.cnn import ConvModule, NonLocal2d  # noqa: E402

from hiervit.mm import VWCityHead, VWHead, convert_vw_head_checkpoint  # noqa: E402

pytestmark = pytest.mark.mm
FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
BN = dict(type='BN', requires_grad=True)


@pytest.fixture(scope='module', autouse=True)
def _one_thread():
    """Tiny shapes: intra-op threads only add overhead here, and stall badly when the machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class OfficialVWA(NonLocal2d):
    """The official `VWA`: NonLocal2d (embedded Gaussian, scaled, reduction 1) whose g / phi read the context."""

    def __init__(self, channels, heads):
        super().__init__(in_channels=channels, reduction=1, use_scale=True, conv_cfg=None, norm_cfg=BN,
                         mode='embedded_gaussian')
        self.head = heads
        self.g = ConvModule(channels, channels, 1, conv_cfg=dict(type='Conv2d'), act_cfg=None)
        self.phi = ConvModule(channels, channels, 1, conv_cfg=dict(type='Conv2d'), act_cfg=None)

    def forward(self, query, context):
        n, c = context.shape[:2]
        split = lambda t: t.view(n, self.head, c // self.head, -1).flatten(0, 1)  # noqa: E731  (b h) dim n
        g_x = split(self.g(context)).transpose(1, 2)
        theta_x = split(self.theta(query)).transpose(1, 2)
        weight = self.embedded_gaussian(theta_x, split(self.phi(context)))
        y = (weight @ g_x).view(n, self.head, -1, c // self.head).permute(0, 1, 3, 2).reshape(n, c, *query.shape[2:])
        return self.conv_out(y)


class OfficialVWHead(nn.Module):
    """The official `VWHead` modules (names as in its state dict) and forward, without mmseg's BaseDecodeHead."""

    def __init__(self, in_channels, channels, num_classes, heads, short_cut=True):
        super().__init__()
        C, self.short_cut, self.kernel = channels, short_cut, [2, 4, 8]
        linear = lambda i, o: nn.ModuleDict(dict(proj=nn.Linear(i, o)))  # noqa: E731  (the official MLP)
        self.linear_c4, self.linear_c3, self.linear_c2 = (linear(in_channels[i], C) for i in (3, 2, 1))
        self.linear_fuse = ConvModule(3 * C, C, 1, norm_cfg=BN)
        self.attn = nn.Sequential(*[OfficialVWA(C, heads) for _ in self.kernel])
        self.ds = nn.ModuleList([ConvModule(C, C // (r * r), (r, r), norm_cfg=BN) for r in self.kernel])
        self.short_path = ConvModule(C, C, 1, norm_cfg=BN)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(C, C, 1, norm_cfg=BN))
        self.cat = ConvModule(5 * C, C, 1, norm_cfg=BN)
        self.linear_c1 = linear(in_channels[0], 48)
        self.low_level_fuse = ConvModule(C + 48, C, 1, norm_cfg=BN)
        self.conv_seg = nn.Conv2d(C, num_classes, 1)

    @staticmethod
    def mlp(m, x):
        n, _, h, w = x.shape
        return m.proj(x.flatten(2).transpose(1, 2)).permute(0, 2, 1).reshape(n, -1, h, w)

    @staticmethod
    def copy_shift(x, r, ph, pw):
        x = torch.cat([x[..., (r + 1) * pw // 2:r * pw], x, x[..., -(r * pw):-((r + 1) * pw // 2)]], 3)
        return torch.cat([x[..., (r + 1) * ph // 2:r * ph, :], x, x[..., -(r * ph):-((r + 1) * ph // 2), :]], 2)

    def vw(self, x):
        b, C, h, w = x.shape
        nh = nw = 8
        ph, pw = h // nh, w // nw
        out = [self.short_path(x), F.interpolate(self.image_pool(x), size=(h, w), mode='bilinear')]
        query = x.view(b, C, nh, ph, nw, pw).permute(0, 2, 4, 1, 3, 5).reshape(-1, C, ph, pw)
        for j, r in enumerate(self.kernel):
            pad = [r // 2 - 1, r // 2] if r % 2 == 0 else [r // 2] * 2
            ctx = self.copy_shift(self.ds[j](F.pad(x, pad + pad)), r, ph, pw)
            c = ctx.shape[1]
            ctx = F.unfold(ctx, (r * ph, r * pw), stride=(ph, pw)).view(b, c, r * ph, r * pw, nh * nw)
            ctx = ctx.permute(0, 4, 1, 2, 3).reshape(-1, c, r * ph, r * pw)  # (b nh nw) c (ph rh) (pw rw)
            ctx = ctx.view(-1, c, ph, r, pw, r).permute(0, 3, 5, 1, 2, 4).reshape(-1, r * r * c, ph, pw)
            y = self.attn[j](query, ctx)
            y = y.view(b, nh, nw, C, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, C, h, w)
            out.append(y + x if self.short_cut else y)
        return self.cat(torch.cat(out, 1))

    def forward(self, inputs):
        c1, c2, c3, c4 = inputs
        size = c2.shape[2:]
        _c4 = F.interpolate(self.mlp(self.linear_c4, c4), size=size, mode='bilinear')
        _c3 = F.interpolate(self.mlp(self.linear_c3, c3), size=size, mode='bilinear')
        x = self.vw(self.linear_fuse(torch.cat([_c4, _c3, self.mlp(self.linear_c2, c2)], 1)))
        x = F.interpolate(x, size=c1.shape[2:], mode='bilinear')
        return self.conv_seg(self.low_level_fuse(torch.cat([x, self.mlp(self.linear_c1, c1)], 1)))


class OfficialVWCityHead(nn.Module):
    """The official `VWCityHead` modules (names as in its state dict) and forward: conv + BN + ReLU projections, nearest
    resizing of levels 3-4, no image pooling, `nn.MultiheadAttention` with the (ph pw) window pixels as the sequence."""

    def __init__(self, in_channels, channels, num_classes, heads, short_cut=False):
        super().__init__()
        C, self.short_cut, self.kernel = channels, short_cut, [2, 4, 8]
        conv = lambda i, o, k=1: ConvModule(i, o, k, norm_cfg=BN)  # noqa: E731  (BN + ReLU)
        self.linear_c4, self.linear_c3, self.linear_c2 = (conv(in_channels[i], C) for i in (3, 2, 1))
        self.linear_c1 = conv(in_channels[0], 48)
        self.linear_fuse, self.short_path = conv(3 * C, C), conv(C, C)
        self.cat, self.low_level_fuse = conv(4 * C, C), conv(C + 48, C)
        self.attn = nn.Sequential(*[nn.MultiheadAttention(C, heads) for _ in self.kernel])
        self.ds = nn.ModuleList([conv(C, C // (r * r), r) for r in self.kernel])
        self.conv_seg = nn.Conv2d(C, num_classes, 1)

    def forward(self, inputs):
        c1, c2, c3, c4 = inputs
        size = c2.shape[2:]
        _c4 = F.interpolate(self.linear_c4(c4), size=size, mode='nearest')
        _c3 = F.interpolate(self.linear_c3(c3), size=size, mode='nearest')
        x = self.linear_fuse(torch.cat([_c4, _c3, self.linear_c2(c2)], 1))
        b, C, h, w = x.shape
        nh = nw = 8
        ph, pw = h // nh, w // nw
        out = [self.short_path(x)]
        query = x.view(b, C, nh, ph, nw, pw).permute(3, 5, 0, 2, 4, 1).reshape(ph * pw, -1, C)  # (ph pw) (b nh nw) c
        for j, r in enumerate(self.kernel):
            pad = [r // 2 - 1, r // 2]
            ctx = OfficialVWHead.copy_shift(self.ds[j](F.pad(x, pad + pad)), r, ph, pw)
            c = ctx.shape[1]
            ctx = F.unfold(ctx, (r * ph, r * pw), stride=(ph, pw)).view(b, c, ph, r, pw, r, nh * nw)
            ctx = ctx.permute(2, 4, 0, 6, 3, 5, 1).reshape(ph * pw, -1, r * r * c)  # (ph pw) (b nh nw) (rh rw c)
            y, _ = self.attn[j](query, ctx, ctx)
            y = y.view(ph, pw, b, nh, nw, C).permute(2, 5, 3, 0, 4, 1).reshape(b, C, h, w)
            out.append(y + x if self.short_cut else y)
        x = F.interpolate(self.cat(torch.cat(out, 1)), size=c1.shape[2:], mode='bilinear')
        return self.conv_seg(self.low_level_fuse(torch.cat([x, self.linear_c1(c1)], 1)))


def _ours(cls, in_channels, channels, num_classes, heads, short_cut=True):
    return cls(in_channels=in_channels, in_index=[0, 1, 2, 3], channels=channels, num_classes=num_classes,
               nheads=heads, short_cut=short_cut, norm_cfg=BN, dropout_ratio=0.1, align_corners=False)


def _randomise(module):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5 if 'running_var' in name else
                        torch.randn(t.shape, generator=gen) * (0.2 if t.dim() > 1 else 0.5))
    return module


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_official_keys_and_parameter_count():
    """The re-statement has the keys and shapes of the official head for ConvNeXt-T's ADE20K config (in_channels
    96/192/384/768, channels 512, 150 classes, `vw_convnext_tiny_fp16_512x512_160k_ade20k.py`), and hiervit's head
    has as many parameters and loads those keys through the converter."""
    with open(os.path.join(FIXTURES, 'vwformer_head_convnext_tiny_keys.json')) as f:
        fixture = json.load(f)['decode_head']
    official = OfficialVWHead([96, 192, 384, 768], 512, 150, 1)
    assert {k: list(v.shape) for k, v in official.state_dict().items()} == fixture
    ours = _ours(VWHead, [96, 192, 384, 768], 512, 150, 1)
    assert _count(ours) == _count(official) == 7_624_726
    state = {k: torch.randn(shape) if shape else torch.tensor(0) for k, shape in fixture.items()}
    ours.load_state_dict(state, strict=True)
    converted = convert_vw_head_checkpoint({f'decode_head.{k}': v for k, v in state.items()})
    assert converted['decode_head.attn.2.phi.conv.weight'].shape == (512, 8, 8, 8)
    assert converted['decode_head.attn.2.phi.conv.weight'].flatten(1).sum(1).allclose(
        state['attn.2.phi.conv.weight'].flatten(1).sum(1), atol=1e-4)


def test_city_head_official_keys_and_parameter_count():
    """VWCityHead for ConvNeXt-T's Cityscapes config (`vw_convnext_tiny_fp16_512x1024_160k_cityscapes.py`: channels
    512, nheads 16, 19 classes): the fixture (dumped from the official class), the re-statement and hiervit's head
    have the same keys, shapes and parameter count; the official keys load as they are."""
    with open(os.path.join(FIXTURES, 'vwformer_cityhead_convnext_tiny_keys.json')) as f:
        fixture = json.load(f)['decode_head']
    official = OfficialVWCityHead([96, 192, 384, 768], 512, 19, 16)
    ours = _ours(VWCityHead, [96, 192, 384, 768], 512, 19, 16, short_cut=False)
    for head in (official, ours):
        assert {k: list(v.shape) for k, v in head.state_dict().items()} == fixture
    assert _count(ours) == _count(official) == 7_032_259


# windows of 2x3, 5x5 (the 640 px case: p not a multiple of R, overlapping strided key windows) and 3x2
CASES = [((16, 24), 2, True), ((40, 40), 1, True), ((24, 16), 4, False)]
CASE_IDS = ['p2x3', 'p5', 'p3x2-noshortcut']


@pytest.mark.parametrize('heads_cls', ['VWHead', 'VWCityHead'])
@pytest.mark.parametrize('size,heads,short_cut', CASES, ids=CASE_IDS)
def test_output_equals_the_official_head(heads_cls, size, heads, short_cut):
    """Same weights (the official layout; VWHead's converted on load), eval mode, on 1/8 maps of `size`."""
    official_cls, cls = dict(VWHead=(OfficialVWHead, VWHead), VWCityHead=(OfficialVWCityHead, VWCityHead))[heads_cls]
    widths = [16, 24, 32, 40]
    official = _randomise(official_cls(widths, 64, 7, heads, short_cut)).eval()
    ours = _ours(cls, widths, 64, 7, heads, short_cut).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    h, w = size
    gen = torch.Generator().manual_seed(1)
    feats = [torch.randn(2, c, h * 2 // s, w * 2 // s, generator=gen) for c, s in zip(widths, (1, 2, 4, 8))]
    with torch.no_grad():
        want, got = official(feats), ours(feats)
    assert got.shape == (2, 7, 2 * h, 2 * w)
    torch.testing.assert_close(got, want, atol=2e-4 * want.abs().max().item(), rtol=0)


@pytest.mark.parametrize('cls', [VWHead, VWCityHead], ids=lambda c: c.__name__)
def test_trains_and_refuses_bad_sizes(cls):
    head = _ours(cls, [8, 8, 16, 16], 64, 3, 2)
    feats = [torch.randn(2, c, 32 // s, 32 // s, requires_grad=True) for c, s in zip([8, 8, 16, 16], (1, 2, 4, 8))]
    head(feats).sum().backward()
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match=f'{cls.__name__}: .*divisible by 8 on both sides.*multiple of 64 px'):
        head([f[..., :-4, :] for f in feats[:1]] + [f[..., :-2, :] for f in feats[1:2]] + feats[2:])
    with pytest.raises(ValueError, match='divisible by every ratio squared'):
        _ours(cls, [8, 8, 16, 16], 48, 3, 1)
