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
    # hiervit's models, or timm's own families that hiervit ships recipes for (DaViT)
    assert cfg['model'] in timm.list_models(), f'{path} names an unregistered model {cfg["model"]!r}'
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


# dingmyu/davit: the README's training command (8 GPUs x 128, --lr 1e-3, --clip-grad 1.0, --native-amp) and the
# defaults of its train.py (the rest).
DAVIT_OFFICIAL = dict(
    batch_size=128, lr_base=1e-3, lr_base_size=1024, clip_grad=1.0, amp=True, epochs=300, cooldown_epochs=10,
    opt='adamw', weight_decay=0.05, sched='cosine', warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5,
    aa='rand-m9-mstd0.5-inc1', color_jitter=0.4, mixup=0.8, cutmix=1.0, smoothing=0.1, reprob=0.25, remode='pixel',
    model_ema=False, train_interpolation='bicubic')


@pytest.mark.parametrize('variant', ['tiny', 'small', 'base'])
def test_davit_recipes_follow_the_official_command(variant):
    cfg = load_recipe(os.path.join(CONFIG_ROOT, 'classification', f'davit_{variant}.yaml'), build_train_parser())
    assert {k: cfg.get(k) for k in DAVIT_OFFICIAL} == DAVIT_OFFICIAL
    if variant == 'tiny':
        assert cfg['drop_path'] == 0.1  # train.py's default
