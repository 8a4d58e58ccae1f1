"""Imports from timm that are not part of its public re-exports, kept in one place."""
try:
    from timm.models._features import feature_take_indices
except ImportError:  # pragma: no cover - moved in some future timm
    from timm.models import feature_take_indices  # type: ignore

__all__ = ['feature_take_indices']
