"""Every bundled recipe loads, names a registered model and uses only known flag dests; every model has a recipe."""
import glob
import os

import pytest
import timm
import torch

import hiervit
from hiervit.train.args import build_train_parser, load_recipe, parse_with_config

CONFIG_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
CLASSIFICATION = sorted(glob.glob(os.path.join(CONFIG_ROOT, 'classification', '*.yaml')))
DEMO = sorted(glob.glob(os.path.join(CONFIG_ROOT, 'demo', '*.yaml')))


@pytest.mark.parametrize('path', CLASSIFICATION + DEMO, ids=os.path.basename)
def test_recipe_loads(path):
    cfg = load_recipe(path, build_train_parser())  # raises on a key that is not a flag dest
    assert cfg['model'] in hiervit.list_hiervit_models(), f'{path} names an unregistered model {cfg["model"]!r}'
    args, _ = parse_with_config(build_train_parser(), ['-c', path])
    for key, value in cfg.items():
        assert getattr(args, key) == value, key
    if args.model_kwargs:  # the kwargs are accepted by the model (built on the meta device: no weights allocated)
        with torch.device('meta'):
            timm.create_model(args.model, **args.model_kwargs)


def test_classification_recipe_names_match_models():
    for path in CLASSIFICATION:
        name = os.path.splitext(os.path.basename(path))[0]
        assert load_recipe(path, build_train_parser())['model'] == name, path


def test_every_registered_model_has_a_recipe():
    have = {os.path.splitext(os.path.basename(p))[0] for p in CLASSIFICATION}
    missing = sorted(set(hiervit.list_hiervit_models()) - have)
    assert not missing, f'add configs/classification/<model>.yaml for {missing}'
