"""Op benchmark cases: each backend of an op, plus installed peers, on one problem shape.

A case is built inside a worker process from a plain-dict spec, so the spec must be JSON-serialisable.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from hiervit.kernels import BackendError


@dataclass
class Case:
    """One row of an op table: a forward closure over inputs, and what it costs."""
    fwd: Callable[[], torch.Tensor]
    inputs: List[torch.Tensor]
    flops: float  # useful forward FLOPs (2 per multiply-add)
    backward: bool = True
    note: str = ''


def _dtype(name: str) -> torch.dtype:
    return {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}[name]


# ---------------------------------------------------------------------------------------------------------------------
# neighborhood


def _na_window_start(length: int, kernel: int, dilation: int, device: torch.device) -> torch.Tensor:
    """NATTEN's shifted window: first key index of each query along one axis (dilation = independent sub-grids)."""
    i = torch.arange(length, device=device)
    group, idx = i % dilation, i // dilation
    group_len = (length - group + dilation - 1) // dilation
    start = (idx - kernel // 2).clamp(min=0)
    start = torch.minimum(start, group_len - kernel)
    return group + dilation * start


def gather_na2d(q, k, v, rpb, kernel: Tuple[int, int], dilation: Tuple[int, int], scale: float) -> torch.Tensor:
    """The plain PyTorch baseline: gather every query's k*k neighbours, softmax, weighted sum. [B, H, W, heads, d]."""
    B, H, W, nh, d = q.shape
    (kh, kw), (dh, dw) = kernel, dilation
    sy = _na_window_start(H, kh, dh, q.device)
    sx = _na_window_start(W, kw, dw, q.device)
    ky = sy[:, None] + dh * torch.arange(kh, device=q.device)  # [H, kh]
    kx = sx[:, None] + dw * torch.arange(kw, device=q.device)  # [W, kw]
    kg = k[:, ky[:, None, :, None], kx[None, :, None, :]]  # [B, H, W, kh, kw, heads, d]
    vg = v[:, ky[:, None, :, None], kx[None, :, None, :]]
    attn = torch.einsum('bhwnd,bhwijnd->bhwnij', q * scale, kg)  # [B, H, W, heads, kh, kw]
    if rpb is not None:
        ry = (ky - torch.arange(H, device=q.device)[:, None]) // dh + kh - 1
        rx = (kx - torch.arange(W, device=q.device)[:, None]) // dw + kw - 1
        bias = rpb[:, ry[:, None, :, None], rx[None, :, None, :]]  # [heads, H, W, kh, kw]
        attn = attn + bias.permute(1, 2, 0, 3, 4)
    attn = attn.flatten(-2).softmax(-1).view_as(attn)
    return torch.einsum('bhwnij,bhwijnd->bhwnd', attn, vg)


def _flex_na2d(q, k, v, rpb, kernel, dilation, scale, compiled: bool):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    B, H, W, nh, d = q.shape
    (kh, kw), (dh, dw) = kernel, dilation
    sy = _na_window_start(H, kh, dh, q.device)
    sx = _na_window_start(W, kw, dw, q.device)

    def inside(q_idx, kv_idx):
        qy, qx, ky, kx = q_idx // W, q_idx % W, kv_idx // W, kv_idx % W
        oy, ox = ky - sy[qy], kx - sx[qx]
        return ((oy >= 0) & (oy < kh * dh) & (oy % dh == 0) & (ox >= 0) & (ox < kw * dw) & (ox % dw == 0))

    def mask_mod(b, h, q_idx, kv_idx):
        return inside(q_idx, kv_idx)

    def score_mod(score, b, h, q_idx, kv_idx):
        qy, qx, ky, kx = q_idx // W, q_idx % W, kv_idx // W, kv_idx % W
        # Scores outside the window are masked anyway; clamp so their (unused) bias lookup stays in bounds.
        ry = ((ky - qy) // dh + kh - 1).clamp(0, 2 * kh - 2)
        rx = ((kx - qx) // dw + kw - 1).clamp(0, 2 * kw - 2)
        return score + rpb[h, ry, rx]

    attn_fn = torch.compile(flex_attention, dynamic=False) if compiled else flex_attention
    block_mask = create_block_mask(mask_mod, None, None, H * W, H * W, device=q.device)
    to_seq = lambda t: t.flatten(1, 2).transpose(1, 2)  # [B, H, W, heads, d] -> [B, heads, N, d]

    def fwd():
        out = attn_fn(to_seq(q), to_seq(k), to_seq(v), score_mod=score_mod if rpb is not None else None,
                      block_mask=block_mask, scale=scale)
        return out.transpose(1, 2).reshape(B, H, W, nh, -1)
    return fwd


def neighborhood_cases(spec: Dict) -> Dict[str, Callable[[], Case]]:
    """Builders for every neighborhood backend and installed peer, keyed by row label."""
    from hiervit.kernels.neighborhood import na_dispatcher, neighborhood_attention

    device, dtype = torch.device(spec['device']), _dtype(spec['dtype'])
    B, heads, (H, W), kernel, dilation, d = (spec['batch'], spec['heads'], spec['size'], spec['kernel'],
                                             spec['dilation'], spec['head_dim'])
    kernel, dilation = (kernel, kernel), (dilation, dilation)
    scale = d ** -0.5
    flops = 4.0 * B * heads * H * W * kernel[0] * kernel[1] * d

    def inputs(rpb: bool):
        g = torch.Generator().manual_seed(0)
        make = lambda *s: torch.randn(*s, generator=g).to(device, dtype).requires_grad_()
        qkv = [make(B, H, W, heads, d) for _ in range(3)]
        bias = make(heads, 2 * kernel[0] - 1, 2 * kernel[1] - 1) if rpb else None
        return qkv, bias

    def backend_case(name: str) -> Case:
        (q, k, v), rpb = inputs(spec['rpb'])
        fwd = lambda: neighborhood_attention(q, k, v, kernel, dilation, rpb=rpb, scale=scale, backend=name)
        return Case(fwd, [t for t in (q, k, v, rpb) if t is not None], flops)

    def gather_case(compiled: bool) -> Case:
        (q, k, v), rpb = inputs(spec['rpb'])
        fn = torch.compile(gather_na2d, dynamic=False) if compiled else gather_na2d
        return Case(lambda: fn(q, k, v, rpb, kernel, dilation, scale), [t for t in (q, k, v, rpb) if t is not None],
                    flops, note='torch.compile' if compiled else 'eager')

    def forward_only(tensors):
        # FlexAttention refuses CPU inputs that require grad, even under no_grad.
        return [t.detach() if t is not None else None for t in tensors]

    def flex_case(compiled: bool) -> Case:
        (q, k, v), rpb = inputs(spec['rpb'])
        backward = device.type == 'cuda'
        if not backward:
            q, k, v, rpb = forward_only((q, k, v, rpb))
        note = ('compiled' if compiled else 'eager') + ('' if backward else '; no backward on CPU in this torch')
        fwd = _flex_na2d(q, k, v, rpb, kernel, dilation, scale, compiled)
        return Case(fwd, [t for t in (q, k, v, rpb) if t is not None], flops, backward=backward, note=note)

    def natten_case() -> Case:
        import natten
        (q, k, v), _ = inputs(False)
        backend = None if device.type == 'cuda' else 'flex-fna'
        if device.type != 'cuda':
            q, k, v = forward_only((q, k, v))
        fwd = lambda: natten.na2d(q, k, v, kernel_size=kernel, dilation=dilation, scale=scale, backend=backend)
        note = f'natten {natten.__version__}, no rpb' + ('' if device.type == 'cuda' else ', flex-fna eager')
        return Case(fwd, [q, k, v], flops, backward=device.type == 'cuda', note=note)

    cases: Dict[str, Callable[[], Case]] = {f'hiervit:{n}': (lambda n=n: backend_case(n)) for n in na_dispatcher.names
                                            if n not in ('natten', 'flex')}
    if spec.get('peers', True):
        cases['peer:gather'] = lambda: gather_case(False)
        cases['peer:gather+compile'] = lambda: gather_case(True)
        cases['peer:flex'] = lambda: flex_case(False)
        cases['peer:flex+compile'] = lambda: flex_case(True)
        if _importable('natten'):
            cases['peer:natten'] = natten_case
    return cases


# ---------------------------------------------------------------------------------------------------------------------
# routed (BiFormer bi-level routing: query region i attends to the top-k routed key regions)

# BiFormer-T at 224: (map side, n_win, channels, heads, topk) for the three routed stages.
BIFORMER_T_STAGES = {1: (56, 7, 64, 2, 1), 2: (28, 7, 128, 4, 4), 3: (14, 7, 256, 8, 16)}


def routed_cases(spec: Dict) -> Dict[str, Callable[[], Case]]:
    from hiervit.kernels.routed import routed_attention, routed_dispatcher

    device, dtype = torch.device(spec['device']), _dtype(spec['dtype'])
    side, n_win, dim, heads, topk = BIFORMER_T_STAGES[spec['stage']]
    B, d = spec['batch'], dim // heads
    regions, tokens = n_win * n_win, (side // n_win) ** 2
    flops = 4.0 * B * heads * regions * tokens * topk * tokens * d

    def backend_case(name: str) -> Case:
        g = torch.Generator().manual_seed(0)
        make = lambda: torch.randn(B, heads, regions, tokens, d, generator=g).to(device, dtype).requires_grad_()
        q, k, v = make(), make(), make()
        # Routing as BiFormer does it: top-k of region-mean affinities (distinct regions per query region).
        logits = q.detach().mean(3).mean(1) @ k.detach().mean(3).mean(1).transpose(-1, -2)
        idx = logits.topk(topk, dim=-1).indices
        return Case(lambda: routed_attention(q, k, v, idx, scale=dim ** -0.5, backend=name), [q, k, v], flops,
                    note=f'stage {spec["stage"]}: {regions} regions x {tokens} tok, topk {topk}, {heads}x{d}')

    return {f'hiervit:{n}': (lambda n=n: backend_case(n)) for n in routed_dispatcher.names}


# ---------------------------------------------------------------------------------------------------------------------
# window (Swin windows, CSWin stripes)

# (H, W, heads, head_dim, window, shift): Swin-T (224 px) stages 1 and 3, shifted blocks with the bias table.
SWIN_T_STAGES = {1: (56, 56, 3, 32, 7, 3), 3: (14, 14, 12, 32, 7, 3)}
# (H, W, heads, head_dim, stripe width): CSWin-T (224 px) stages 1-3; half the heads in each stripe direction.
CSWIN_T_STAGES = {1: (56, 56, 2, 32, 1), 2: (28, 28, 4, 32, 2), 3: (14, 14, 8, 32, 7)}


def swin_attn_mask(H: int, W: int, window: int, shift: int, heads: int) -> Optional[torch.Tensor]:
    """timm's shifted-window mask `[windows, N, N]` (0 / -100), taken from timm's own SwinTransformerBlock."""
    from timm.models.swin_transformer import SwinTransformerBlock
    block = SwinTransformerBlock(heads * 4, (H, W), num_heads=heads, window_size=window, shift_size=shift,
                                 always_partition=True)
    return block.attn_mask


def swin_window_peer(qkv: torch.Tensor, table: Optional[torch.Tensor], window: int, shift: int, scale: float,
                     attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """timm's Swin attention path on `qkv [B, H, W, 3, heads, d]` (H, W multiples of the window): cyclic shift,
    `window_partition`, explicit attention with the bias table and mask added (timm's non-fused default),
    `window_reverse`, reverse shift. Returns `[B, H, W, heads, d]`."""
    from timm.models.swin_transformer import get_relative_position_index, window_partition, window_reverse
    B, H, W, _, heads, d = qkv.shape
    ws, N = (window, window), window * window
    x = qkv.reshape(B, H, W, 3 * heads * d)
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    x = window_partition(x, ws).view(-1, N, 3, heads, d).permute(2, 0, 3, 1, 4)  # [3, B * windows, heads, N, d]
    q, k, v = x.unbind(0)
    attn = (q * scale) @ k.transpose(-2, -1)
    if table is not None:
        index = get_relative_position_index(window, window).to(qkv.device)
        attn = attn + table[index.view(-1)].view(N, N, -1).permute(2, 0, 1).unsqueeze(0)
    if attn_mask is not None:
        nw = attn_mask.shape[0]
        attn = (attn.view(-1, nw, heads, N, N) + attn_mask.unsqueeze(1).unsqueeze(0)).view(-1, heads, N, N)
    x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, window, window, heads * d)
    x = window_reverse(x, ws, H, W)
    if shift:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    return x.view(B, H, W, heads, d)


def _img2windows(img: torch.Tensor, h_sp: int, w_sp: int) -> torch.Tensor:
    B, C, H, W = img.shape
    img = img.view(B, C, H // h_sp, h_sp, W // w_sp, w_sp)
    return img.permute(0, 2, 4, 3, 5, 1).contiguous().reshape(-1, h_sp * w_sp, C)


def _windows2img(windows: torch.Tensor, h_sp: int, w_sp: int, H: int, W: int) -> torch.Tensor:
    B = windows.shape[0] // (H * W // (h_sp * w_sp))
    img = windows.view(B, H // h_sp, W // w_sp, h_sp, w_sp, -1)
    return img.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


def cswin_stripe_peer(qkv: torch.Tensor, stripe: Optional[int], scale: float, center_pad: bool = False) -> torch.Tensor:
    """The official CSWin attention path (models/cswin.py `LePEAttention`, LePE left out) on `qkv [B, H, W, 3, heads,
    d]`: the first half of the heads in vertical stripes `(H, sw)`, the second half in horizontal ones `(sw, W)`
    (`stripe=None`: all heads, full attention), each through `img2windows` / `windows2img` on `[B, C, H, W]` maps.
    Without `center_pad` (the classification code) H and W must be stripe multiples; with it, the segmentation
    backbone's rule: qkv zero-padded (centred, unmasked) to the stripe multiple."""
    B, H, W, _, heads, d = qkv.shape
    branches = [(H, W, 0, heads)] if stripe is None else [(H, stripe, 0, heads // 2), (stripe, W, heads // 2, heads)]
    outs = []
    for h_sp, w_sp, h0, h1 in branches:
        t = qkv[:, :, :, :, h0:h1].permute(3, 0, 4, 5, 1, 2).reshape(3, B, (h1 - h0) * d, H, W)  # [3, B, C, H, W]
        ph, pw = -H % h_sp, -W % w_sp
        if (ph or pw) and not center_pad:
            raise ValueError(f'the classification CSWin needs stripe multiples, got {H}x{W} for stripe {stripe}')
        top, left = ph // 2, pw // 2
        t = torch.nn.functional.pad(t, (left, pw - left, top, ph - top))
        Hp, Wp = H + ph, W + pw
        q, k, v = (_img2windows(x, h_sp, w_sp).reshape(-1, h_sp * w_sp, h1 - h0, d).permute(0, 2, 1, 3)
                   for x in t.unbind(0))
        attn = ((q * scale) @ k.transpose(-2, -1)).softmax(-1)
        x = (attn @ v).transpose(1, 2).reshape(-1, h_sp * w_sp, (h1 - h0) * d)
        x = _windows2img(x, h_sp, w_sp, Hp, Wp)[:, top:top + H, left:left + W]
        outs.append(x.reshape(B, H, W, h1 - h0, d))
    return torch.cat(outs, dim=3)


def window_cases(spec: Dict) -> Dict[str, Callable[[], Case]]:
    """Swin-T (`swin1`, `swin3`) and CSWin-T (`cswin1`..`cswin3`) stage shapes: each backend against its peer."""
    from hiervit.kernels.window import window_attention, window_attention_flops, window_dispatcher

    device, dtype = torch.device(spec['device']), _dtype(spec['dtype'])
    B, shape = spec['batch'], spec['shape']
    family, stage = shape[:-1], int(shape[-1])
    g = torch.Generator().manual_seed(0)
    make = lambda *s: torch.randn(*s, generator=g).to(device, dtype).requires_grad_()
    if family == 'swin':
        H, W, heads, d, window, shift = SWIN_T_STAGES[stage]
        note = f'Swin-T stage {stage}: {H}x{W}, {heads}x{d}, window {window}, shift {shift}, rpb'
        flops = float(window_attention_flops((B, H, W, heads, d), (window, window)))
    else:
        H, W, heads, d, stripe = CSWIN_T_STAGES[stage]
        note = f'CSWin-T stage {stage}: {H}x{W}, {heads}x{d}, stripes {stripe}, half the heads each way'
        flops = float(window_attention_flops((B, H, W, heads // 2, d), (H, stripe))
                      + window_attention_flops((B, H, W, heads // 2, d), (stripe, W)))
    scale = d ** -0.5

    def inputs():
        qkv = make(B, H, W, 3, heads, d)
        table = make((2 * window - 1) ** 2, heads) if family == 'swin' else None
        return qkv, table

    def backend_case(name: str) -> Case:
        qkv, table = inputs()
        if family == 'swin':
            def fwd():
                q, k, v = qkv.unbind(3)
                return window_attention(q, k, v, window, shift, rpb=table, scale=scale, backend=name)
        else:
            half = heads // 2

            def fwd():
                q, k, v = qkv.unbind(3)
                vert = window_attention(q[..., :half, :], k[..., :half, :], v[..., :half, :], (None, stripe),
                                        scale=scale, backend=name)
                horiz = window_attention(q[..., half:, :], k[..., half:, :], v[..., half:, :], (stripe, None),
                                         scale=scale, backend=name)
                return torch.cat([vert, horiz], dim=3)
        return Case(fwd, [t for t in (qkv, table) if t is not None], flops, note=note)

    def peer_case() -> Case:
        qkv, table = inputs()
        if family == 'swin':
            mask = swin_attn_mask(H, W, window, shift, heads)
            mask = None if mask is None else mask.to(device, dtype)
            fwd = lambda: swin_window_peer(qkv, table, window, shift, scale, mask)
            label = "timm swin_transformer.py: roll, window_partition, attention, window_reverse"
        else:
            fwd = lambda: cswin_stripe_peer(qkv, stripe, scale)
            label = 'official CSWin: img2windows, attention, windows2img'
        return Case(fwd, [t for t in (qkv, table) if t is not None], flops, note=label)

    cases: Dict[str, Callable[[], Case]] = {f'hiervit:{n}': (lambda n=n: backend_case(n))
                                            for n in window_dispatcher.names}
    if spec.get('peers', True):
        cases['peer:' + ('timm-swin' if family == 'swin' else 'cswin-img2windows')] = peer_case
    return cases


# ---------------------------------------------------------------------------------------------------------------------
# linear (non-causal linear attention: L2ViT's global attention, FLatten's focused linear attention)

# L2ViT-T at 224: (map side, channels, heads) of the linear global attention blocks in each stage.
L2VIT_T_STAGES = {1: (56, 96, 3), 2: (28, 192, 6), 3: (14, 384, 12), 4: (7, 768, 24)}


def l2vit_official(q, k, v, temperature):
    """L2ViT's `LinearAttention.forward` chain (re-expressed): clamp(q . sum(k), 100), (k^T v) * t, q @ that / denom."""
    denom = torch.clamp(q @ k.transpose(-2, -1).sum(dim=-1, keepdim=True), 1e2)
    attn = (k.transpose(-2, -1) @ v) * temperature
    return (q @ attn) / denom


def flatten_official(q, k, v):
    """FLatten's `FocusedLinearAttention` chain after its 2024 fix (re-expressed): 1 / (q . mean(k) + 1e-6),
    (k^T N^-0.5) @ (v N^-0.5), q @ kv * z."""
    n = k.shape[-2]
    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    kv = (k.transpose(-2, -1) * (n ** -0.5)) @ (v * (n ** -0.5))
    return q @ kv * z


def _linear_inputs(B: int, heads: int, n: int, d: int, device, dtype, temperature: bool):
    g = torch.Generator().manual_seed(0)
    # phi(q), phi(k) >= 0 as the models feed them (ReLU of a projection), v signed
    q = torch.randn(B, heads, n, d, generator=g).relu_().to(device, dtype).requires_grad_()
    k = torch.randn(B, heads, n, d, generator=g).relu_().to(device, dtype).requires_grad_()
    v = torch.randn(B, heads, n, d, generator=g).to(device, dtype).requires_grad_()
    t = torch.full((heads, 1, 1), d ** -0.5, device=device, dtype=dtype, requires_grad=True) if temperature else None
    return q, k, v, t


def linear_cases(spec: Dict) -> Dict[str, Callable[[], Case]]:
    from hiervit.kernels.linear import linear_attention, linear_attention_flops, linear_dispatcher

    device, dtype = torch.device(spec['device']), _dtype(spec['dtype'])
    side, dim, heads = L2VIT_T_STAGES[spec['stage']]
    B, d, n, norm = spec['batch'], dim // heads, side * side, spec['normalizer']
    flops = float(linear_attention_flops((B, heads, n, d), (B, heads, n, d), norm))
    note = f'stage {spec["stage"]}: N={n}, {heads}x{d}'
    with_t = norm == 'clamp'

    def backend_case(name: str) -> Case:
        q, k, v, t = _linear_inputs(B, heads, n, d, device, dtype, with_t)
        fwd = lambda: linear_attention(q, k, v, norm, t, backend=name)
        return Case(fwd, [x for x in (q, k, v, t) if x is not None], flops, note=f'{note}, {norm}')

    def official_case() -> Case:
        q, k, v, t = _linear_inputs(B, heads, n, d, device, dtype, with_t)
        if with_t:
            return Case(lambda: l2vit_official(q, k, v, t), [q, k, v, t], flops, note=f'{note}, L2ViT chain')
        return Case(lambda: flatten_official(q, k, v), [q, k, v], flops, note=f'{note}, FLatten chain')

    def sdpa_case() -> Case:
        q, k, v, _ = _linear_inputs(B, heads, n, d, device, dtype, False)
        return Case(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), [q, k, v],
                    4.0 * B * heads * n * n * d, note=f'{note}, softmax attention (FLOPs: 4*B*heads*N^2*d)')

    cases: Dict[str, Callable[[], Case]] = {f'hiervit:{nm}': (lambda nm=nm: backend_case(nm))
                                            for nm in linear_dispatcher.names}
    if norm in ('clamp', 'mean'):
        cases['official:' + ('l2vit' if with_t else 'flatten')] = official_case
    if spec.get('peers', True):
        cases['peer:sdpa'] = sdpa_case
    return cases


def linear_sweep(device: str, dtype: str, batch: int, heads: int, head_dim: int, sides: List[int], repeats: int,
                 png: str) -> List[Dict]:
    """fwd+bwd time of linear attention (auto backend, `clamp`) and softmax SDPA over square maps of `sides`; writes a
    plot to `png` and returns the rows (with the backend auto chose; the first side where linear attention is faster
    is marked)."""
    from hiervit.kernels.linear import linear_attention, linear_dispatcher, linear_problem

    from ._timing import best_time
    if not _importable('matplotlib'):  # checked before the measurements, not after them
        raise ImportError('linear --sweep plots with matplotlib: pip install "hiervit[bench]"')
    dev, dt = torch.device(device), _dtype(dtype)
    rows = []
    for side in sides:
        n = side * side
        q, k, v, t = _linear_inputs(batch, heads, n, head_dim, dev, dt, True)
        grad = torch.randn_like(v)
        row = {'side': side, 'tokens': n,
               'backend': linear_dispatcher.select(linear_problem(q, k, v, t.reshape(-1), 'clamp'))}
        for label, fn, inputs in (
                ('linear_ms', lambda: linear_attention(q, k, v, 'clamp', t), [q, k, v, t]),
                ('sdpa_ms', lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), [q, k, v])):
            row[label] = 1e3 * best_time(lambda: torch.autograd.grad(fn(), inputs, grad), dev, repeats=repeats)
        row['speedup'] = row['sdpa_ms'] / row['linear_ms']
        rows.append(row)
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    tokens = [r['tokens'] for r in rows]
    used = '/'.join(sorted({r['backend'] for r in rows}))
    ax.loglog(tokens, [r['linear_ms'] for r in rows], 'o-', label=f'linear attention (hiervit {used}, clamp)')
    ax.loglog(tokens, [r['sdpa_ms'] for r in rows], 's-', label='softmax attention (SDPA)')
    cross = next((r['tokens'] for r in rows if r['speedup'] > 1), None)
    if cross is not None:
        ax.axvline(cross, color='gray', ls=':', label=f'linear faster from N={cross}')
    ax.set_xlabel('tokens N (square map)')
    ax.set_ylabel('fwd+bwd ms')
    ax.set_title(f'B={batch}, {heads} heads x {head_dim}, {dtype}, {device}, {torch.get_num_threads()} threads')
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    return rows


# Bytes per (query, neighbour, head, channel) that a row materialises: the gathers copy k and v per neighbour
# (the compiled gather's backward keeps about 2.5 such copies: 660 MiB at B=8, 56x56, k=7, d=32); dense attention
# (FlexAttention eager, NATTEN's CPU path) holds about three N x N score tensors per head; and building a FlexAttention
# block mask evaluates the mask on all N x N pairs in int64 (a 224x224 map needed more than 14 GiB).
_GATHER_BYTES_PER_SCORE_CHANNEL = 2 * 4 * 2.5
_DENSE_BYTES_PER_SCORE = 3 * 4
_MASK_BYTES_PER_PAIR = 4 * 8


def _na_sweep_bytes(label: str, batch: int, heads: int, tokens: int, kernel: int, head_dim: int) -> float:
    """What one sweep row would materialise, for the rows whose memory grows faster than N * d (others: 0)."""
    if label in ('hiervit:reference', 'peer:gather', 'peer:gather+compile'):
        return _GATHER_BYTES_PER_SCORE_CHANNEL * batch * heads * tokens * kernel * kernel * head_dim
    dense = _DENSE_BYTES_PER_SCORE * batch * heads * tokens * tokens if label in ('peer:flex', 'peer:natten') else 0
    if label in ('peer:flex', 'peer:flex+compile', 'peer:natten'):
        return dense + _MASK_BYTES_PER_PAIR * tokens * tokens
    return 0.0


def na_sweep(spec: Dict, sides: List[int], kernels: List[int], backends: Optional[List[str]], max_mib: float,
             csv_path: str, png: str) -> List[Dict]:
    """Neighborhood attention over square maps of `sides` (at `spec['kernel']`) and over `kernels` (at the map
    `spec['size']`), every backend and installed peer timed in this one process, shape by shape. Rows whose
    gathered or dense intermediates would exceed `max_mib` are skipped with a note (their cost is known: it grows
    with N * k^2 * d or N^2). Writes the rows to `csv_path` and a two-panel plot (time against tokens, against
    kernel area) to `png`; returns the rows."""
    import csv

    from ._timing import best_time
    device = torch.device(spec['device'])
    shapes = [(side, side, spec['kernel']) for side in sides]
    shapes += [(*spec['size'], k) for k in kernels if (*spec['size'], k) not in shapes]
    rows: List[Dict] = []
    for H, W, kernel in shapes:
        # every shape compiles the compiled peers anew: past dynamo's recompile limit (8) they would silently run eager
        torch._dynamo.reset()
        shape_spec = dict(spec, size=[H, W], kernel=kernel)
        cases = neighborhood_cases(shape_spec)
        labels = [lb for lb in cases if not backends or lb.split(':', 1)[1] in backends]
        for label in labels:
            row: Dict = {'backend': label, 'height': H, 'width': W, 'tokens': H * W, 'kernel': kernel}
            rows.append(row)
            need = _na_sweep_bytes(label, spec['batch'], spec['heads'], H * W, kernel, spec['head_dim']) / 2 ** 20
            if need > max_mib:
                row['note'] = f'skipped: would hold about {need:.3g} MiB (> --max-mib {max_mib:g})'
                continue
            try:
                case = cases[label]()
                with torch.no_grad():
                    row['fwd_ms'] = 1e3 * best_time(case.fwd, device, repeats=spec['repeats'])
                if case.backward:
                    grad = torch.randn_like(case.fwd())
                    row['fwdbwd_ms'] = 1e3 * best_time(lambda: torch.autograd.grad(case.fwd(), case.inputs, grad),
                                                       device, repeats=spec['repeats'])
                row['note'] = case.note
            except (BackendError, ValueError, RuntimeError, ImportError, NotImplementedError) as e:
                reason = str(e).replace('\n', ' ').split(' Backends that can')[0].split('cannot run this call: ')[-1]
                row['note'] = f'refused: {reason}'[:160]
                continue
            per_query = spec['batch'] * spec['heads'] * H * W
            row['fwd_ns_per_query'] = row['fwd_ms'] * 1e6 / per_query
            if 'fwdbwd_ms' in row:
                row['fwdbwd_ns_per_query'] = row['fwdbwd_ms'] * 1e6 / per_query
    columns = ['backend', 'height', 'width', 'tokens', 'kernel', 'fwd_ms', 'fwdbwd_ms', 'fwd_ns_per_query',
               'fwdbwd_ns_per_query', 'note']
    with open(csv_path, 'w', newline='') as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    _plot_na_sweep(rows, spec, sides, png)
    return rows


def _plot_na_sweep(rows: List[Dict], spec: Dict, sides: List[int], png: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (by_n, by_k) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = list(dict.fromkeys(r['backend'] for r in rows))
    H, W = spec['size']
    for i, label in enumerate(labels):
        color = f'C{i % 10}'
        mine = [r for r in rows if r['backend'] == label and 'fwd_ms' in r]
        n_rows = sorted((r for r in mine if r['kernel'] == spec['kernel'] and r['height'] == r['width']
                         and r['height'] in sides), key=lambda r: r['tokens'])
        k_rows = sorted((r for r in mine if (r['height'], r['width']) == (H, W)), key=lambda r: r['kernel'])
        for key, style, suffix in (('fwd_ms', 'o-', ' fwd'), ('fwdbwd_ms', 's--', ' fwd+bwd')):
            pts = [r for r in n_rows if key in r]
            if pts:
                by_n.loglog([r['tokens'] for r in pts], [r[key] for r in pts], style, color=color, ms=4,
                            label=label + suffix)
            pts = [r for r in k_rows if key in r]
            if pts:
                by_k.semilogy([r['kernel'] for r in pts], [r[key] for r in pts], style, color=color, ms=4)
    tokens = sorted({r['tokens'] for r in rows if r['height'] in sides and r['height'] == r['width']})
    if tokens:
        # a slope-1 guide through the fastest first point: cost linear in N runs parallel to it
        first = [r['fwd_ms'] for r in rows if r['tokens'] == tokens[0] and 'fwd_ms' in r]
        if first:
            ref = min(first)
            by_n.loglog(tokens, [ref * t / tokens[0] for t in tokens], ':', color='gray', label='linear in N')
    by_n.set_xlabel(f'tokens N (square maps, kernel {spec["kernel"]})')
    by_n.set_ylabel('ms')
    by_k.set_xlabel(f'kernel size k ({H}x{W} map; cost grows with k^2)')
    by_k.set_ylabel('ms')
    fig.suptitle(f'neighborhood attention: B={spec["batch"]}, {spec["heads"]} heads x {spec["head_dim"]}, rpb, '
                 f'{spec["dtype"]}, {spec["device"]}, {torch.get_num_threads()} threads (solid: fwd, dashed: fwd+bwd)',
                 fontsize=9)
    by_n.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=90)


def _importable(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


# ---------------------------------------------------------------------------------------------------------------------
# sampled_window (VSA's varied-size windows)

# ViTAEv2-VSA-S normal cells at 224 px: (map side, heads, head dim) per stage; window 7, relative position bias.
VSA_S_STAGES = {1: (56, 2, 32), 2: (28, 4, 32), 3: (14, 8, 32), 4: (7, 16, 32)}


def grid_sample_window_peer(qkv: torch.Tensor, offsets: torch.Tensor, scales: torch.Tensor, table: torch.Tensor,
                            window: int, scale: float) -> torch.Tensor:
    """The official VSA path on `qkv [B, H, W, 3, heads, d]`: build the sampling grid, `F.grid_sample` K and V per
    head (`[B * heads, d, H, W]`, zeros, align_corners), then window attention on the sampled maps (hiervit's window
    op, whose fastest backend runs). Returns `[B, H, W, heads, d]`."""
    import torch.nn.functional as F

    from hiervit.kernels.sampled_window.reference import sampling_grid
    from hiervit.kernels.window import window_attention
    B, H, W, _, heads, d = qkv.shape
    q, k, v = qkv.unbind(3)
    grid = sampling_grid(offsets, scales, H, W, [window, window]).reshape(B * heads, H, W, 2)

    def sample(x):  # [B, H, W, heads, d] -> [B * heads, d, H, W] -> sampled -> back
        x = F.grid_sample(x.permute(0, 3, 4, 1, 2).reshape(B * heads, d, H, W), grid, mode='bilinear',
                          padding_mode='zeros', align_corners=True)
        return x.view(B, heads, d, H, W).permute(0, 3, 4, 1, 2)
    return window_attention(q, sample(k), sample(v), window, rpb=table, scale=scale)


def sampled_window_cases(spec: Dict) -> Dict[str, Callable[[], Case]]:
    """ViTAEv2-VSA-S stage shapes: each backend beside the grid_sample + window attention path."""
    from hiervit.kernels.sampled_window import (
        sampled_window_attention, sampled_window_attention_flops, sampled_window_dispatcher)

    device, dtype = torch.device(spec['device']), _dtype(spec['dtype'])
    side, heads, d = VSA_S_STAGES[spec['stage']]
    B, window = spec['batch'], 7
    flops = float(sampled_window_attention_flops((B, side, side, heads, d), (window, window)))
    note = f'ViTAEv2-VSA-S stage {spec["stage"]}: {side}x{side}, {heads}x{d}, window {window}, rpb'

    def inputs():
        g = torch.Generator().manual_seed(0)
        make = lambda *s, std=1.0: (torch.randn(*s, generator=g) * std).to(device, dtype).requires_grad_()
        n = side // window
        return (make(B, side, side, 3, heads, d), make(B, heads, n, n, 2, std=0.5), make(B, heads, n, n, 2, std=0.5),
                make((2 * window - 1) ** 2, heads))

    def backend_case(name: str) -> Case:
        qkv, offsets, scales, table = inputs()

        def fwd():
            q, k, v = qkv.unbind(3)
            return sampled_window_attention(q, k, v, offsets, scales, window, rpb=table, backend=name)
        return Case(fwd, [qkv, offsets, scales, table], flops, note=note)

    def peer_case() -> Case:
        qkv, offsets, scales, table = inputs()
        return Case(lambda: grid_sample_window_peer(qkv, offsets, scales, table, window, d ** -0.5),
                    [qkv, offsets, scales, table], flops, note='grid_sample K and V, then window attention (auto)')

    cases: Dict[str, Callable[[], Case]] = {f'hiervit:{n}': (lambda n=n: backend_case(n))
                                            for n in sampled_window_dispatcher.names}
    if spec.get('peers', True):
        cases['peer:grid_sample+window'] = peer_case
    return cases


OPS = {'neighborhood': neighborhood_cases, 'routed': routed_cases, 'linear': linear_cases, 'window': window_cases,
       'sampled_window': sampled_window_cases}


def measure(spec: Dict, label: str) -> Dict:
    """Measure one case (called in a fresh worker process): fwd and fwd+bwd best time, first call, peak memory."""
    import time

    from ._timing import PeakMemory, best_time, gemm_gflops, synchronize

    device = torch.device(spec['device'])
    if spec.get('threads'):
        torch.set_num_threads(spec['threads'])
    row: Dict = {'backend': label}
    try:
        case = OPS[spec['op']](spec)[label]()
    except (BackendError, ValueError, RuntimeError, ImportError) as e:
        row['note'] = f'refused: {e}'.replace('\n', ' ')[:200]
        return row
    row['note'] = case.note
    gemm = gemm_gflops(device, _dtype(spec['dtype']))
    row['gemm_gflops'] = gemm
    try:
        t0 = time.perf_counter()
        with torch.no_grad():
            case.fwd()
        synchronize(device)
        row['first_call_s'] = time.perf_counter() - t0
        with torch.no_grad(), PeakMemory(device) as mem:
            case.fwd()
        with torch.no_grad():
            t = best_time(case.fwd, device, repeats=spec['repeats'])
        row.update(fwd_ms=t * 1e3, fwd_gflops=case.flops / t / 1e9, fwd_pct_gemm=100 * case.flops / t / 1e9 / gemm,
                   fwd_peak_mib=mem.mib)
        if case.backward:
            grad = torch.randn_like(case.fwd())

            def step():
                out = case.fwd()
                torch.autograd.grad(out, case.inputs, grad)
            with PeakMemory(device) as mem:
                step()
            t = best_time(step, device, repeats=spec['repeats'])
            total = 3 * case.flops  # backward = 4 GEMM-shaped products (dS, dV, dQ, dK) = 2x forward
            row.update(fwdbwd_ms=t * 1e3, fwdbwd_gflops=total / t / 1e9,
                       fwdbwd_pct_gemm=100 * total / t / 1e9 / gemm,
                       fwdbwd_peak_mib=mem.mib)
    except BackendError as e:
        row['note'] = f'refused: {e}'.replace('\n', ' ').split(' Backends that can')[0][:160]
    except (RuntimeError, NotImplementedError) as e:
        row['note'] = (row['note'] + '; ' if row['note'] else '') + f'failed: {e}'.replace('\n', ' ')[:200]
    return row
