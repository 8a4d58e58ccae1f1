"""Checkpoints that survive a crash mid-write, and the state needed to resume a run exactly.

Every file is written to a temporary name in the same folder, flushed to disk and moved into place with `os.replace`,
so a reader (or a resumed run) sees the old file or the new one, never half of one. RNG states are stored as tensors
and plain tuples, so checkpoints load with `torch.load(weights_only=True)`.
"""
import contextlib
import os
import random
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

__all__ = ['atomic_save', 'load_file', 'rng_state', 'set_rng_state', 'CheckpointManager', 'model_state_from_file']


def _atomic_write(path: str, write: Any) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str) -> None:
    """`torch.save` to `path` atomically (temp file in the same folder + fsync + os.replace)."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def _atomic_copy(src: str, dst: str) -> None:
    with open(src, 'rb') as fsrc:
        _atomic_write(dst, lambda f: shutil.copyfileobj(fsrc, f))


def load_file(path: str) -> Dict[str, Any]:
    """Load a checkpoint on the CPU (weights only: no arbitrary pickles)."""
    if not os.path.isfile(path):
        raise ValueError(f'checkpoint {path} does not exist')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise ValueError(f'cannot load checkpoint {path}: {e}') from e


def rng_state() -> Dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states in weights_only-loadable form."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy': (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def model_state_from_file(checkpoint: Dict[str, Any], use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """The model weights of a hiervit/timm checkpoint dict (EMA weights with `use_ema`), `module.` prefixes removed."""
    if use_ema:
        for key in ('state_dict_ema', 'model_ema'):
            if key in checkpoint:
                state = checkpoint[key]
                break
        else:
            raise ValueError('--use-ema: the checkpoint holds no EMA weights (train with --model-ema)')
    else:
        state = checkpoint.get('state_dict', checkpoint.get('model', checkpoint))
    return {k[7:] if k.startswith('module.') else k: v for k, v in state.items()}


class CheckpointManager:
    """Writes `last.pth.tar`, `model_best.pth.tar` and the best `max_history` epoch checkpoints of a run."""

    def __init__(self, output_dir: str, max_history: int = 10, decreasing: bool = False):
        self.output_dir = output_dir
        self.max_history = max_history
        self.decreasing = decreasing
        self.history: List[Tuple[float, int]] = []  # (metric, epoch) of the epoch files on disk, best first
        self.best: Optional[Tuple[float, int]] = None
        self.last_path = os.path.join(output_dir, 'last.pth.tar')
        self.best_path = os.path.join(output_dir, 'model_best.pth.tar')

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.decreasing else a > b

    def state_dict(self) -> Dict[str, Any]:
        return {'history': [list(h) for h in self.history], 'best': list(self.best) if self.best else None}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.history = [tuple(h) for h in state['history']]
        self.best = tuple(state['best']) if state['best'] else None

    def save_last(self, checkpoint: Dict[str, Any]) -> str:
        """Write the resumable checkpoint (also used mid-epoch when a run is stopped)."""
        checkpoint['checkpoint_manager'] = self.state_dict()
        atomic_save(checkpoint, self.last_path)
        return self.last_path

    def save_epoch(self, checkpoint: Dict[str, Any], epoch: int, metric: Optional[float]) -> None:
        """End of an epoch: update the history and best, then write last, the epoch file and best."""
        new_best = metric is not None and (self.best is None or self._better(metric, self.best[0]))
        if new_best:
            self.best = (metric, epoch)
        keep_epoch = self.max_history > 0 and metric is not None
        removed = []
        if keep_epoch:
            self.history.append((metric, epoch))
            self.history.sort(key=lambda h: h[0], reverse=not self.decreasing)
            removed, self.history = self.history[self.max_history:], self.history[:self.max_history]
        checkpoint['metric'] = metric
        self.save_last(checkpoint)
        if keep_epoch and all(e != epoch for _, e in removed):
            _atomic_copy(self.last_path, os.path.join(self.output_dir, f'checkpoint-{epoch}.pth.tar'))
        if new_best:
            _atomic_copy(self.last_path, self.best_path)
        for _, old_epoch in removed:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.output_dir, f'checkpoint-{old_epoch}.pth.tar'))
