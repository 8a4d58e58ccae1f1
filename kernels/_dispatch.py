"""Backend selection shared by every op in `hiervit.kernels`.

Each op owns one `Dispatcher` (made by its `_op.KernelOp`). A backend declares, per call, either that it can run the
call or *why* it cannot (device, dtype, shape, missing package, autograd). Selection order (inside the op):

1. the op's `backend=` argument,
2. the environment: `HIERVIT_<OP>_BACKEND` (e.g. `HIERVIT_NEIGHBORHOOD_BACKEND=reference`), then `HIERVIT_BACKEND`;
   an environment value naming a backend that some other op has but this one lacks (`HIERVIT_BACKEND=cpp`, or
   `HIERVIT_WINDOW_BACKEND=cpp` for the window op's context mode) does not apply to this op, which goes on to the next
   source; a value no op knows is an error,
3. the first backend in the op's preference order that accepts the call.

An explicitly requested backend that refuses the call raises `BackendError` with its reason and the list of backends
that would accept it, instead of silently running something else.
"""
import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ['BackendError', 'Backend', 'Dispatcher', 'module_available']

AUTO = ('auto', '', None)


class BackendError(RuntimeError):
    """A requested backend cannot run this call; the message says why and what can."""


def module_available(name: str) -> bool:
    """True if `name` can be imported (checked without importing heavy GPU state where possible)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class Backend:
    """One implementation of an op, as the dispatcher sees it.

    The dispatcher only chooses a name; the op's custom op (`_op.KernelOp`) selects inside itself and imports the
    chosen module there, so selection imports nothing and a model's graph holds one op call whatever backend runs.

    Args:
        name: Short public name (`reference`, `cpu`, `triton`, ...).
        check: Called with the op's problem description; returns None when the backend can run it, else the reason.
        module: Import path of the module implementing it (imported lazily, on the first call it runs).
        forward: Name of the module's forward function.
        backward: Name of the module's backward function (None: forward only).
        in_op: False for a backend that must run outside the custom op (one that records its own autograd graph);
            the op's public function calls it directly.
    """
    name: str
    check: Callable[[Any], Optional[str]]
    module: str = ''
    forward: str = 'forward'
    backward: Optional[str] = 'backward'
    in_op: bool = True


# every backend name of every dispatcher made so far: tells an environment value meant for other ops from a typo
_KNOWN_NAMES: set = set()


class Dispatcher:
    """Picks a backend for each call of one op."""

    def __init__(self, op: str, backends: Sequence[Backend]):
        self.op = op
        self.backends: Dict[str, Backend] = {b.name: b for b in backends}
        _KNOWN_NAMES.update(self.backends)

    @property
    def names(self) -> List[str]:
        return list(self.backends)

    def requested(self, backend: Optional[str] = None) -> Tuple[Optional[str], str]:
        """The backend asked for by argument or environment, and where the request came from."""
        if backend not in AUTO:
            return backend, 'backend='
        env_op = f'HIERVIT_{self.op.upper()}_BACKEND'
        for var in (env_op, 'HIERVIT_BACKEND'):
            value = os.environ.get(var, '').strip()
            if value and value != 'auto':
                if value not in self.backends and value in _KNOWN_NAMES:
                    continue  # meant for the ops that have this backend
                return value, var
        return None, ''

    def explain(self, problem: Any) -> Dict[str, Optional[str]]:
        """Map every backend name to None (accepts the call) or the reason it refuses."""
        return {name: b.check(problem) for name, b in self.backends.items()}

    def select(self, problem: Any, backend: Optional[str] = None) -> str:
        """Name of the backend that runs this call (see the module docstring for the order)."""
        name, source = self.requested(backend)
        if name is not None:
            if name not in self.backends:
                raise BackendError(
                    f'{self.op}: unknown backend {name!r} (from {source}); choose one of {self.names} or "auto".')
            reason = self.backends[name].check(problem)
            if reason is not None:
                ok = [n for n, r in self.explain(problem).items() if r is None]
                raise BackendError(
                    f'{self.op}: backend {name!r} (from {source}) cannot run this call: {reason}. '
                    f'Backends that can: {ok}.')
            return name
        reasons = []
        for b in self.backends.values():
            reason = b.check(problem)
            if reason is None:
                return b.name
            reasons.append(f'{b.name}: {reason}')
        raise BackendError(f'{self.op}: no backend can run this call ({"; ".join(reasons)}).')
