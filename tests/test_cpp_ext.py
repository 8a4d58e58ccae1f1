"""The C++ extension cache (`hiervit.kernels._cpp_ext`): after a successful build, older build folders of the same
extension that this environment made are removed, nothing else. The compiler is replaced by a stub that writes the
library file (a real build takes minutes; test_neighborhood_cpp.py builds and runs the real one)."""
import fcntl
import os
import time

import pytest

from hiervit.kernels import _cpp_ext

DAY = 24 * 3600


def _folder(base, name: str, signature, age_s: float):
    """A finished build folder `name` whose signature record (None: none) was written `age_s` seconds ago."""
    folder = base / name
    folder.mkdir(parents=True)
    (folder / f'{name.rsplit("-", 1)[0]}.so').write_bytes(b'')
    (folder / 'build.flock').touch()
    if signature is not None:
        (folder / 'signature.txt').write_text(signature)
        os.utime(folder / 'signature.txt', (time.time() - age_s,) * 2)
    return folder


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """A toy extension cached under tmp_path, and a compiler stub that writes its library (or fails)."""
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    ext = _cpp_ext.CppExtension('hiervit_toy_cpu', ('neighborhood/csrc/na_cpu.cpp',))
    from torch.utils import cpp_extension

    def compile_stub(name, build_directory, **kwargs):
        if os.environ.get('TOY_BUILD_FAILS'):
            raise RuntimeError('error: expected ; before }')
        (_cpp_ext.Path(build_directory) / f'{name}.so').write_bytes(b'')

    monkeypatch.setattr(cpp_extension, 'load', compile_stub)
    return ext


def test_successful_build_removes_only_stale_builds_of_this_environment(toy, monkeypatch):
    ours = _cpp_ext._signature()
    current = _cpp_ext._cache_dir(toy)
    base = current.parent
    stale = _folder(base, 'hiervit_toy_cpu-' + '0' * 16, ours, 2 * DAY)
    keep = {
        'recent': _folder(base, 'hiervit_toy_cpu-' + '1' * 16, ours, 3600),  # another checkout may still use it
        'other torch': _folder(base, 'hiervit_toy_cpu-' + '2' * 16, ours.replace('torch ', 'torch 0.'), 2 * DAY),
        'other cpu': _folder(base, 'hiervit_toy_cpu-' + '3' * 16, ours.split('cpu ')[0] + 'cpu avx2\n', 2 * DAY),
        'no record': _folder(base, 'hiervit_toy_cpu-' + '4' * 16, None, 2 * DAY),
        'locked': _folder(base, 'hiervit_toy_cpu-' + '5' * 16, ours, 2 * DAY),
        'other extension': _folder(base, 'hiervit_toy_cpu_v2-' + '6' * 16, ours, 2 * DAY),
    }
    failed = _folder(base, 'hiervit_toy_cpu-' + '7' * 16, ours, 2 * DAY)

    # a failed build removes nothing
    current.mkdir(parents=True)
    monkeypatch.setenv('TOY_BUILD_FAILS', '1')
    with pytest.raises(RuntimeError, match='failed to build'):
        _cpp_ext._build(toy, current)
    assert stale.exists() and failed.exists() and not (current / 'signature.txt').exists()
    (current / 'build_failed.txt').unlink()
    monkeypatch.delenv('TOY_BUILD_FAILS')

    with open(keep['locked'] / 'build.flock') as held:  # a process building there
        fcntl.flock(held, fcntl.LOCK_EX)
        _cpp_ext._build(toy, current)
    assert (current / 'hiervit_toy_cpu.so').exists() and (current / 'signature.txt').read_text() == ours
    assert not stale.exists() and not failed.exists()
    assert [why for why, folder in keep.items() if not folder.exists()] == []
