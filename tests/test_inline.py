"""InLine: the mixer against a quadratic re-statement of the paper's formula, the released layouts (parameter counts,
FLOPs, checkpoint keys) and outputs of the release's own model code (fixtures in tests/fixtures/)."""
import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import hiervit  # noqa: F401
from hiervit.backbones import inline_deit
from hiervit.backbones.inline import (
    InLineAttention, InLineCSWin, InLinePVT, InLineSwin, checkpoint_filter_fn, stage_attn_types,
)
from hiervit.backbones.inline_deit import InLineDeiT, InLineTokenAttention

FIXTURES = Path(__file__).parent / 'fixtures'

# Parameter counts of the release's model code (LeapLabTHU/InLine models/inline_swin.py, inline_cswin.py,
# inline_pvt.py built with its cfgs/*.yaml, counted with sum(p.numel())); FLOPs: the release's README table (G, one
# multiply-add = one FLOP).
# Where the README gives none (384 px) the value is ours, recorded.
OFFICIAL = {
    'inline_swin_tiny': (29_223_544, 4.5),
    'inline_swin_small': (49_793_296, 8.7),
    'inline_swin_base': (88_350_120, 15.4),
    'inline_swin_base_384': (88_465_320, 46.16),
    'inline_cswin_tiny': (20_604_520, 4.3),
    'inline_cswin_small': (33_032_872, 6.8),
    'inline_cswin_base': (73_413_640, 14.9),
    'inline_cswin_base_384': (73_413_640, 46.17),
    'inline_pvt_tiny': (12_032_232, 2.0),
    'inline_pvt_small': (21_556_136, 3.9),
    'inline_pvt_medium': (37_618_856, 6.9),
    'inline_pvt_large': (51_154_280, 10.2),
}
# InLine-DeiT (models/inline_deit.py; README: 6.5 / 16.7 / 23.8 M, 1.1 / 5.0 / 17.2 G) at the README's resolutions
OFFICIAL_DEIT = {
    'inline_deit_tiny': (6_477_736, 1.1, 224),
    'inline_deit_small': (16_734_760, 5.0, 288),
    'inline_deit_base': (23_797_096, 17.2, 448),
}


def test_registered_variants():
    assert set(timm.list_models(module='inline')) == set(OFFICIAL)
    assert set(timm.list_models(module='inline_deit')) == set(OFFICIAL_DEIT)


@pytest.mark.parametrize('name', sorted(OFFICIAL) + sorted(OFFICIAL_DEIT))
def test_params_equal_official_and_flops_match_readme(name):
    if name in OFFICIAL_DEIT:
        params, gflops, size = OFFICIAL_DEIT[name]
        assert timm.models.get_pretrained_cfg(name).input_size == (3, size, size)
    else:
        (params, gflops), size = OFFICIAL[name], 384 if name.endswith('384') else 224
    with torch.device('meta'):
        model = timm.create_model(name)
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, size, size))
    assert sum(p.numel() for p in model.parameters()) == params
    assert counter.get_total_flops() / 2e9 == pytest.approx(gflops, rel=0.03)


def test_stage_patterns():
    assert stage_attn_types('IIMS2', (2, 2, 4, 2)) == [['I'] * 2, ['I'] * 2, ['I', 'I', 'S', 'S'], ['S'] * 2]
    assert stage_attn_types('IIIS', (1, 1, 1, 1)) == [['I'], ['I'], ['I'], ['S']]
    with torch.device('meta'):
        model = timm.create_model('inline_swin_base')
    kinds = [type(b.attn).__name__ for b in model.levels[2].blocks]
    assert kinds[:2] == ['InLineAttention'] * 2 and set(kinds[2:]) == {'SwinWindowAttention'}
    # the Swin stages' window: max(7, window // 8); shifted on odd blocks
    assert [(b.attn.window_size, b.attn.shift) for b in model.levels[2].blocks[2:4]] == [(7, False), (7, True)]
    for bad in ('IIS', 'IIMS', 'IIXS', 'IISS2'):
        with pytest.raises(ValueError, match='attn_type'):
            stage_attn_types(bad, (2, 2, 2, 2))


def _restated_tile(mod: InLineAttention, t: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """The paper's injective attention in its quadratic form on one tile `[B, h, w, C]` of real tokens, with the
    residual kernel applied by a conv with the batch in the groups (as the release does)."""
    B, h, w, C = t.shape
    heads, n = mod.num_heads, h * w
    d = C // heads
    q, k, v = mod.qkv(t.reshape(B, n, C)).reshape(B, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    s = d ** -0.5
    logits = q @ k.transpose(-1, -2)  # [B, heads, n, n]
    weights = s / n * logits + (1 - s / n * logits.sum(-1, keepdim=True)) / n
    out = (weights @ v).transpose(1, 2).reshape(B, n, C)
    kernel = mod.residual(pool.reshape(B, n, C).mean(1).unsqueeze(-1)).reshape(B * C, 1, 3, 3)
    vi = v.transpose(1, 2).reshape(B, h, w, C).permute(0, 3, 1, 2).reshape(1, B * C, h, w)
    res = F.conv2d(vi, kernel, padding=1, groups=B * C).reshape(B, C, n).transpose(1, 2)
    out = out + res
    if mod.get_v is not None:
        out = out + mod.get_v[0](vi.reshape(B, C, h, w)).flatten(2).transpose(1, 2)
    return out.reshape(B, h, w, C)


def _restated(mod: InLineAttention, x: torch.Tensor, window, shift, pool=None) -> torch.Tensor:
    """Tiles of `window` (the last ones shorter where the map does not divide), rolled by -shift first."""
    pool = x if pool is None else pool
    if shift != (0, 0):
        x, pool = (torch.roll(t, (-shift[0], -shift[1]), (1, 2)) for t in (x, pool))
    H, W = x.shape[1:3]
    rows = []
    for r in range(0, H, window[0]):
        rows.append(torch.cat([
            _restated_tile(mod, x[:, r:r + window[0], c:c + window[1]], pool[:, r:r + window[0], c:c + window[1]])
            for c in range(0, W, window[1])], dim=2))
    out = torch.cat(rows, dim=1)
    if shift != (0, 0):
        out = torch.roll(out, shift, (1, 2))
    return mod.proj(out)


# (H, W, window_size, shift flag) -> tiles and shift of the official rule
MIXER_CASES = [
    (7, 7, None, False, (7, 7), (0, 0)),      # the whole map
    (5, 9, None, False, (5, 9), (0, 0)),      # non-square
    (8, 12, 4, False, (4, 4), (0, 0)),        # windows
    (8, 12, 4, True, (4, 4), (2, 2)),         # shifted windows (no region mask, as released)
    (6, 8, 8, True, (6, 8), (0, 0)),          # axes no longer than the window: one window, no shift
    (10, 7, 4, False, (4, 4), (0, 0)),        # padded windows: padding left out of every mean and count
]


@pytest.mark.parametrize('H, W, window, shift, tiles, offsets', MIXER_CASES)
@pytest.mark.parametrize('lepe', [False, True])
def test_mixer_matches_restatement(H, W, window, shift, tiles, offsets, lepe):
    torch.manual_seed(H * 100 + W)
    mod = InLineAttention(16, 2, window_size=window, shift=shift, lepe=lepe, pool_block_input=lepe).double()
    for p in mod.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, H, W, 16, dtype=torch.float64, requires_grad=True)
    pool = torch.randn(2, H, W, 16, dtype=torch.float64) if lepe else None
    got = mod(x, pool)
    want = _restated(mod, x, tiles, offsets, pool)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    g = torch.randn_like(got)
    grads = torch.autograd.grad(got, [x] + list(mod.parameters()), g)
    grads_want = torch.autograd.grad(want, [x] + list(mod.parameters()), g)
    for a, b in zip(grads, grads_want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


def test_split_qkv_projections_equal_the_fused_one():
    """`split_qkv=True` (PVT's `q` and `kv` keys) computes what one `qkv` projection with the stacked weights does."""
    torch.manual_seed(0)
    fused = InLineAttention(16, 2)
    split = InLineAttention(16, 2, split_qkv=True)
    sd = fused.state_dict()
    w, b = sd.pop('qkv.weight'), sd.pop('qkv.bias')
    split.load_state_dict(dict(sd, **{'q.weight': w[:16], 'q.bias': b[:16], 'kv.weight': w[16:], 'kv.bias': b[16:]}))
    x = torch.randn(2, 5, 7, 16)
    torch.testing.assert_close(split(x), fused(x))


@pytest.mark.parametrize('name', ['inline_swin_tiny', 'inline_cswin_tiny', 'inline_pvt_tiny', 'inline_deit_tiny'])
def test_fixture_is_the_official_layout(name):
    keys = json.loads((FIXTURES / f'{name}_keys.json').read_text())
    params = {k: s for k, s in keys.items() if not k.endswith(('relative_position_index', 'attn_mask'))}
    assert sum(torch.Size(s).numel() for s in params.values()) == {**OFFICIAL, **OFFICIAL_DEIT}[name][0]
    filter_fn = inline_deit.checkpoint_filter_fn if name in OFFICIAL_DEIT else checkpoint_filter_fn
    with torch.device('meta'):  # shapes only
        sd = {k: torch.empty(s) for k, s in keys.items()}
        model = timm.create_model(name)
    model.load_state_dict(filter_fn({'model': sd}, model), assign=True)
    # create_model(checkpoint_path=...) skips the filter: the load hook converts the official layout
    model.load_state_dict(sd, assign=True)
    with pytest.raises(ValueError, match='missing'):
        filter_fn({k: v for k, v in sd.items() if 'proj' not in k}, model)


def _seeded_official(keys, seed=0):
    """The fixture generator's weights: drawn in the release's key order (norm weights around 1), buffers skipped."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in keys:
        if k.endswith(('relative_position_index', 'attn_mask')):
            continue
        if k.endswith('weight') and len(shape) == 1:
            sd[k] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            sd[k] = 0.2 * torch.randn(shape, generator=g)
    return sd


OUTPUT_CASES = {
    'swin': (InLineSwin, dict(embed_dim=8, depths=(2, 2, 4, 2), num_heads=(1, 2, 2, 4), window_size=56,
                              attn_type='IIMS2'), 224),
    'swin_w28': (InLineSwin, dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=28,
                                  attn_type='IISS'), 224),
    'cswin': (InLineCSWin, dict(embed_dim=16, depths=(2, 2, 2, 1), num_heads=(2, 2, 4, 4), split_size=(1, 2, 2, 2),
                                attn_type='IISS'), 64),
    'pvt': (InLinePVT, dict(img_size=64, embed_dims=(16, 32, 40, 64), depths=(1, 1, 2, 1), num_heads=(2, 4, 4, 8),
                            mlp_ratios=(2., 2., 2., 2.)), 64),
    'deit': (InLineDeiT, dict(img_size=64, embed_dim=16, depth=2, num_heads=2), 64),
}


@pytest.mark.parametrize('case', sorted(OUTPUT_CASES))
def test_converted_checkpoint_matches_official_outputs(case):
    """Logits of the release's own model code (seeded weights, run once outside the repository) are reproduced
    after conversion; `swin_w28` has 28 px InLine windows on a 56 px map (windowed and shifted InLine blocks)."""
    ref = json.loads((FIXTURES / 'inline_small_official_outputs.json').read_text())[case]
    cls, args, size = OUTPUT_CASES[case]
    model = cls(num_classes=10, drop_path_rate=0., **args).eval()
    filter_fn = inline_deit.checkpoint_filter_fn if cls is InLineDeiT else checkpoint_filter_fn
    model.load_state_dict(filter_fn(_seeded_official(ref['keys']), model))
    x = torch.randn(len(ref['logits']), 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, torch.tensor(ref['logits']), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('size', [(37, 53), (100, 70)])
def test_any_input_size(size):
    model = InLineSwin(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=8, num_classes=3).eval()
    out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 3) and torch.isfinite(out).all()
    model = InLineCSWin(embed_dim=8, depths=(1, 1, 2, 1), num_heads=(2, 2, 2, 2), split_size=(1, 2, 2, 2),
                        num_classes=3).eval()
    out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 3) and torch.isfinite(out).all()
    model = InLinePVT(img_size=64, embed_dims=(8, 8, 16, 16), depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2),
                      num_classes=3).eval()
    out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize('grid', [(3, 5), (4, 4)])
def test_token_mixer_matches_restatement(grid):
    """InLine over ViT tokens against the quadratic form over all tokens (class token included), with the residual
    conv on the patch grid done as the release does (batch in the groups), on a non-square grid too."""
    torch.manual_seed(grid[0] * 10 + grid[1])
    H, W = grid
    mod = InLineTokenAttention(16, 2).double()
    for p in mod.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 1 + H * W, 16, dtype=torch.float64, requires_grad=True)
    got = mod(x, [H, W])
    B, T, C = x.shape
    q, k, v = mod.qkv(x).reshape(B, T, 3, 2, 8).permute(2, 0, 3, 1, 4)
    s = 8 ** -0.5
    logits = q @ k.transpose(-1, -2)
    weights = s / T * logits + (1 - s / T * logits.sum(-1, keepdim=True)) / T
    out = (weights @ v).transpose(1, 2).reshape(B, T, C)
    kernel = mod.residual(x.mean(1).unsqueeze(-1)).reshape(B * C, 1, 3, 3)
    vi = v[:, :, 1:].transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2).reshape(1, B * C, H, W)
    res = F.conv2d(vi, kernel, padding=1, groups=B * C).reshape(B, C, H * W).transpose(1, 2)
    want = mod.proj(torch.cat([out[:, :1], out[:, 1:] + res], 1))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    g = torch.randn_like(got)
    grads = torch.autograd.grad(got, [x] + list(mod.parameters()), g)
    grads_want = torch.autograd.grad(want, [x] + list(mod.parameters()), g)
    for a, b in zip(grads, grads_want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


def test_deit_position_embedding_resamples():
    """Exact at the build size; another build size's checkpoint is resampled by the filter; non-square inputs run."""
    small = InLineDeiT(img_size=64, embed_dim=16, depth=1, num_heads=2, num_classes=3).eval()
    big = InLineDeiT(img_size=96, embed_dim=16, depth=1, num_heads=2, num_classes=3).eval()
    sd = inline_deit.checkpoint_filter_fn(small.state_dict(), big)
    assert sd['pos_embed'].shape == big.pos_embed.shape == (1, 1 + 36, 16)
    big.load_state_dict(sd)
    with pytest.raises(ValueError, match='mis-shaped'):
        inline_deit.checkpoint_filter_fn(InLineDeiT(img_size=64, embed_dim=32, depth=1, num_heads=2,
                                                    num_classes=3).state_dict(), small)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        tokens, grid = small.forward_tokens(x)  # the build size: the embedding is added as it is
        assert grid == [4, 4]
        want = torch.cat([small.cls_token, small.patch_embed(x).reshape(1, 16, 16)], 1) + small.pos_embed
        torch.testing.assert_close(tokens, want)
        out = small(torch.randn(1, 3, 37, 90))  # 3 x 6 grid after padding to whole patches
    assert out.shape == (1, 3) and torch.isfinite(out).all()


def test_swin_tables_resize_for_another_window():
    model = InLineSwin(embed_dim=8, depths=(1, 1, 1, 2), num_heads=(1, 2, 2, 4), window_size=96, attn_type='IIIS')
    sd = {k: v for k, v in InLineSwin(embed_dim=8, depths=(1, 1, 1, 2), num_heads=(1, 2, 2, 4), window_size=56,
                                      attn_type='IIIS').state_dict().items()}
    assert sd['levels.3.blocks.0.attn.relative_position_bias_table'].shape[0] == 13 ** 2
    out = checkpoint_filter_fn(sd, model)
    assert out['levels.3.blocks.0.attn.relative_position_bias_table'].shape[0] == 23 ** 2
    model.load_state_dict(out)


def test_errors():
    with pytest.raises(ValueError, match='kernel_func'):
        InLineAttention(16, 2, kernel_func='softmax')
    with pytest.raises(ValueError, match='num_heads'):
        InLineAttention(16, 3)
    with pytest.raises(ValueError, match='attn_type'):
        InLineSwin(attn_type='II')


@pytest.mark.parametrize('layout', ['swin', 'cswin'])
def test_layout_mixers_trace_and_script(layout):
    """The mixers of each layout under FX and TorchScript at a tiny width (the contract and export batteries run one
    model per family): Swin with windowed, shifted and padded InLine blocks and Swin windows, CSwin with whole-map
    InLine blocks fed the block input, LePE and stripes."""
    torch.manual_seed(0)
    if layout == 'swin':
        model = InLineSwin(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=8, num_classes=3)
    else:
        model = InLineCSWin(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2), split_size=(1, 2, 2, 2),
                            num_classes=3)
    model.eval()
    x = torch.randn(2, 3, 48, 80)  # Swin level 1 is 12 x 20: 8 px windows, padded, shifted on odd blocks
    with torch.no_grad():
        want = model(x)
        traced = torch.fx.symbolic_trace(model)
        ops = [n for n in traced.graph.nodes if n.op == 'call_function' and 'hiervit.' in str(n.target)]
        # one attention op call per block (two for a CSWin stripe block), none hidden inside a leaf
        assert len(ops) == (8 if layout == 'swin' else 5)
        torch.testing.assert_close(traced(x), want)
        torch.testing.assert_close(torch.jit.script(model)(x), want)
