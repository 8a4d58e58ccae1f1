"""Checkpoints that survive a crash mid-write, the state needed to resume a run exactly, and weight loading.

Every file is written to a temporary name in the same folder, flushed to disk and moved into place with `os.replace`,
so a reader (or a resumed run) sees the old file or the new one, never half of one. RNG states are stored as tensors
and plain tuples and args as a dict, so our own checkpoints load with `torch.load(weights_only=True)`
(`load_resume_state`).

Model weights from other trainers are picked out of a checkpoint as timm's `load_state_dict` picks them
(`weights_of`, `load_weights`): `.safetensors`, EMA keys (`state_dict_ema` / `model_ema`), `state_dict` / `model`
wrappers and `module.` / `_orig_mod.` prefixes, from a checkpoint read once (`read_checkpoint`). Checkpoints of timm's
`CheckpointSaver`, DeiT/BiFormer `main.py` and NAT's `train.py` store `args` as an `argparse.Namespace`, which is
allowed in the safe (weights-only) unpickler; a file needing any other class is unpickled in full, with a warning, as
timm's train.py does for local checkpoints. Official key layouts are converted by the model itself on
`load_state_dict` (its family's `checkpoint_filter_fn`, `hiervit.backbones._pretrained.convert_official_on_load`).
"""
import argparse
import contextlib
import csv
import logging
import os
import pickle
import random
import re
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from timm.models import clean_state_dict

__all__ = ['atomic_save', 'load_resume_state', 'read_checkpoint', 'weights_of', 'load_weights', 'rng_state',
           'set_rng_state', 'CheckpointManager', 'trim_summary', 'has_ema', 'RESUME_KEYS']

_logger = logging.getLogger('hiervit.train')

# the keys that make a file a hiervit-train resume state (anything else is foreign: weights only)
RESUME_KEYS = ('resume_epoch', 'resume_batch', 'num_updates', 'state_dict', 'optimizer', 'rng')


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


def _check_exists(path: str, flag: str) -> None:
    if not os.path.isfile(path):
        raise ValueError(f'{flag} {path}: no such file')


def _refused(e: Exception) -> bool:
    """The weights-only unpickler refused a class (timm >= 1.0.31 re-raises this as a RuntimeError)."""
    return isinstance(e, pickle.UnpicklingError) or 'weights_only' in str(e) or 'Weights only' in str(e)


def _with_fallback(load: Callable[[bool], Any], path: str, flag: str) -> Any:
    """Run `load(weights_only)` safely first (argparse.Namespace allowed), in full only if that is refused."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return load(True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        if not _refused(e):
            raise ValueError(f'{flag} {path}: cannot load this checkpoint ({e})') from e
        classes = sorted(set(re.findall(r'GLOBAL ([\w.]+)', str(e)))) or ['unknown']
        _logger.warning(f'{flag} {path} pickles {", ".join(classes)}, which the weights-only unpickler refuses; '
                        f'unpickling it in full: load only checkpoints you trust')
    try:
        return load(False)
    except Exception as e:
        raise ValueError(f'{flag} {path}: cannot load this checkpoint ({e})') from e


def load_resume_state(path: str, flag: str = '--resume') -> Optional[Dict[str, Any]]:
    """A hiervit-train resume state loaded weights-only, or None when `path` is some other checkpoint."""
    _check_exists(path, flag)
    if path.endswith('.safetensors'):
        return None
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:  # pickles other objects (e.g. an argparse.Namespace): not ours
        return None
    except Exception as e:
        raise ValueError(f'{flag} {path}: cannot load this checkpoint ({e})') from e
    if not isinstance(state, dict) or not all(k in state for k in RESUME_KEYS):
        return None
    return state


def read_checkpoint(path: str, flag: str) -> Any:
    """The whole object in a checkpoint file (a dict of tensors for `.safetensors`)."""
    _check_exists(path, flag)
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file  # a timm dependency
        return load_file(path, device='cpu')
    return _with_fallback(lambda weights_only: torch.load(path, map_location='cpu', weights_only=weights_only),
                          path, flag)


def has_ema(checkpoint: Any) -> bool:
    return isinstance(checkpoint, dict) and any(checkpoint.get(k) is not None for k in ('state_dict_ema', 'model_ema'))


def weights_of(checkpoint: Any, use_ema: bool, path: str, flag: str) -> Dict[str, torch.Tensor]:
    """The model weights in a `read_checkpoint` result, chosen as timm's `load_state_dict` chooses them (EMA weights
    first with `use_ema`, then `state_dict`, then `model`, else the whole dict), wrapper prefixes removed."""
    if not isinstance(checkpoint, dict):
        raise ValueError(f'{flag} {path} holds a {type(checkpoint).__name__}, not a state dict or a checkpoint dict')
    for key in (('state_dict_ema', 'model_ema') if use_ema else ()) + ('state_dict', 'model'):
        if checkpoint.get(key) is not None:
            return clean_state_dict(checkpoint[key])
    return clean_state_dict(checkpoint)


def load_weights(path: str, flag: str, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """Model weights of any timm-style checkpoint file (EMA weights with `use_ema`)."""
    return weights_of(read_checkpoint(path, flag), use_ema, path, flag)


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


def trim_summary(path: str, start_epoch: int) -> None:
    """Drop the rows of epochs >= `start_epoch` from a summary CSV (they are about to be trained again)."""
    if not os.path.exists(path):
        return
    with open(path, newline='') as f:
        rows = list(csv.reader(f))
    keep = [r for r in rows[1:] if r and int(float(r[0])) < start_epoch]
    if len(keep) == len(rows) - 1:
        return
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        if keep:
            writer.writerows([rows[0], *keep])


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
