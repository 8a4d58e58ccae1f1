"""Model families. Importing this package registers every family's entrypoints with timm."""
from typing import List

import timm

# One import per family file; each registers its `@register_model` entrypoints on import.
from . import biformer  # noqa: F401
from . import cswin  # noqa: F401
from . import dinats  # noqa: F401
from . import flatten  # noqa: F401
from . import inline  # noqa: F401
from . import inline_deit  # noqa: F401
from . import l2vit  # noqa: F401
from . import nat  # noqa: F401
from . import s2aformer  # noqa: F401
from . import swin_vsa  # noqa: F401
from . import vitae_vsa  # noqa: F401

HIERVIT_MODULES = (
    'biformer', 'cswin', 'dinats', 'flatten', 'inline', 'inline_deit', 'l2vit', 'nat', 's2aformer', 'swin_vsa',
    'vitae_vsa')


def list_hiervit_models(pattern: str = '', pretrained: bool = False) -> List[str]:
    """Names of the models hiervit registers with timm (optionally filtered like `timm.list_models`)."""
    names = []
    for module in HIERVIT_MODULES:
        names += timm.list_models(pattern or '*', module=module, pretrained=pretrained)
    return sorted(set(names))
