"""The benchmark CLI's peers compute the right thing, and its commands run end to end on tiny problems."""
import os
import subprocess
import sys

import pytest
import torch

from hiervit.bench._timing import PeakMemory, format_table
from hiervit.bench.ops import _flex_na2d, flatten_official, gather_na2d, l2vit_official, linear_sweep, na_sweep


@pytest.mark.parametrize('size,kernel,dilation', [((13, 17), 5, 1), ((12, 9), 3, 2), ((10, 10), 4, 1)])
def test_na_peers_match_natten(size, kernel, dilation):
    import natten
    q, k, v = (torch.randn(2, *size, 2, 16) for _ in range(3))
    expected = natten.na2d(q, k, v, kernel_size=kernel, dilation=dilation, backend='flex-fna')
    kd, dd = (kernel, kernel), (dilation, dilation)
    torch.testing.assert_close(gather_na2d(q, k, v, None, kd, dd, 16 ** -0.5), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(_flex_na2d(q, k, v, None, kd, dd, 16 ** -0.5, False)(), expected, atol=1e-5, rtol=0)
    rpb = torch.randn(2, 2 * kernel - 1, 2 * kernel - 1)
    torch.testing.assert_close(_flex_na2d(q, k, v, rpb, kd, dd, 0.3, False)(), gather_na2d(q, k, v, rpb, kd, dd, 0.3),
                               atol=1e-5, rtol=0)


def test_linear_peers_match_the_op():
    from hiervit.kernels.linear import linear_attention
    q, k = (torch.rand(2, 3, 30, 8) for _ in range(2))
    v, t = torch.randn(2, 3, 30, 8), torch.rand(3, 1, 1)
    torch.testing.assert_close(l2vit_official(q, k, v, t), linear_attention(q, k, v, 'clamp', t, clamp_min=100.))
    torch.testing.assert_close(flatten_official(q, k, v), linear_attention(q, k, v, 'mean'))


def test_linear_sweep_writes_a_plot(tmp_path):
    png = tmp_path / 'sweep.png'
    rows = linear_sweep('cpu', 'float32', 1, 1, 8, [2, 5], repeats=1, png=str(png))
    assert [r['tokens'] for r in rows] == [4, 25] and all(r['linear_ms'] > 0 and r['sdpa_ms'] > 0 for r in rows)
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_na_sweep_writes_csv_and_plot(tmp_path):
    import csv
    spec = dict(op='neighborhood', device='cpu', dtype='float32', repeats=1, peers=True, batch=1, threads=0, heads=1,
                size=[9, 9], kernel=3, dilation=1, head_dim=8, rpb=True)
    csv_path, png = tmp_path / 'na.csv', tmp_path / 'na.png'
    # 6x6 and 9x9 maps at k=3, then k=5 on the 9x9 map; the gathers hold about 0.05 MiB at 6x6, 0.11 at 9x9 k=3
    rows = na_sweep(spec, [6, 9], [3, 5], ['cpu', 'reference', 'gather'], 0.08, str(csv_path), str(png))
    got = [(r['backend'], r['tokens'], r['kernel'], 'fwd_ms' in r, 'fwdbwd_ms' in r) for r in rows]
    assert got == [(b, n, k, timed, timed) for n, k in ((36, 3), (81, 3), (81, 5))
                   for b in ('hiervit:cpu', 'hiervit:reference', 'peer:gather')
                   for timed in [b == 'hiervit:cpu' or n == 36]]
    assert all(r['note'].startswith('skipped') for r in rows if 'fwd_ms' not in r)
    with open(csv_path) as f:
        assert [(r['backend'], int(r['tokens']), int(r['kernel'])) for r in csv.DictReader(f)] == [g[:3] for g in got]
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_peak_memory_counts_live_tensors():
    x = torch.randn(256, 1024)  # 1 MiB, allocated before: not counted
    with PeakMemory(torch.device('cpu')) as mem:
        a = x * 2  # +1 MiB
        b = torch.cat([a, a, a])  # +3 MiB, peak 4 MiB
        del a, b
    assert mem.mib == pytest.approx(4.0, rel=0.01)


def test_format_table():
    text = format_table([{'a': 1.234, 'b': None}, {'a': 123.0, 'b': 'x'}], ['a', 'b'])
    assert text.splitlines()[0].split('|')[1].strip() == 'a'
    assert '1.23' in text and '123.0' in text and '| -' in text


@pytest.mark.slow
def test_bench_cli_runs():
    op = subprocess.run([sys.executable, '-m', 'hiervit.bench', 'op', 'neighborhood', '--batch', '1', '--size', '9',
                         '10', '--kernel', '3', '--head-dim', '8', '--repeats', '1', '--backends', 'reference', 'cpu',
                         'gather'], capture_output=True, text=True, check=True).stdout
    rows = [line for line in op.splitlines() if line.startswith('| hiervit:') or line.startswith('| peer:')]
    assert {r.split('|')[1].strip() for r in rows} == {'hiervit:reference', 'hiervit:cpu', 'peer:gather'}
    assert all('failed' not in r and 'refused' not in r for r in rows), op
    model = subprocess.run([sys.executable, '-m', 'hiervit.bench', 'model', 'resnet18', '--batch', '1',
                            '--img-size', '32', '--repeats', '1'], capture_output=True, text=True, check=True).stdout
    assert 'resnet18' in model and '11.7' in model  # resnet18 has 11.7M parameters


def test_bench_gpu_refuses_without_cuda():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run([sys.executable, '-m', 'hiervit.bench', 'gpu'], capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and 'bench gpu: no CUDA device' in proc.stderr, proc.stderr
    assert 'Traceback' not in proc.stderr


@pytest.mark.triton
def test_bench_gpu_accuracy_rows():
    """The accuracy half of `bench gpu` on tiny shapes (through the Triton interpreter when there is no GPU)."""
    from hiervit.bench.gpu import accuracy_rows
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    rows = accuracy_rows(device, na_shapes=[('tiny', (7, 9), 3, 2, 1, 8)], routed_shapes=[('tiny', 3, 4, 2, 1, 8)])
    assert [(r['op'], r['dtype']) for r in rows] == [(op, dt) for op in ('neighborhood', 'routed')
                                                      for dt in ('float32', 'float16', 'bfloat16')]
    for r in rows:
        names = ['out', 'dq', 'dk', 'dv'] + (['drpb'] if r['op'] == 'neighborhood' else [])
        bound = {'float32': 1e-5, 'float16': 1e-2, 'bfloat16': 5e-2}[r['dtype']]
        assert all(0 <= r[n] < bound for n in names), r
