"""S2AFormer specifics: published size/cost, strip self-attention against an explicit reference, FLOP accounting,
odd input sizes and bad input. The generic timm contract is in test_contract.py."""
import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import hiervit  # noqa: F401
from hiervit.backbones.s2aformer import S2AFormer, StripSelfAttention, checkpoint_filter_fn, strip_attention_flops

# Published params (M) and MACs (G) at 224x224 (heedless-backbones family_data/S2AFormer.yml, from the paper).
PUBLISHED = {
    's2aformer_mini': (5.02, 0.43),
    's2aformer_t': (5.80, 0.655),
    's2aformer_xs': (6.54, 0.786),
    's2aformer_s': (10.69, 1.38),
    's2aformer_m': (24.87, 4.12),
}


def test_every_variant_is_checked():
    assert sorted(PUBLISHED) == timm.list_models('s2aformer_*')


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_published_params_and_macs(name):
    with torch.device('meta'):
        model = timm.create_model(name)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 224, 224))
    macs = counter.get_total_flops() / 2e9
    want_params, want_macs = PUBLISHED[name]
    assert abs(params / want_params - 1) < 0.03, (params, want_params)
    assert abs(macs / want_macs - 1) < 0.03, (macs, want_macs)


def _reference_ssa(m: StripSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The strip attention written out: explicit reduction, projections, softmax(q k^T * scale) v, projection."""
    B, C, H, W = x.shape
    h, ds, r = m.num_heads, m.strip_dim, m.sr_ratio
    conv1x1 = lambda conv, t: torch.einsum('oc,bchw->bohw', conv.weight[:, :, 0, 0], t) + conv.bias[:, None, None]
    xr = x
    if r > 1:
        Hp, Wp = -(-H // r) * r, -(-W // r) * r
        padded = x.new_zeros(B, C, Hp, Wp)
        padded[:, :, :H, :W] = x
        # depthwise kernel = stride = r: each output is a weighted sum over its own r x r block
        blocks = padded.reshape(B, C, Hp // r, r, Wp // r, r)
        xr = torch.einsum('bcirjs,crs->bcij', blocks, m.sr.weight[:, 0]) + m.sr.bias[:, None, None]
        mu = xr.mean(1, keepdim=True)
        var = xr.var(1, keepdim=True, unbiased=False)
        xr = (xr - mu) / torch.sqrt(var + m.sr_norm.eps) * m.sr_norm.weight[:, None, None] + m.sr_norm.bias[:, None,
                                                                                                            None]
    q = conv1x1(m.q, x).reshape(B, h, ds, -1)  # [B, h, d_s, N]
    k = conv1x1(m.k, xr).reshape(B, h, ds, -1)  # [B, h, d_s, N']
    v = conv1x1(m.v, xr).reshape(B, h, C // h, -1)  # [B, h, C/h, N']
    attn = torch.softmax(torch.einsum('bhdn,bhdm->bhnm', q, k) * ds ** -0.5, dim=-1)
    out = torch.einsum('bhnm,bhcm->bhcn', attn, v).reshape(B, C, H, W)
    return conv1x1(m.proj, out)


@pytest.mark.parametrize('seed', range(6))
def test_strip_attention_matches_reference(seed):
    """Outputs and gradients (input and every weight) over random odd, non-square, border-heavy shapes."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]
    heads, strip_dim, sr = pick([1, 2, 3]), pick([1, 2, 8]), pick([1, 2, 3, 4])
    dim = heads * pick([4, 8])
    H, W = pick([1, 5, 7, 9]), pick([3, 6, 11])
    torch.manual_seed(seed)
    m = StripSelfAttention(dim, heads, strip_dim=strip_dim, sr_ratio=sr).double()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(2, dim, H, W, dtype=torch.float64, requires_grad=True)
    out = m(x)
    ref = _reference_ssa(m, x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *m.parameters()], dout)
    ref_grads = torch.autograd.grad(ref, [x, *m.parameters()], dout)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_keys_cover_the_border():
    """With the zero padding, a change in the last row/column (not a multiple of sr) reaches every query."""
    torch.manual_seed(0)
    m = StripSelfAttention(16, 2, sr_ratio=4).eval()
    x = torch.randn(1, 16, 9, 10)
    y = x.clone()
    y[:, :, -1, -1] += 5.
    with torch.no_grad():
        diff = (m(x) - m(y))[:, :, 0, 0].abs().max()
    assert diff > 1e-4


@pytest.mark.parametrize('strip_dim', [1, 4, 16])
def test_flop_counter_sees_the_attention(strip_dim):
    """FlopCounterMode counts `strip_attention_flops` for the attention core on CPU and meta, whichever SDPA kernel
    torch picks (strip_dim == head_dim takes the CPU flash kernel, which torch itself does not count)."""
    for device in ('cpu', 'meta'):
        with torch.device(device):
            m = StripSelfAttention(64, 4, strip_dim=strip_dim, sr_ratio=2)
            x = torch.randn(2, 64, 14, 12)
            with FlopCounterMode(display=False) as counter:
                m(x)
        counts = counter.get_flop_counts()['Global']
        attn = sum(v for k, v in counts.items() if 'convolution' not in str(k))
        assert attn == strip_attention_flops(2, 4, 14 * 12, 7 * 6, strip_dim, 16), (device, counts)


def test_odd_and_tiny_inputs():
    model = timm.create_model('s2aformer_mini').eval()
    with torch.no_grad():
        for size in ((33, 47), (17, 17), (64, 100)):
            feats = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
            for f, r in zip(feats, (4, 8, 16, 32)):
                assert f.shape[-2:] == tuple(-(-s // r) for s in size)
                assert torch.isfinite(f).all()


def test_out_norms_apply_to_each_output():
    model = timm.create_model('s2aformer_mini', out_norms=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        raw = model.forward_intermediates(x, intermediates_only=True)
        normed = model.forward_intermediates(x, norm=True, intermediates_only=True)
    for i, (a, b) in enumerate(zip(raw, normed)):
        torch.testing.assert_close(model.out_norms[i](a), b)



def test_features_only_defaults_to_output_norms():
    """A features_only model is the dense backbone (output norms on, as `hiervit.mm.S2AFormer` builds it): its maps are
    the intermediates through out_norms, it keeps no final norm or head, and takes a dense-task checkpoint strictly."""
    model = timm.create_model('s2aformer_mini', out_norms=True).eval()
    features = timm.create_model('s2aformer_mini', features_only=True).eval()
    assert len(features.model.out_norms) == 4
    dense = {f'backbone.{k}': v for k, v in model.state_dict().items() if not k.startswith(('head.', 'norm.'))}
    features.model.load_state_dict(checkpoint_filter_fn({'state_dict': dense}, features.model))
    assert not any(k.startswith(('head.', 'norm.')) for k in features.model.state_dict())
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        normed = model.forward_intermediates(x, norm=True, intermediates_only=True)
        for f, n in zip(features(x), normed):
            torch.testing.assert_close(f, n)
    with pytest.raises(ValueError, match=r'unexpected \(first: out_norms\.0\..*need out_norms=True'):
        checkpoint_filter_fn({'state_dict': dense}, timm.create_model('s2aformer_mini'))

def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match='head_dim'):
        S2AFormer(embed_dims=(32, 64, 160, 250))
    with pytest.raises(ValueError, match='sr_ratios'):
        S2AFormer(sr_ratios=(8, 4, 2))
    with pytest.raises(ValueError, match='stem_dims'):
        S2AFormer(stem_dims=(16, 32))
    with pytest.raises(ValueError, match='num_heads'):
        StripSelfAttention(30, 4)
    with pytest.raises(ValueError, match='strip_dim'):
        StripSelfAttention(32, 4, strip_dim=0)
    model = timm.create_model('s2aformer_mini')
    with pytest.raises(ValueError, match='in_chans=1'):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match='NCHW'):
        model(torch.randn(3, 32, 32))


def test_checkpoint_filter_roundtrip_and_mismatch():
    model = timm.create_model('s2aformer_mini', out_norms=True)
    plain = timm.create_model('s2aformer_mini')
    # a dense-task checkpoint: backbone prefix, output norms, no classifier or final norm
    dense = {f'backbone.{k}': v for k, v in model.state_dict().items() if not k.startswith(('head.', 'norm.'))}
    out = checkpoint_filter_fn({'state_dict': dense}, model)
    model.load_state_dict(out)
    # a classification checkpoint loads into the dense model (output norms keep their initial values)
    model.load_state_dict(checkpoint_filter_fn({'model': plain.state_dict()}, model))
    with pytest.raises(ValueError, match='mis-shaped'):
        checkpoint_filter_fn(timm.create_model('s2aformer_t').state_dict(), plain)
