"""Fashion-MNIST demo: train a tiny NAT from scratch on CPU, then validate it on the 10,000 test images.

    python -m hiervit.train.demo [--output DIR] [--epochs N] [extra hiervit-train flags ...]

The recipe is `configs/demo/fashion_mnist_nat.yaml`. The data is Debian's `dataset-fashion-mnist` package; when it is
missing and the demo runs as root (or with password-less sudo) it installs it with apt-get, otherwise it says how to.
Exits non-zero when the test top-1 is below `--target`.
"""
import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from typing import List, Optional

from timm.utils import setup_default_logging

from .args import recipe_path
from .data import FASHION_MNIST_ROOT
from .train import train
from .validate import validate

__all__ = ['main', 'ensure_fashion_mnist']

_logger = logging.getLogger('hiervit.demo')
_PACKAGE = 'dataset-fashion-mnist'
_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz', 't10k-images-idx3-ubyte.gz',
          't10k-labels-idx1-ubyte.gz')


def _have_data(root: str) -> bool:
    return all(os.path.isfile(os.path.join(root, f)) for f in _FILES)


def ensure_fashion_mnist(root: str, install: bool = True) -> None:
    """Make sure the four Fashion-MNIST IDX files are in `root`, installing the Debian package if allowed."""
    if _have_data(root):
        return
    how = (f'`sudo apt-get install {_PACKAGE}` (fills {FASHION_MNIST_ROOT}), or pass --data-dir to a folder with '
           f'{_FILES}')
    if not install or os.path.abspath(root) != FASHION_MNIST_ROOT:
        raise SystemExit(f'Fashion-MNIST not found in {root}; install it with {how}')
    apt = shutil.which('apt-get')
    prefix: List[str] = []
    if hasattr(os, 'geteuid') and os.geteuid() != 0:
        prefix = ['sudo', '-n'] if shutil.which('sudo') else []
        if not prefix:
            raise SystemExit(f'Fashion-MNIST is missing and installing it needs root; run {how}')
    if apt is None:
        raise SystemExit(f'Fashion-MNIST is missing and this system has no apt-get; get the IDX files {_FILES} and '
                         f'pass --data-dir')
    _logger.info(f'Fashion-MNIST missing: installing {_PACKAGE} with apt-get')
    install_cmd = prefix + [apt, 'install', '-y', '-q', _PACKAGE]
    if subprocess.run(install_cmd).returncode != 0:  # the package lists may be stale or empty: refresh once
        subprocess.run(prefix + [apt, 'update', '-q'])
        subprocess.run(install_cmd)
    if not _have_data(root):
        raise SystemExit(f'installing {_PACKAGE} failed; install it with {how}')


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog='python -m hiervit.train.demo', description=__doc__.splitlines()[0])
    parser.add_argument('--output', default='./output/demo', help='parent folder of the run folder')
    parser.add_argument('--data-dir', default=FASHION_MNIST_ROOT, help='folder of the four IDX .gz files')
    parser.add_argument('--epochs', type=int, default=None, help='override the recipe epochs')
    parser.add_argument('--workers', type=int, default=None, help='override the recipe loader workers')
    parser.add_argument('--no-install', action='store_true', help='never run apt-get')
    parser.add_argument('--target', type=float, default=80.0, help='minimum test top-1 (%%) for success')
    args, extra = parser.parse_known_args(argv)
    setup_default_logging()
    ensure_fashion_mnist(args.data_dir, install=not args.no_install)

    experiment = 'fashion_mnist_nat-' + datetime.now().strftime('%Y%m%d-%H%M%S')
    train_argv = ['-c', recipe_path('demo/fashion_mnist_nat'), '--data-dir', args.data_dir,
                  '--output', args.output, '--experiment', experiment]
    if args.epochs is not None:
        train_argv += ['--epochs', str(args.epochs)]
    if args.workers is not None:
        train_argv += ['--workers', str(args.workers)]
    start = time.time()
    run = train(train_argv + extra)
    train_time = time.time() - start
    checkpoint = os.path.join(run['output_dir'], 'last.pth.tar')
    _logger.info(f'trained in {train_time:.0f}s; validating {checkpoint} on the Fashion-MNIST test split')
    workers = str(args.workers if args.workers is not None else 1)
    results = validate(['--checkpoint', checkpoint, '--data-dir', args.data_dir, '--val-split', 'test',
                        '-b', '256', '--workers', workers, '--threads', '1',
                        '--results-file', os.path.join(run['output_dir'], 'test_results.json')])
    total = time.time() - start
    ok = results['top1'] >= args.target
    print(f'\nFashion-MNIST test top-1 {results["top1"]:.2f}% on {results["num_images"]} images '
          f'(target {args.target:.0f}%: {"reached" if ok else "MISSED"}); training {train_time / 60:.1f} min, '
          f'total {total / 60:.1f} min; run folder {run["output_dir"]}')
    if not ok:
        sys.exit(1)


if __name__ == '__main__':
    main()
