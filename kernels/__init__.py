"""Shared attention ops. Each op lives in its own sub-package with `reference`, `cpu` and `triton` backends behind
one dispatcher; import the public functions from here or from the op's package."""
from . import _sdpa_flops  # noqa: F401  (counts torch's CPU SDPA kernel in FlopCounterMode)
from ._dispatch import BackendError
