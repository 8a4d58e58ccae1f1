"""hiervit.DaViT: timm's DaViT as a dense backbone with the official per-output norms, and the official checkpoints.

The "official" module below is a minimal re-statement of the dingmyu/davit mmdet/mmseg DaViT backbone (parameter
names, shapes and computation as there; token layout (B, N, C) as there), so that a checkpoint in that layout can be
produced, converted and compared output for output with the adapter.
"""
import json
from pathlib import Path
from typing import List, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip('mmengine', reason='needs the OpenMMLab extras: pip install "hiervit[det,seg]"')

import timm  # noqa: E402

from hiervit.mm import DaViT  # noqa: E402
from hiervit.mm.davit import convert_davit_checkpoint  # noqa: E402
from hiervit.registry import MODELS  # noqa: E402

pytestmark = pytest.mark.mm

FIXTURES = Path(__file__).parent / 'fixtures'
TINY = dict(depths=(1, 1, 2, 1), embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8))


class _CPE(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x, size):
        B, N, C = x.shape
        feat = self.proj(x.transpose(1, 2).reshape(B, C, *size))
        return x + feat.flatten(2).transpose(1, 2)


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_chans: int, dim: int):
        super().__init__()
        self.patch = patch
        if patch == 4:
            self.proj = nn.Conv2d(in_chans, dim, 7, 4, 3)
            self.norm = nn.LayerNorm(dim)
        else:
            self.proj = nn.Conv2d(in_chans, dim, 2, 2)
            self.norm = nn.LayerNorm(in_chans)  # applied before the conv

    def forward(self, x, size):
        if x.ndim == 3:
            B, N, C = x.shape
            x = self.norm(x).reshape(B, *size, C).permute(0, 3, 1, 2)
        H, W = x.shape[-2:]
        x = F.pad(x, (0, -W % self.patch, 0, -H % self.patch))
        x = self.proj(x)
        size = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        return (self.norm(x) if self.patch == 4 else x), size


class _Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _Attn(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)


class _Block(nn.Module):
    """SpatialBlock (window attention, window 7) or ChannelBlock (channel-group attention), official semantics."""

    def __init__(self, dim: int, heads: int, spatial: bool, window: int = 7):
        super().__init__()
        self.spatial, self.window = spatial, window
        self.cpe = nn.ModuleList([_CPE(dim), _CPE(dim)])
        self.norm1, self.attn = nn.LayerNorm(dim), _Attn(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), _Mlp(dim)

    def _window_attn(self, x, size):
        B, N, C = x.shape
        (H, W), w, h = size, self.window, self.attn.heads
        x = F.pad(x.reshape(B, H, W, C), (0, 0, 0, -W % w, 0, -H % w))
        Hp, Wp = x.shape[1:3]
        win = x.reshape(B, Hp // w, w, Wp // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)
        q, k, v = self.attn.qkv(win).reshape(win.shape[0], w * w, 3, h, C // h).permute(2, 0, 3, 1, 4)
        out = ((q * (C // h) ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
        out = self.attn.proj(out.transpose(1, 2).reshape(-1, w * w, C))
        out = out.reshape(B, Hp // w, Wp // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
        return out[:, :H, :W].reshape(B, N, C)

    def _channel_attn(self, x):
        B, N, C = x.shape
        h = self.attn.heads
        q, k, v = self.attn.qkv(x).reshape(B, N, 3, h, C // h).permute(2, 0, 3, 1, 4)
        attn = ((k * (C // h) ** -0.5).transpose(-1, -2) @ v).softmax(-1)
        out = (attn @ q.transpose(-1, -2)).transpose(-1, -2)
        return self.attn.proj(out.transpose(1, 2).reshape(B, N, C))

    def forward(self, x, size):
        x = self.cpe[0](x, size)
        cur = self.norm1(x)
        x = x + (self._window_attn(cur, size) if self.spatial else self._channel_attn(cur))
        x = self.cpe[1](x, size)
        return x + self.mlp(self.norm2(x))


class OfficialDaViT(nn.Module):
    """The official mmdet/mmseg DaViT backbone's structure: patch_embeds, main_blocks, norm{i}; NCHW outputs."""

    def __init__(self, depths=(1, 1, 3, 1), embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24)):
        super().__init__()
        self.embed_dims = embed_dims
        self.patch_embeds = nn.ModuleList([
            _PatchEmbed(4 if i == 0 else 2, 3 if i == 0 else embed_dims[i - 1], embed_dims[i]) for i in range(4)])
        self.main_blocks = nn.ModuleList([
            nn.ModuleList([
                nn.ModuleList([_Block(embed_dims[i], num_heads[i], True), _Block(embed_dims[i], num_heads[i], False)])
                for _ in range(depths[i])])
            for i in range(4)])
        for i in range(4):
            self.add_module(f'norm{i}', nn.LayerNorm(embed_dims[i]))

    def forward(self, x) -> List[torch.Tensor]:
        outs: List[torch.Tensor] = []
        size: Tuple[int, int] = tuple(x.shape[-2:])
        for i in range(4):
            x, size = self.patch_embeds[i](x, size)
            for spatial, channel in self.main_blocks[i]:
                x = channel(spatial(x, size), size)
            out = getattr(self, f'norm{i}')(x)
            outs.append(out.reshape(-1, *size, self.embed_dims[i]).permute(0, 3, 1, 2))
        return outs


def _layout(sd) -> dict:
    return {k: list(v.shape) for k, v in sd.items()}


def _randomized(module: nn.Module) -> dict:
    torch.manual_seed(0)
    for p in module.parameters():
        nn.init.normal_(p, std=0.2)
    return module.state_dict()


def test_fixture_matches_official_structure():
    """The stored official DaViT-T dense-backbone key layout is what the re-statement produces."""
    with torch.device('meta'):
        official = OfficialDaViT()
    stored = json.loads((FIXTURES / 'davit_tiny_mm_backbone_keys.json').read_text())
    assert _layout(official.state_dict()) == stored


def test_official_tiny_layout_converts_to_davit_tiny():
    """Every key of the stored official DaViT-T detector backbone converts onto davit_tiny + output norms, strictly."""
    stored = json.loads((FIXTURES / 'davit_tiny_mm_backbone_keys.json').read_text())
    with torch.device('meta'):
        model = timm.create_model('davit_tiny')
        model.out_norms = nn.ModuleList([nn.LayerNorm(c) for c in (96, 192, 384, 768)])
        ckpt = {'state_dict': {f'backbone.{k}': torch.empty(s) for k, s in stored.items()}}
        ckpt['state_dict']['neck.lateral_convs.0.conv.weight'] = torch.empty(256, 96, 1, 1)
        converted = convert_davit_checkpoint(ckpt, model)
    assert set(converted) == set(model.state_dict())
    assert all(converted[k].shape == v.shape for k, v in model.state_dict().items())


@pytest.mark.parametrize('layout', ['detector', 'segmentor_no_prefix'])
def test_official_dense_checkpoint_gives_official_outputs(tmp_path, layout):
    """A checkpoint in the official layout, loaded through init_cfg, reproduces the official backbone's outputs
    (all four normalised maps) at a size that is not a multiple of 32 or of the window."""
    official = OfficialDaViT(**TINY).eval()
    sd = _randomized(official)
    if layout == 'detector':
        stored = {'state_dict': {**{f'backbone.{k}': v for k, v in sd.items()}, 'neck.fpn.weight': torch.zeros(1)}}
    else:
        stored = {'state_dict': sd}
    path = tmp_path / 'official.pth'
    torch.save(stored, path)
    m = MODELS.build(dict(type='hiervit.DaViT', model_name='davit_tiny', **TINY,
                          init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    m.init_weights()
    m.eval()
    x = torch.randn(2, 3, 72, 104)
    with torch.no_grad():
        ours, theirs = m(x), official(x)
    assert len(ours) == 4
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_retinanet_checkpoint_without_norm0(tmp_path):
    """The official RetinaNet runs drop the first output norm (three outputs); such checkpoints load."""
    official = OfficialDaViT(**TINY).eval()
    sd = {k: v for k, v in _randomized(official).items() if not k.startswith('norm0.')}
    path = tmp_path / 'retina.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in sd.items()}}, path)
    m = DaViT(out_indices=(1, 2, 3), **TINY, init_cfg=dict(type='Pretrained', checkpoint=str(path))).eval()
    m.init_weights()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = m(x), official(x)[1:]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('source', ['timm_file', 'timm_hub_overlay'])
def test_init_from_timm_classification_weights(tmp_path, source):
    """timm's weights (a file in timm's layout, or `timm/<name>.<tag>` resolved by timm) load into the backbone;
    the output norms keep their initial values (they are not in classification checkpoints)."""
    cls = timm.create_model('davit_tiny', **TINY)
    sd = _randomized(cls)
    path = tmp_path / 'timm.pth'
    torch.save(sd, path)
    if source == 'timm_file':
        init = dict(type='Pretrained', checkpoint=str(path))
    else:
        init = dict(type='Pretrained', checkpoint='timm/davit_tiny.msft_in1k',
                    pretrained_cfg_overlay=dict(file=str(path)))
    m = DaViT(**TINY, init_cfg=init)
    m.init_weights()
    loaded = m.model.state_dict()
    for k, v in loaded.items():
        if k.startswith('out_norms.'):
            torch.testing.assert_close(v, torch.ones_like(v) if k.endswith('weight') else torch.zeros_like(v))
        else:
            torch.testing.assert_close(v, sd[k], msg=k)


def test_frozen_stages_include_output_norms_and_with_cp():
    m = DaViT(**TINY, frozen_stages=2, drop_path_rate=0.2).train()
    frozen = ('model.stem.', 'model.stages.0.', 'model.stages.1.', 'model.out_norms.0.', 'model.out_norms.1.')
    for name, p in m.named_parameters():
        assert p.requires_grad == (not name.startswith(frozen)), name
    assert not m.model.stages[1].training and m.model.stages[2].training
    torch.manual_seed(0)
    ref = DaViT(**TINY).eval()
    cp = DaViT(**TINY, with_cp=True).eval()
    cp.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 96)
    for a, b in zip(ref(x), cp(x)):
        torch.testing.assert_close(a, b)


def test_bad_arguments_and_foreign_checkpoints(tmp_path):
    with pytest.raises(ValueError, match='DaViT model_name'):
        DaViT(model_name='nat_tiny')
    path = tmp_path / 'nat.pth'
    torch.save({'state_dict': {'backbone.levels.0.weight': torch.zeros(1)}}, path)
    m = DaViT(**TINY, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(ValueError, match=r'fit this DaViT \(davit_tiny\): 176 missing.*1 unexpected \(first: levels'):
        m.init_weights()
    m = DaViT(**TINY, init_cfg=dict(type='Pretrained', checkpoint='timm/davit_small.msft_in1k'))
    with pytest.raises(ValueError, match='davit_tiny'):
        m.init_weights()
