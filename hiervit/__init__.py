"""hiervit: hierarchical vision transformers on efficient attention, registered with timm.

`import hiervit` registers every model with timm, so `timm.create_model('nat_tiny')` works afterwards.
"""
__version__ = '0.1.0'

from . import backbones  # noqa: F401  (registers the models with timm)
from .backbones import list_hiervit_models
