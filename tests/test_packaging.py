"""The package installs under the single `hiervit` namespace, both editable and as a wheel."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ('hiervit.backbones', 'hiervit.kernels', 'hiervit.train', 'hiervit.configs')


def test_no_top_level_backbones_or_kernels(tmp_path):
    # Run away from the repo root: `python -m pytest` puts the working directory on sys.path, the install does not.
    code = (
        'import importlib.util, hiervit\n'
        'for name in ("backbones", "kernels", "train", "configs"):\n'
        '    assert importlib.util.find_spec(name) is None, f"top-level {name} is importable"\n'
        f'for name in {SUBPACKAGES!r}:\n'
        '    assert importlib.util.find_spec(name) is not None, name\n'
    )
    subprocess.run([sys.executable, '-c', code], check=True, cwd=tmp_path)


@pytest.mark.slow
def test_wheel_installs_and_imports(tmp_path):
    dist = tmp_path / 'dist'
    subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '-w', str(dist), str(ROOT)],
        check=True, cwd=tmp_path)
    wheels = list(dist.glob('hiervit-*.whl'))
    assert len(wheels) == 1, wheels
    names = zipfile.ZipFile(wheels[0]).namelist()
    top = {n.split('/')[0] for n in names if not n.startswith('hiervit-')}
    assert top == {'hiervit'}, f'wheel installs top-level names {sorted(top)}'
    for pkg in ('hiervit/backbones/__init__.py', 'hiervit/kernels/_dispatch.py', 'hiervit/train/__init__.py',
                'hiervit/kernels/neighborhood/csrc/na_cpu.cpp',
                'hiervit/kernels/linear/csrc/linear_cpu.cpp',
                'hiervit/kernels/routed/csrc/routed_cpu.cpp',
                'hiervit/kernels/window/csrc/win_cpu.cpp'):  # the C++ sources build on first use
        assert pkg in names, pkg

    site = tmp_path / 'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--target', str(site), str(wheels[0])],
                   check=True, cwd=tmp_path)
    # Import from the throwaway target, away from the repo, and check every sub-package resolves there.
    code = (
        'import hiervit, hiervit.kernels, hiervit.backbones, hiervit.train, timm\n'
        'print(hiervit.__file__)\n'
        'print(hiervit.kernels.__file__)\n'
        'print(hiervit.backbones.__file__)\n'
        'print(len(hiervit.list_hiervit_models()))\n'
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, '-c', code], check=True, cwd=tmp_path, env=env,
                         capture_output=True, text=True).stdout.split()
    for path in out[:3]:
        assert path.startswith(str(site)), path
    assert int(out[3]) == len(__import__('hiervit').list_hiervit_models())


def test_make_test_installs_every_extra():
    # `make test` runs every test, so it installs every extra (the bench extra's matplotlib draws the sweep's plot).
    import re
    import tomllib
    extras = set(tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['optional-dependencies'])
    installed = re.search(r"pip install -q -e '\.\[([^\]]*)\]'", (ROOT / 'Makefile').read_text())
    assert installed, 'the Makefile no longer installs hiervit with extras'
    # `triton` is also a requirement of `test`, which the Makefile installs.
    assert extras - set(installed.group(1).split(',')) <= {'triton'}, 'extras that `make test` does not install'
