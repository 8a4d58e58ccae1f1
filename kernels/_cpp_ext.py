"""Build-once-per-machine C++ extensions for the CPU kernels.

An extension is compiled on first use with `torch.utils.cpp_extension` for this machine's instruction set
(`-march=native`) into a persistent cache folder, `$TORCH_EXTENSIONS_DIR/hiervit/<name>-<hash>` or else
`~/.cache/hiervit/ext/<name>-<hash>`; the hash covers the sources, the flags, the torch and Python versions and the
CPU's feature flags, so a new machine, torch or source builds anew and nothing else does. Later processes load the
built library directly (milliseconds, no compiler or ninja needed). A file lock (flock, released if its holder dies)
keeps concurrent first uses from building twice.

Each build records the torch/Python/CPU signature it was made for (`signature.txt`). After a successful build, the
folders of older builds of the same extension are removed (other sources or flags: stale), but only those whose
recorded signature equals this process's (a folder made for another torch, Python or CPU may still serve that
environment), which no lock holds (no build in progress) and which were built more than a day before (another
checkout with other sources may still load them: removing a fresh one would make two checkouts rebuild in turn).

`status(ext)` is what a dispatcher asks: None if the extension is usable (built, or buildable here), else why not
(no compiler, no ninja, or a failed build, whose log is kept in the cache folder). It never builds inside a
torch.compile trace; eager first calls build there and then.
"""
import fcntl
import hashlib
import logging
import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import torch

__all__ = ['CppExtension', 'status', 'load']

_log = logging.getLogger(__name__)

_FLAGS = ('-O3', '-march=native', '-fopenmp')
_LDFLAGS = ('-fopenmp',)
_SIGNATURE = 'signature.txt'
_STALE_AFTER_S = 24 * 3600  # an older build is removed once it is this old (see the module docstring)


@dataclass
class CppExtension:
    """One extension: a library name and its sources (relative to this package)."""
    name: str
    sources: Tuple[str, ...]
    # process-local state: None = not tried yet, '' = loaded, anything else = why it cannot be used
    _state: Optional[str] = field(default=None, repr=False)

    def paths(self) -> List[Path]:
        here = Path(__file__).resolve().parent
        return [here / s for s in self.sources]


def _cpu_signature() -> str:
    """The CPU's feature flags: a library built with -march=native must not be reused on a different CPU."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith(('flags', 'Features')):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _signature() -> str:
    """The environment a library is built for besides its sources and flags (all of it is in the folder hash too)."""
    return f'torch {torch.__version__}\npython {sys.version}\ncpu {_cpu_signature()}\n'


def _cache_dir(ext: CppExtension) -> Path:
    h = hashlib.sha256()
    for p in ext.paths():
        h.update(p.name.encode())
        h.update(p.read_bytes())
    for part in (*_FLAGS, *_LDFLAGS, torch.__version__, sys.version, _cpu_signature()):
        h.update(part.encode())
    root = os.environ.get('TORCH_EXTENSIONS_DIR')
    base = Path(root) / 'hiervit' if root else Path.home() / '.cache' / 'hiervit' / 'ext'
    return base / f'{ext.name}-{h.hexdigest()[:16]}'


def _remove_stale_builds(ext: CppExtension, current: Path) -> None:
    """Remove the other build folders of `ext` that this environment made and no longer uses (module docstring)."""
    signature = _signature()
    built = (current / _SIGNATURE).stat().st_mtime
    for folder in current.parent.iterdir():
        if folder == current or not re.fullmatch(re.escape(ext.name) + r'-[0-9a-f]{16}', folder.name):
            continue
        record = folder / _SIGNATURE
        try:
            # no record: built before records existed, or for an environment this process cannot vouch for
            if record.read_text() != signature or record.stat().st_mtime > built - _STALE_AFTER_S:
                continue
            with open(folder / 'build.flock', 'a') as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a process is building (or rebuilding) there
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue  # removed meanwhile, or not ours to remove
        _log.info('hiervit: removed the stale build folder %s', folder)


def _library(ext: CppExtension) -> Path:
    return _cache_dir(ext) / f'{ext.name}.so'


def _missing_tools() -> Optional[str]:
    cxx = os.environ.get('CXX', 'c++')
    if shutil.which(cxx) is None and shutil.which('g++') is None:
        return f'no C++ compiler found ({cxx!r} and g++ are not on PATH)'
    if shutil.which('ninja') is None:
        return 'ninja is not installed (pip install ninja), torch.utils.cpp_extension needs it to build'
    return None


def _probe(ext: CppExtension) -> Optional[str]:
    """Why the extension cannot be used here, without building it (cheap)."""
    if _library(ext).exists():
        return None
    failed = _cache_dir(ext) / 'build_failed.txt'
    if failed.exists():
        return f'its build failed on this machine (log: {failed}; delete that folder to retry)'
    return _missing_tools()


def load(ext: CppExtension) -> None:
    """Build (once per machine) and load the extension's library; raises RuntimeError saying why not."""
    if ext._state == '':
        return
    reason = _probe(ext)
    if reason is not None:
        ext._state = reason
        raise RuntimeError(f'hiervit C++ extension {ext.name!r} is unavailable: {reason}')
    folder = _cache_dir(ext)
    lib = _library(ext)
    if not lib.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / 'build.flock', 'w') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not lib.exists():
                    _build(ext, folder)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    try:
        torch.ops.load_library(str(lib))
    except OSError as e:  # built but unloadable (a truncated file, a missing symbol): refuse, do not crash the caller
        ext._state = f'its library {lib} failed to load ({e}; delete that folder to rebuild)'
        raise RuntimeError(f'hiervit C++ extension {ext.name!r} is unavailable: {ext._state}') from e
    ext._state = ''


def _build(ext: CppExtension, folder: Path) -> None:
    from torch.utils import cpp_extension
    _log.warning('hiervit: building the C++ extension %s for this machine into %s (once; about a minute)', ext.name,
                 folder)
    # torch's own lock file is left behind by a build that was killed; the flock above makes it safe to remove.
    stale = folder / 'lock'
    if stale.exists():
        stale.unlink()
    try:
        cpp_extension.load(
            name=ext.name, sources=[str(p) for p in ext.paths()], extra_cflags=list(_FLAGS),
            extra_ldflags=list(_LDFLAGS), build_directory=str(folder), is_python_module=False, verbose=False)
    except Exception as e:  # the compiler's output is in the exception; keep it for the refusal message
        (folder / 'build_failed.txt').write_text(f'{type(e).__name__}: {e}\n')
        ext._state = f'its build failed (log: {folder / "build_failed.txt"})'
        raise RuntimeError(f'hiervit C++ extension {ext.name!r} failed to build: {e}') from e
    (folder / _SIGNATURE).write_text(_signature())
    _remove_stale_builds(ext, folder)


def status(ext: CppExtension) -> Optional[str]:
    """None if the extension can run here, else the reason. Eagerly builds and loads it on the first call (outside
    torch.compile); inside a trace it reads only the process's state, so tracing never touches files or compiles."""
    if ext._state is not None:
        return ext._state or None
    if torch.compiler.is_compiling():
        return None  # optimistic: the op itself loads (or builds) the library when it first runs
    try:
        load(ext)
    except RuntimeError:
        pass
    return ext._state or None
