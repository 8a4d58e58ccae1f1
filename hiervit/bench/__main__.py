"""`python -m hiervit.bench`: op and model benchmarks on this machine.

  python -m hiervit.bench op neighborhood [--batch 8 --heads 2 --size 56 56 --kernel 7 --head-dim 32]
  python -m hiervit.bench op neighborhood --sweep [--sides 14 28 56 112 224 --kernels 3 5 7 9 11 13 --csv na_sweep.csv
      --png na_sweep.png --max-mib 1024]
  python -m hiervit.bench op routed [--stage 1 2 3 --batch 8]
  python -m hiervit.bench op window [--shape swin1 swin3 cswin1 cswin2 cswin3 --batch 8]
  python -m hiervit.bench op sampled_window [--stage 1 2 3 4 --batch 8]
  python -m hiervit.bench op linear [--stage 1 2 3 4 --normalizer clamp|mean] [--sweep --png linear_sweep.png]
  python -m hiervit.bench model nat_tiny dinat_tiny swin_tiny_patch4_window7_224 [--batch 8 --img-size 224 --train]
  python -m hiervit.bench det CONFIG [--img-size 512] [--compare OTHER_CONFIG ...]
  python -m hiervit.bench gpu [--batch 8]   (CUDA only: Triton vs reference in fp32/fp16/bf16, then timed with peers)
"""
import argparse
import json
import subprocess
import sys
from typing import Dict, List

import torch

from ._timing import format_table

OP_COLUMNS = ['backend', 'fwd_ms', 'fwd_gflops', 'fwd_pct_gemm', 'fwd_peak_mib', 'fwdbwd_ms', 'fwdbwd_gflops',
              'fwdbwd_pct_gemm', 'fwdbwd_peak_mib', 'first_call_s', 'note']
MODEL_COLUMNS = ['model', 'img_size', 'params_m', 'gmacs', 'img_per_s', 'latency_ms']


def _run_worker(spec: Dict, label: str) -> Dict:
    """Measure one row in a fresh process so peak memory and compile caches belong to that row alone."""
    cmd = [sys.executable, '-m', 'hiervit.bench._worker', json.dumps(spec), label]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ['worker failed'])[-1]
        return {'backend': label, 'note': f'failed: {err[:200]}'}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cmd_op(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from .ops import OPS
    base = dict(op=args.op, device=args.device, dtype=args.dtype, repeats=args.repeats, peers=not args.no_peers,
                batch=args.batch, threads=args.threads)
    if args.op == 'neighborhood':
        if args.sweep:
            return _na_sweep(args, base)
        specs = [dict(base, heads=args.heads, size=args.size, kernel=args.kernel, dilation=args.dilation,
                      head_dim=args.head_dim, rpb=not args.no_rpb)]
        title = (f'neighborhood attention: B={args.batch} heads={args.heads} {args.size[0]}x{args.size[1]} '
                 f'k={args.kernel} dilation={args.dilation} head_dim={args.head_dim} rpb={not args.no_rpb} '
                 f'{args.dtype} on {args.device}')
    elif args.op == 'window':
        specs = [dict(base, shape=s) for s in args.shape]
        title = (f'window attention at Swin-T / CSWin-T stage shapes (224 px): B={args.batch} {args.dtype} on '
                 f'{args.device}')
    elif args.op == 'sampled_window':
        specs = [dict(base, stage=s) for s in args.stage or [1, 2, 3, 4]]
        title = (f'sampled-window attention at ViTAEv2-VSA-S stage shapes (224 px): B={args.batch} {args.dtype} on '
                 f'{args.device}')
    elif args.op == 'linear':
        if args.sweep:
            return _linear_sweep(args)
        specs = [dict(base, stage=s, normalizer=args.normalizer) for s in args.stage or [1, 2, 3, 4]]
        title = (f'linear attention at L2ViT-T global-attention shapes (224 px): B={args.batch} '
                 f'normalizer={args.normalizer} {args.dtype} on {args.device}')
    else:
        if args.stage and 4 in args.stage:
            raise SystemExit('routed: --stage takes BiFormer-T stages 1, 2, 3 (stage 4 has no routing).')
        specs = [dict(base, stage=s) for s in args.stage or [1, 2, 3]]
        title = f'routed attention at BiFormer-T stage shapes (224 px): B={args.batch} {args.dtype} on {args.device}'
    rows: List[Dict] = []
    for spec in specs:
        labels = list(OPS[args.op](spec))
        if args.backends:
            labels = [lb for lb in labels if lb.split(':', 1)[1] in args.backends]
        for label in tqdm(labels, desc=f'{args.op} {spec.get("stage", spec.get("shape", ""))}'.strip(), leave=False):
            rows.append(_run_worker(spec, label))
    gemm = [r['gemm_gflops'] for r in rows if 'gemm_gflops' in r]
    print(title)
    if gemm:
        flops = ('2*B*heads*N*d*(2*dv+1) (k^T v, q S, q . z)' if args.op == 'linear' else
                 '4*B*heads*queries*keys_per_query*head_dim' + (
                     ' + 16*B*H*W*heads*head_dim (bilinear K and V)' if args.op == 'sampled_window' else ''))
        print(f'in-process fp32 GEMM (2048^3): {max(gemm):.1f} GFLOP/s (best over workers); '
              f'forward FLOPs = {flops}, fwd+bwd = 3x forward; '
              'fwd rows run under no_grad; peak = tensor memory allocated beyond the inputs')
    print(format_table(rows, OP_COLUMNS))


def _na_sweep(args: argparse.Namespace, base: Dict) -> None:
    from .ops import na_sweep
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = dict(base, heads=args.heads, size=args.size, kernel=args.kernel, dilation=args.dilation,
                head_dim=args.head_dim, rpb=not args.no_rpb)
    sides = args.sides or [14, 28, 56, 112, 224]
    png = args.png or 'na_sweep.png'
    rows = na_sweep(spec, sides, args.kernels, args.backends, args.max_mib, args.csv, png)
    print(f'neighborhood attention sweep, all rows in this one process: B={args.batch} heads={args.heads} '
          f'head_dim={args.head_dim} rpb={not args.no_rpb} dilation={args.dilation} {args.dtype} on {args.device}, '
          f'{torch.get_num_threads()} threads; maps {sides} at kernel {args.kernel}, kernels {args.kernels} at '
          f'{args.size[0]}x{args.size[1]}; csv: {args.csv}, plot: {png}')
    print(format_table(rows, ['backend', 'height', 'width', 'kernel', 'fwd_ms', 'fwdbwd_ms', 'fwd_ns_per_query',
                              'fwdbwd_ns_per_query', 'note']))


def _linear_sweep(args: argparse.Namespace) -> None:
    from .ops import linear_sweep
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = linear_sweep(args.device, args.dtype, args.batch, args.heads, args.head_dim,
                        args.sides or [4, 7, 10, 14, 20, 28, 40, 56, 80], args.repeats, args.png or 'linear_sweep.png')
    cross = next((r['tokens'] for r in rows if r['speedup'] > 1), None)
    print(f'linear attention (clamp, auto backend) vs softmax SDPA, fwd+bwd: B={args.batch} heads={args.heads} '
          f'head_dim={args.head_dim} {args.dtype} on {args.device}, {torch.get_num_threads()} threads; '
          f'plot: {args.png}')
    print(format_table(rows, ['side', 'tokens', 'backend', 'linear_ms', 'sdpa_ms', 'speedup']))
    print(f'linear attention is faster from N = {cross} tokens' if cross else 'linear attention was never faster')


def cmd_model(args: argparse.Namespace) -> None:
    import hiervit  # noqa: F401  (registers the models)
    from .models import bench_models
    train_batch = args.train_batch if args.train else 0
    rows = bench_models(args.models, args.batch, args.img_size, args.repeats, args.threads, train_batch)
    print(f'batch {args.batch} img/s and batch-1 latency, inference, fp32, {torch.get_num_threads()} threads'
          + (f'; train_img_per_s: batch {train_batch}, forward + backward + AdamW step' if train_batch else '')
          + '; models timed in interleaved rounds, best of each; gmacs = multiply-adds per image (what the papers '
          'call FLOPs)')
    print(format_table(rows, MODEL_COLUMNS + (['train_img_per_s'] if train_batch else [])))


def cmd_det(args: argparse.Namespace) -> None:
    try:
        from hiervit.mm import bench_config
    except ImportError as e:
        raise SystemExit(f'`bench det` needs the OpenMMLab extras (pip install "hiervit[det,seg]"): {e}')
    if args.compare:
        from hiervit.mm.bench import bench_heads
        rows = bench_heads([args.config] + args.compare, img_size=args.img_size, repeats=args.repeats)
        print('decode heads on one image\'s backbone features: FLOPs (FlopCounterMode, hiervit ops by their formulas), '
              'peak memory and best time of the head forward; fwd_ms = whole segmentor forward')
    else:
        rows = bench_config(args.config, img_size=args.img_size, repeats=args.repeats, compare_swin=not args.no_swin)
    print(format_table(rows, list(rows[0])))


def cmd_gpu(args: argparse.Namespace) -> None:
    from .gpu import DTYPES, accuracy_rows, require_cuda
    device = require_cuda()
    print(f'{torch.cuda.get_device_name(device)}, torch {torch.__version__}')
    print('triton vs reference (fp32, from the same rounded inputs): max |error| / max |reference|')
    print(format_table(accuracy_rows(device), ['op', 'shape', 'dtype', 'out', 'dq', 'dk', 'dv', 'drpb']))
    for dtype in DTYPES:
        for op in ('neighborhood', 'routed'):
            # through the parser, so that `bench op`'s defaults (NAT-T stage 1; BiFormer-T stages 1-3) apply
            main(['op', op, '--device', 'cuda', '--dtype', dtype, '--batch', str(args.batch), '--repeats',
                  str(args.repeats)])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog='python -m hiervit.bench', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='cmd', required=True)

    op = sub.add_parser('op', help='time every backend of an op (and installed peers)')
    op.add_argument('op', choices=['neighborhood', 'routed', 'linear', 'window', 'sampled_window'])
    op.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    op.add_argument('--dtype', default='float32', choices=['float32', 'float16', 'bfloat16'])
    op.add_argument('--batch', type=int, default=8)
    op.add_argument('--heads', type=int, default=2)
    op.add_argument('--size', type=int, nargs=2, default=[56, 56])
    op.add_argument('--kernel', type=int, default=7)
    op.add_argument('--dilation', type=int, default=1)
    op.add_argument('--head-dim', type=int, default=32)
    op.add_argument('--no-rpb', action='store_true', help='neighborhood: no relative position bias')
    op.add_argument('--stage', type=int, nargs='+', choices=[1, 2, 3, 4],
                    help='routed: BiFormer-T stages 1-3 (default all); linear: L2ViT-T stages 1-4 (default all); '
                         'sampled_window: ViTAEv2-VSA-S stages 1-4 (default all)')
    op.add_argument('--normalizer', default='clamp', choices=['clamp', 'mean', 'sum', 'injective', 'none'],
                    help='linear: clamp (L2ViT, beside its official chain), mean (FLatten, beside its chain), ...')
    op.add_argument('--sweep', action='store_true',
                    help='linear: fwd+bwd time against softmax SDPA over map sizes; neighborhood: every backend and '
                         'peer over map sizes (--sides, at --kernel) and kernels (--kernels, at --size); with a plot')
    op.add_argument('--sides', type=int, nargs='+',
                    help='--sweep: square map sides (tokens = side^2); default 4 7 10 14 20 28 40 56 80 (linear), '
                         '14 28 56 112 224 (neighborhood)')
    op.add_argument('--kernels', type=int, nargs='+', default=[3, 5, 7, 9, 11, 13],
                    help='neighborhood --sweep: kernel sizes, on the --size map')
    op.add_argument('--max-mib', type=float, default=1024,
                    help='neighborhood --sweep: skip rows whose gathered / dense intermediates would exceed this')
    op.add_argument('--csv', default='na_sweep.csv', help='neighborhood --sweep: where the rows go')
    op.add_argument('--png', help='--sweep: where the plot goes (default linear_sweep.png / na_sweep.png)')
    op.add_argument('--shape', nargs='+', default=['swin1', 'swin3', 'cswin1', 'cswin2', 'cswin3'],
                    choices=['swin1', 'swin3', 'cswin1', 'cswin2', 'cswin3'],
                    help='window: Swin-T stage 1/3 and CSWin-T stage 1/2/3 shapes at 224 px')
    op.add_argument('--backends', nargs='+', help='only these rows (backend or peer names, e.g. cpu gather)')
    op.add_argument('--no-peers', action='store_true', help='skip the non-hiervit peers')
    op.add_argument('--repeats', type=int, default=5)
    op.add_argument('--threads', type=int, default=0, help='torch CPU threads per worker (default: torch\'s)')
    op.set_defaults(fn=cmd_op)

    model = sub.add_parser('model', help='img/s, latency, params and FLOPs of timm model names (ours or timm\'s)')
    model.add_argument('models', nargs='+')
    model.add_argument('--batch', type=int, default=8)
    model.add_argument('--img-size', type=int, default=0, help='default: the model\'s pretrained_cfg input size')
    model.add_argument('--repeats', type=int, default=3)
    model.add_argument('--threads', type=int, default=0)
    model.add_argument('--train', action='store_true', help='also time training steps (forward + backward + AdamW)')
    model.add_argument('--train-batch', type=int, default=8)
    model.set_defaults(fn=cmd_model)

    det = sub.add_parser('det', help='backbone+neck+head forward time of an mmdet/mmseg config (needs extras)')
    det.add_argument('config')
    det.add_argument('--img-size', type=int, default=512)
    det.add_argument('--repeats', type=int, default=3)
    det.add_argument('--no-swin', action='store_true', help='skip the same config with mmdet\'s Swin-T backbone')
    det.add_argument('--compare', nargs='+', default=None, metavar='CONFIG',
                     help='segmentation configs whose decode heads to compare with CONFIG\'s (FLOPs, memory, time)')
    det.set_defaults(fn=cmd_det)

    gpu = sub.add_parser('gpu', help='CUDA only: Triton backends vs reference (fp32/fp16/bf16), timed with peers')
    gpu.add_argument('--batch', type=int, default=8)
    gpu.add_argument('--repeats', type=int, default=20)
    gpu.set_defaults(fn=cmd_gpu)

    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == '__main__':
    main()
