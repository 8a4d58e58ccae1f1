"""GPU compile-readiness without a GPU: every Triton kernel compiles for A100 (sm_80) and H100 (sm_90) in the
configurations the dispatcher chooses, fits the target's shared memory and addresses memory with 64-bit offsets.

The interpreter tests (TRITON_INTERPRET=1) never compile anything and run every dot in fp32, so they cannot see the
fp16/bf16 `tl.dot` paths, shared-memory use or register pressure. Here the kernels are compiled to cubin with
`triton.compile(ASTSource(...), target=GPUTarget('cuda', cc, 32))`, which needs no driver. The launch arguments are not
restated: each backend's own `forward`/`backward` runs on small CPU tensors with its kernels replaced by recorders,
so the compiled signatures and constexprs (tiles, chunks, warps) are what a CUDA call of that shape would launch.

Compilation runs in a subprocess (this file run as a script): under TRITON_INTERPRET=1, which conftest.py sets for the
rest of the suite, `triton.jit` builds interpreter objects that cannot be compiled. Each run compiles into a fresh
cache directory, so nothing is reused between processes.

The CI matrix compiles every kernel for every dtype x rpb x tile path (2-D, 1-D short, 1-D long) once at its largest
tiles, rotating head dims 64/128/256 and the two targets (the window op's plain and context-mode kernels for every
dtype, bias and context border rotating with it), plus every distinct fp16 kernel variant the registered
models launch (head dim 32, kernels 7 and 11, BiFormer's region sizes); `HIERVIT_COMPILE_MATRIX=full` compiles all of
it for every head dim and dtype on both targets. Identical variants (same signature, constexprs, options, target) compile once.
Register spills (local memory) are reported as a warning, not a failure: a kernel that spills still runs.
"""
import json
import os
import subprocess
import sys
import warnings
from typing import Dict, List, Sequence

import pytest

# Shared memory per block (opt-in maximum): A100 164 KB, H100 227 KB (228 KB per SM, 1 KB reserved per block).
SMEM_LIMIT = {80: 164 * 1024, 90: 227 * 1024}
TARGETS = (80, 90)
HEAD_DIMS = (32, 64, 128, 256)  # 256 is the largest the triton backends accept
DTYPES = ('float16', 'bfloat16', 'float32')


def model_shapes() -> Dict[str, set]:
    """The neighborhood and routed calls of every registered model at its default input size: one meta-device forward
    per model (no weights, no arithmetic) under a dispatch mode that records each hiervit op call's arguments."""
    import timm
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    import hiervit
    found = {'neighborhood': set(), 'routed': set(), 'sampled_window': set()}

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.hiervit.neighborhood_attention_fwd.default:
                q, _, v, rpb, kernel, dilation = args[:6]
                found['neighborhood'].add((q.shape[-1], tuple(q.shape[1:-2]), tuple(kernel), tuple(dilation),
                                           rpb is not None))
            elif func is torch.ops.hiervit.routed_attention_fwd.default:
                q, _, _, idx = args[:4]
                found['routed'].add((q.shape[-1], q.shape[3], idx.shape[-1]))
            elif func is torch.ops.hiervit.sampled_window_attention_fwd.default:
                q, rpb, window = args[0], args[5], args[6]
                found['sampled_window'].add((q.shape[-1], tuple(window), rpb is not None))
            return func(*args, **(kwargs or {}))

    for name in hiervit.list_hiervit_models():
        with torch.device('meta'):
            model = timm.create_model(name)
            with torch.no_grad(), Record():
                model(torch.empty(1, *model.pretrained_cfg['input_size']))
    return found


def model_matrix(full: bool) -> List[dict]:
    """The registered models' own calls (every stage at the default input size): in CI in fp16 (the GPU training and
    inference dtype; fp32 and bf16 are covered by the tile matrix), each distinct variant on one target
    (alternating); in every dtype on both targets if `full`."""
    shapes = model_shapes()
    jobs, i = [], 0
    for d, spatial, kernel, dilation, rpb in sorted(shapes['neighborhood']):
        for dtype in DTYPES if full else ('float16',):
            jobs.append(dict(op='neighborhood', dtype=dtype, rpb=rpb, d=d, spatial=spatial, kernel=kernel,
                             dilation=dilation, targets=TARGETS if full else (TARGETS[i % 2],), why='model'))
            i += 1
    for d, tokens, topk in sorted(shapes['routed']):
        for dtype in DTYPES if full else ('float16',):
            jobs.append(dict(op='routed', dtype=dtype, d=d, tokens=tokens, topk=topk,
                             targets=TARGETS if full else (TARGETS[i % 2],), why='model'))
            i += 1
    for d, window, rpb in sorted(shapes['sampled_window']):
        for dtype in DTYPES if full else ('float16',):
            jobs.append(dict(op='sampled_window', dtype=dtype, rpb=rpb, d=d, window=window,
                             targets=TARGETS if full else (TARGETS[i % 2],), why='model'))
            i += 1
    return jobs


def tile_matrix(full: bool) -> List[dict]:
    """Every tile path at its largest tiles: in CI each dtype x rpb x path once, rotating head dims (32 is the models')
    and targets; every head dim on both targets if `full`."""
    jobs = []
    # Tile paths: 2-D (4 x 8 query tile), 1-D short (1 x 16) and long (1 x 32) axes; the kernel is wide enough that
    # the window union exceeds the chunk cap, so the chunks are the largest and the chunk loops are compiled too.
    paths = {'2d': ((12, 200), (5, 63)), '1d16': ((70,), (63,)), '1d32': ((200,), (63,))}
    i = 0
    for dtype in DTYPES:
        for rpb in (True, False):
            for path, (spatial, kernel) in paths.items():
                for d in HEAD_DIMS if full else (HEAD_DIMS[1 + i % 3],):
                    jobs.append(dict(op='neighborhood', dtype=dtype, rpb=rpb, d=d, spatial=spatial, kernel=kernel,
                                     targets=TARGETS if full else (TARGETS[i % 2],), why=f'tile {path}'))
                i += 1
        # routed: token tiles are capped by head dim and dtype; 200 tokens per block reach the cap at every d
        for d in HEAD_DIMS if full else (256,):
            jobs.append(dict(op='routed', dtype=dtype, d=d, tokens=200, topk=3,
                             targets=TARGETS if full else (TARGETS[i % 2],), why='largest tile'))
        # window (plain and context mode, one module): 64-slot blocks, windows and contexts of two blocks; in CI the
        # bias and the context border rotate with the dtype
        for j, d in enumerate(HEAD_DIMS if full else (HEAD_DIMS[1 + i % 3],)):
            jobs.append(dict(op='window', dtype=dtype, d=d, rpb=i % 2 == 0, border=('zeros', 'mask', 'shift')[i % 3],
                             targets=TARGETS if full else (TARGETS[(i + 1) % 2],), why='two blocks'))
        i += 1
        # sampled_window: one register tile per window; VSA's 7 x 7 windows at head dim 32 and the largest it accepts
        # (8 x 8, head dim 64); in CI with the bias at 7 x 7 and without at 8 x 8, targets alternating
        variants = [(rpb, window, d) for rpb in (True, False) for window, d in (((7, 7), 32), ((8, 8), 64))
                    if full or (window == (7, 7)) == rpb]
        for n, (rpb, window, d) in enumerate(variants):
            jobs.append(dict(op='sampled_window', dtype=dtype, rpb=rpb, d=d, window=window,
                             targets=TARGETS if full else (TARGETS[(DTYPES.index(dtype) + n) % 2],),
                             why='window tile'))
    return jobs


# ----------------------------------------------------------------------------------------------------------------------
# subprocess side: record the launches of one configuration, compile them


def _launches(job: dict) -> list:
    """(kernel, args, constexprs+options) of every kernel launch the backend makes for this configuration: its
    forward and backward run on small CPU tensors (the recorders launch nothing; meta tensors lack `bincount`)."""
    import torch
    from triton.runtime.jit import JITFunction
    dtype = getattr(torch, job['dtype'])
    if job['op'] == 'neighborhood':
        import hiervit.kernels.neighborhood.triton as mod
        heads, d = 2, job['d']
        q = torch.zeros(1, *job['spatial'], heads, d, dtype=dtype)
        rpb = (torch.empty(heads, *(2 * k - 1 for k in job['kernel']), dtype=dtype)
               if job['rpb'] else None)
        kernel, dilation = list(job['kernel']), list(job.get('dilation') or [1] * len(job['spatial']))

        def run():
            out, lse = mod.forward(q, q, q, rpb, kernel, dilation, 0.1)
            mod.backward(out, q, q, q, rpb, out, lse, kernel, dilation, 0.1)
    elif job['op'] == 'window':
        import hiervit.kernels.window.triton as mod
        heads, d = 2, job['d']
        q = torch.zeros(1, 10, 10, heads, d, dtype=dtype)
        rpb = torch.zeros(19 * 19, heads, dtype=dtype) if job['rpb'] else None
        k = torch.zeros(1, 12, 12, heads, d, dtype=dtype)
        plain = ([10, 10], [2, 3], [0, 0, 0, 0], True, 0.1)
        context = ([10, 10], [10, 10], [2, 2], [-1, -1], [1, 1], job['border'], 0.1)

        def run():
            out, lse = mod.forward(q, q, q, rpb, *plain)
            mod.backward(out, q, q, q, rpb, out, lse, *plain)
            out, lse = mod.context_forward(q, k, k, *context)
            mod.context_backward(out, q, k, k, out, lse, *context)
    elif job['op'] == 'sampled_window':
        import hiervit.kernels.sampled_window.triton as mod
        heads, d, (wh, ww) = 2, job['d'], job['window']
        q = torch.zeros(1, 2 * wh, 2 * ww, heads, d, dtype=dtype)
        grid_params = torch.zeros(1, heads, 2, 2, 2, dtype=dtype)
        rpb = torch.empty((2 * wh - 1) * (2 * ww - 1), heads, dtype=dtype) if job['rpb'] else None

        def run():
            out, lse = mod.forward(q, q, q, grid_params, grid_params, rpb, [wh, ww], 0.1)
            mod.backward(out, q, q, q, grid_params, grid_params, rpb, out, lse, [wh, ww], 0.1)
    else:
        import hiervit.kernels.routed.triton as mod
        B, H, blocks, d = 2, 2, 4, job['d']
        q = torch.empty(B, H, blocks, job['tokens'], d, dtype=dtype)
        idx = torch.zeros(B, H, blocks, job['topk'], dtype=torch.int64)

        def run():
            out, lse = mod.forward(q, q, q, idx, 0.1)
            mod.backward(out, q, q, q, idx, out, lse, 0.1)

    log = []

    class Recorder:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            return lambda *args, **kwargs: log.append((self.fn, args, kwargs))

    kernels = {n: v for n, v in vars(mod).items() if isinstance(v, JITFunction)}
    launched_by_name = [n for n in kernels if n.endswith('_kernel')]
    for n, fn in kernels.items():
        setattr(mod, n, Recorder(fn))
    try:
        run()
    finally:
        for n, fn in kernels.items():
            setattr(mod, n, fn)
    missing = set(launched_by_name) - {fn.__name__ for fn, _, _ in log}
    assert not missing, f'{job["op"]}: kernels never launched by forward/backward: {missing}'
    return log


def _signature(fn, args, kwargs):
    import torch
    types = {torch.float16: 'fp16', torch.bfloat16: 'bf16', torch.float32: 'fp32', torch.int64: 'i64',
             torch.int32: 'i32'}
    options = {k: kwargs.pop(k) for k in ('num_warps', 'num_stages') if k in kwargs}
    sig = {}
    for name, a in zip(fn.arg_names, args):
        if isinstance(a, torch.Tensor):
            sig[name] = '*' + types[a.dtype]
        elif isinstance(a, bool):
            sig[name] = 'i1'
        elif isinstance(a, int):
            sig[name] = 'i32' if -2 ** 31 <= a < 2 ** 31 else 'i64'  # as Triton's launcher specializes
        elif isinstance(a, float):
            sig[name] = 'fp32'
        else:
            raise TypeError(f'{fn.__name__}: argument {name} of type {type(a).__name__}')
    sig.update({name: 'constexpr' for name in kwargs})
    return sig, kwargs, options


def _resources(cubin: bytes, tmp: str) -> Dict[str, int]:
    """Registers and local memory (spills) per thread, from cuobjdump's resource usage."""
    import re

    import triton.backends.nvidia as nv
    path = os.path.join(tmp, 'k.cubin')
    with open(path, 'wb') as f:
        f.write(cubin)
    text = subprocess.run([os.path.join(os.path.dirname(nv.__file__), 'bin', 'cuobjdump'), '-res-usage', path],
                          capture_output=True, text=True, check=True).stdout
    return {key.lower(): int(re.search(rf'\b{key}:(\d+)', text).group(1)) for key in ('REG', 'LOCAL')}


def _first_offsets(ttir: str, args: Sequence[str]) -> List[str]:
    """Integer type of the first offset added to each pointer argument, per `tt.addptr` in the TTIR.

    A pointer expression `P + base + small` lowers to successive `addptr`s; the first one, applied to the argument
    itself (or to a splat/broadcast of it), carries the large part of the offset (batch, head, row). It must be 64-bit;
    later ones (intra-tile `tl.arange` offsets) are bounded by a tile and may stay 32-bit.
    """
    import re
    raw = {f'%{a}' for a in args}
    kinds = []
    for line in ttir.splitlines():
        m = re.match(r'\s*(%\S+) = tt\.(?:splat|broadcast|expand_dims) (%[^\s:,]+)', line)
        if m and m.group(2) in raw:
            raw.add(m.group(1))
            continue
        m = re.match(r'\s*(%\S+) = tt\.addptr (%[^\s,]+), %[^\s:]+ : .*, (?:tensor<[0-9x]+x)?(i\d+)>? loc', line)
        if m and m.group(2) in raw:
            kinds.append(m.group(3))
    return kinds


def _compile(task: tuple) -> dict:
    """Compile one kernel variant for one target; the row the test checks (or the error)."""
    import importlib
    import re
    import tempfile
    import time

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    module, kernel, sig, constexprs, options, cc, row = task
    fn = getattr(importlib.import_module(module), kernel)
    row = dict(row, target=cc, kernel=kernel, tiles={k: v for k, v in constexprs.items() if k.startswith(('B', 'T'))},
               num_warps=options.get('num_warps'))
    start = time.process_time()
    try:
        compiled = triton.compile(ASTSource(fn, sig, constexprs), target=GPUTarget('cuda', cc, 32), options=options)
    except Exception as e:  # reported with its configuration by the test
        return dict(row, error=f'{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}')
    first = _first_offsets(compiled.asm['ttir'], fn.arg_names)
    with tempfile.TemporaryDirectory() as tmp:
        res = _resources(compiled.asm['cubin'], tmp)
    return dict(row, shared=compiled.metadata.shared, cpu_s=round(time.process_time() - start, 2),
                addptr_i32=first.count('i32'), addptr=len(first), **res)


def _tasks(jobs: List[dict], done: set) -> List[tuple]:
    """Distinct (kernel, signature, constexprs, options, target) variants of the jobs not compiled yet."""
    tasks = []
    for job in jobs:
        for fn, args, kwargs in _launches(job):
            sig, constexprs, options = _signature(fn, args, dict(kwargs))
            for cc in job['targets']:
                key = json.dumps([fn.__module__, fn.__name__, sig, constexprs, options, cc], sort_keys=True)
                if key not in done:
                    done.add(key)
                    row = {k: v for k, v in job.items() if k != 'targets'}
                    tasks.append((fn.__module__, fn.__name__, sig, constexprs, options, cc, row))
    return tasks


def main() -> None:
    """Compile the matrix (argv[1]: 'full' or 'ci'); print one JSON row per distinct kernel variant and target."""
    import multiprocessing
    import tempfile
    assert os.environ.get('TRITON_INTERPRET', '0') != '1', 'run without TRITON_INTERPRET=1'
    os.environ['TRITON_CACHE_DIR'] = tempfile.mkdtemp(prefix='hiervit-compile-')
    done: set = set()
    workers = int(os.environ.get('HIERVIT_COMPILE_WORKERS', '2'))
    with multiprocessing.get_context('fork').Pool(workers) as pool:
        # the tile matrix compiles while this process collects the models' calls (a meta forward of every model)
        pending = [pool.map_async(_compile, _tasks(tile_matrix(sys.argv[1] == 'full'), done), chunksize=1)]
        pending.append(pool.map_async(_compile, _tasks(model_matrix(sys.argv[1] == 'full'), done), chunksize=1))
        for result in pending:
            for row in result.get():
                print(json.dumps(row), flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# pytest side


@pytest.fixture(scope='module')
def compiled() -> List[dict]:
    pytest.importorskip('triton')
    full = os.environ.get('HIERVIT_COMPILE_MATRIX', 'ci') == 'full'
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    proc = subprocess.run([sys.executable, __file__, 'full' if full else 'ci'], capture_output=True, text=True,
                          env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]


def _name(row: dict) -> str:
    what = (f'{row["op"]} {row["kernel"]} sm_{row["target"]} {row["dtype"]} d={row["d"]} {row["why"]} '
            f'{row["tiles"]}')
    if row['op'] == 'neighborhood':
        what += f' rpb={row["rpb"]} spatial={row["spatial"]} kernel={row["kernel"]}'
    elif row['op'] == 'sampled_window':
        what += f' rpb={row["rpb"]} window={row["window"]}'
    elif row['op'] == 'window':
        what += f' rpb={row["rpb"]} border={row["border"]}'
    return what


def test_every_kernel_compiles_and_fits(compiled):
    errors = [f'{_name(r)}: {r["error"]}' for r in compiled if 'error' in r]
    assert not errors, '\n'.join(errors)
    over = [f'{_name(r)}: {r["shared"]} B > {SMEM_LIMIT[r["target"]]} B' for r in compiled
            if r['shared'] > SMEM_LIMIT[r['target']]]
    assert not over, 'shared memory over the per-block limit:\n' + '\n'.join(over)
    # every kernel was compiled for every dtype and rpb setting, and for both targets
    kernels = {(r['op'], r['kernel']) for r in compiled}
    assert len(kernels) == 14, kernels
    seen = {(r['op'], r['kernel'], r['dtype'], r.get('rpb')) for r in compiled}
    targets = {(r['op'], r['kernel'], r['target']) for r in compiled}
    for op, kernel in kernels:
        for dtype in DTYPES:
            for rpb in ((True, False) if op in ('neighborhood', 'sampled_window') else (None,)):
                assert (op, kernel, dtype, rpb) in seen or (op == 'window' and any(
                    key[:3] == (op, kernel, dtype) for key in seen)), (op, kernel, dtype, rpb)
        assert {(op, kernel, cc) for cc in TARGETS} <= targets, (op, kernel)
    spills = [f'{_name(r)}: {r["local"]} B local memory per thread, {r["reg"]} registers' for r in compiled
              if r['local']]
    if spills:
        warnings.warn('register spills (they run, slower):\n' + '\n'.join(spills))


def test_offsets_are_64_bit(compiled):
    """Every pointer's base offset (batch, head, row: the first `addptr` on a kernel argument) is 64-bit: a
    [B, H, W, heads, d] tensor or the backward's dS buffer `[B, heads, H, W, kh * kw]` passes 2**31 elements at
    detection sizes, where 32-bit offsets would wrap around silently."""
    ok = [r for r in compiled if 'error' not in r]
    assert ok and all(r['addptr'] > 0 for r in ok)  # the TTIR pattern matched the kernels' pointer arithmetic
    narrow = [f'{_name(r)}: {r["addptr_i32"]} of {r["addptr"]} addptr with i32 offsets' for r in ok if r['addptr_i32']]
    assert not narrow, '\n'.join(narrow)


if __name__ == '__main__':
    main()
