"""Shared attention ops. Each op lives in its own sub-package with `reference`, `cpu` and `triton` backends behind
one dispatcher; import the public functions from here or from the op's package."""
from ._dispatch import BackendError
