"""Imports from timm that are not part of its public re-exports, kept in one place."""
try:
    from timm.models._features import FeatureGetterNet, feature_take_indices
except ImportError:  # pragma: no cover - moved in some future timm
    from timm.models import FeatureGetterNet, feature_take_indices  # type: ignore

__all__ = ['FeatureGetterNet', 'feature_take_indices']
