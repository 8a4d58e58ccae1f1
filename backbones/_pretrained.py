"""Pretrained-weight plumbing shared by the families (not a family file: nothing here is registered).

* `fetch_pretrained`: the download behind `pretrained=True`, with one cache file name per weight file (released URLs
  that end alike, e.g. OneDrive's `.../root/content`, would otherwise share one cache entry) and an error that names the
  wanted file and the local-copy call when the download fails (offline machines, moved servers);
* `convert_official_on_load`: a `load_state_dict` pre-hook that runs the family's `checkpoint_filter_fn` on official
  key layouts, so `timm.create_model(name, checkpoint_path=<official file>)` (which skips the filter) loads them too;
* `check_checkpoint_keys`: the error a `checkpoint_filter_fn` raises when a converted state dict does not fit;
* `build_with_official_layouts`: `build_model_with_cfg` with both, the one way the families build, so the filter is
  the only conversion of official layouts (timm runs it on `pretrained=True` weights, the hook on every other
  `load_state_dict`: `checkpoint_path=`, hiervit-train/validate, the mm adapter's model).
"""
import os
from typing import Any, Callable, Dict, Optional, Tuple, Union
from urllib.parse import urlparse

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, get_pretrained_cfg, resolve_pretrained_cfg
from timm.models._hub import download_cached_file, get_cache_dir

from hiervit.backbones._compat import FeatureGetterNet

__all__ = ['cache_file_name', 'fetch_pretrained', 'prefetch_pretrained', 'check_checkpoint_keys', 'model_description',
           'convert_official_on_load', 'build_with_official_layouts']

Url = Union[str, Tuple[str, str]]
FilterFn = Callable[[Dict[str, Any], nn.Module], Dict[str, torch.Tensor]]


def cache_file_name(url: Url) -> str:
    """The cache file name of a pretrained cfg `url`: the given name of a `(url, file_name)` pair, else the basename."""
    if isinstance(url, (tuple, list)):
        return url[1]
    return os.path.basename(urlparse(url).path)


def registered_file_name(url: str) -> Optional[str]:
    """The cache file name a registered hiervit pretrained cfg gives `url` (None when no cfg names that URL)."""
    import timm  # the registry is filled once hiervit.backbones is imported
    from hiervit.backbones import HIERVIT_MODULES
    for module in HIERVIT_MODULES:
        for name in timm.list_models(module=module, pretrained=True):
            cfg_url = get_pretrained_cfg(name).url
            if isinstance(cfg_url, (tuple, list)) and cfg_url[0] == url:
                return cfg_url[1]
    return None


def fetch_pretrained(url: Url, what: str, local_hint: str) -> str:
    """Download `url` into timm's cache (once) and return the local path, or raise a RuntimeError naming the file.

    Args:
        url: A URL or a `(url, cache_file_name)` pair.
        what: What the file is, for the message (e.g. "nat_mini.shi_in1k weights").
        local_hint: How to use a local copy instead, for the message.
    """
    file_name = cache_file_name(url)
    target = os.path.join(get_cache_dir(), file_name)
    try:
        return download_cached_file(url if isinstance(url, str) else (url[0], file_name))
    except (OSError, RuntimeError, ValueError) as e:  # URLError/HTTPError are OSErrors
        source = url if isinstance(url, str) else url[0]
        raise RuntimeError(
            f'Could not download the {what} from {source} into {target} ({type(e).__name__}: {e}). Download the file '
            f'on a machine with access (or copy it to {target}), then {local_hint}.') from e


def prefetch_pretrained(variant: str, pretrained: bool, kwargs: Dict[str, Any]) -> None:
    """Before `build_model_with_cfg`: turn a URL weight source into a local `file` overlay (see module docstring).

    Leaves `kwargs` alone unless `pretrained` and the resolved cfg would load from its URL (no `file`/`state_dict`).
    """
    if not pretrained:
        return
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                 pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    if cfg.file or cfg.state_dict or cfg.hf_hub_id or not cfg.url:
        return
    name = f'{cfg.architecture}.{cfg.tag}' if cfg.tag else cfg.architecture
    hint = (f"load it with timm.create_model('{name}', pretrained=True, "
            f"pretrained_cfg_overlay=dict(file='/path/to/{cache_file_name(cfg.url)}'))")
    path = fetch_pretrained(cfg.url, f'{name} weights', hint)
    kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, file=path)


def check_checkpoint_keys(
        state_dict: Dict[str, Any],
        target: Dict[str, Any],
        family: str,
        adaptable: Tuple[str, ...] = ('head.fc.',),
        reshapable: Tuple[str, ...] = (),
        norms_arg: Optional[str] = None,
        variants: str = '',
) -> None:
    """Raise a ValueError listing the missing, unexpected and mis-shaped keys of a converted `state_dict` against the
    model's `target` state dict.

    Args:
        family: Names the model in the message (e.g. "NAT (nat_tiny)").
        adaptable: Key prefixes exempt from all checks (the classifier: timm drops or adapts it later).
        reshapable: Keys exempt from the shape check only (the first conv: timm adapts it to `in_chans` later).
        norms_arg: The constructor argument that adds the per-output norms: unexpected `out_norms.*` keys (a dense-task
            checkpoint into a model without them) name it as the fix; None where no such argument exists.
        variants: A sentence for the message saying how the family's variants differ (or what the checkpoint looks
            like), so a checkpoint of another variant points at the right one.
    """
    missing = [k for k in target if k not in state_dict and not k.startswith(adaptable)]
    unexpected = [k for k in state_dict if k not in target and not k.startswith(adaptable)]
    mis_shaped = [
        f'{k} {tuple(v.shape)} vs model {tuple(target[k].shape)}' for k, v in state_dict.items()
        if k in target and not k.startswith(adaptable) and k not in reshapable and v.shape != target[k].shape
    ]
    if missing or unexpected or mis_shaped:
        msg = [f'{len(keys)} {name} (first: {", ".join(keys[:5])})'
               for name, keys in (('missing', missing), ('unexpected', unexpected), ('mis-shaped', mis_shaped)) if keys]
        hint = f' Dense-task checkpoints need {norms_arg}=True.' \
            if norms_arg and any(k.startswith('out_norms.') for k in unexpected) else ''
        raise ValueError(f'Checkpoint does not fit this {family}: {"; ".join(msg)}.{hint}'
                         f'{" " + variants if variants else ""}')


def model_description(model: nn.Module, family: str) -> str:
    """`family (architecture)` of a model for `check_checkpoint_keys` messages ("custom config" without a cfg)."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return f'{family} ({cfg.get("architecture", "custom config")})'


def convert_official_on_load(model: nn.Module, filter_fn: FilterFn) -> nn.Module:
    """Register a `load_state_dict` pre-hook on `model` that converts official key layouts with `filter_fn`.

    State dicts whose keys (under the module's prefix) all exist in `model` load untouched; anything else goes through
    `filter_fn(state_dict, model)`, which converts the official layouts and raises a ValueError naming the keys that do
    not fit (as does a converted classifier with another class count). `timm.load_checkpoint` (behind
    `create_model(checkpoint_path=...)`) calls no filter itself.
    """

    def hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        own = [k for k in state_dict if k.startswith(prefix)]
        target = module.state_dict(keep_vars=True)
        if not own or all(k[len(prefix):] in target for k in own):
            return
        converted = filter_fn({k[len(prefix):]: state_dict[k] for k in own}, module)
        classifier = (getattr(module, 'pretrained_cfg', None) or {}).get('classifier')
        key = f'{classifier}.weight'
        if isinstance(classifier, str) and key in converted and key in target \
                and converted[key].shape[0] != target[key].shape[0]:
            # the filters keep the classifier as it is; load_state_dict would only report a size mismatch
            n = converted[key].shape[0]
            raise ValueError(
                f'The checkpoint\'s classifier {classifier} has {n} classes, the model {target[key].shape[0]}: create '
                f'the model with num_classes={n}, or load the file as pretrained weights (pretrained=True, '
                f'pretrained_cfg_overlay=dict(file=...)), which start a fresh classifier.')
        for k in own:
            del state_dict[k]
        state_dict.update({prefix + k: v for k, v in converted.items()})

    # features_only models wrap the family model (FeatureGetterNet keeps it as `.model`)
    (model.model if isinstance(model, FeatureGetterNet) else model).register_load_state_dict_pre_hook(hook)
    return model


def build_with_official_layouts(
        model_cls: Callable[..., nn.Module],
        variant: str,
        pretrained: bool,
        filter_fn: FilterFn,
        **kwargs,
) -> nn.Module:
    """`build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=filter_fn, **kwargs)` after
    `prefetch_pretrained`, with `filter_fn` also converting official layouts on `load_state_dict` (see the module
    docstring)."""
    prefetch_pretrained(variant, pretrained, kwargs)
    model = build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=filter_fn, **kwargs)
    return convert_official_on_load(model, filter_fn)
