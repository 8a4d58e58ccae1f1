"""The timm floor in pyproject.toml is one that works: it has every timm name hiervit imports, and hiervit trains on it.

`FIRST_RELEASE` records, for each timm name (and keyword) hiervit uses, the first timm release that has it. It was
found by installing each release 0.9.16, 1.0.3, 1.0.7 ... 1.0.21 with `pip install --no-deps --target` and importing
the name; '0.9.16' means "0.9.16 or earlier" (older releases were not checked). A new `from timm... import` anywhere
in hiervit fails `test_every_timm_import_has_a_first_release` until its entry is added here.
"""
import ast
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_DIRS = ('backbones', 'kernels', 'hiervit', 'train')

FIRST_RELEASE = {
    'timm.data.IMAGENET_DEFAULT_MEAN': '0.9.16',
    'timm.data.IMAGENET_DEFAULT_STD': '0.9.16',
    'timm.data.Mixup': '0.9.16',
    'timm.data.create_dataset': '0.9.16',
    'timm.data.create_transform': '0.9.16',
    'timm.data.resolve_data_config': '0.9.16',
    'timm.layers.ClassifierHead': '0.9.16',
    'timm.layers.ConvNormAct': '0.9.16',
    'timm.layers.DropPath': '0.9.16',
    'timm.layers.LayerNorm2d': '0.9.16',
    'timm.layers.Mlp': '0.9.16',
    'timm.layers.PatchEmbed': '0.9.16',  # output_fmt, strict_img_size, dynamic_img_pad: 0.9.16 has them
    'timm.layers.calculate_drop_path_rates': '1.0.21',
    'timm.layers.resample_abs_pos_embed': '0.9.16',
    'timm.layers.resize_rel_pos_bias_table': '0.9.16',
    'timm.layers.register_notrace_function': '1.0.17',
    'timm.layers.trunc_normal_': '0.9.16',
    'timm.layers.to_2tuple': '0.9.16',
    'timm.loss.LabelSmoothingCrossEntropy': '0.9.16',
    'timm.loss.SoftTargetCrossEntropy': '0.9.16',
    'timm.models._features.feature_take_indices': '1.0.3',
    'timm.models._features.FeatureGetterNet': '1.0.3',
    # re-exported by timm.models only after 1.0.21; backbones/_compat.py imports them from timm.models._features first
    'timm.models.feature_take_indices': None,
    'timm.models.FeatureGetterNet': None,
    'timm.models._hub.download_cached_file': '0.9.16',
    'timm.models._hub.get_cache_dir': '0.9.16',
    'timm.models.get_pretrained_cfg': '0.9.16',
    'timm.models.resolve_pretrained_cfg': '0.9.16',
    'timm.models.build_model_with_cfg': '0.9.16',
    'timm.models.checkpoint_seq': '0.9.16',
    'timm.models.clean_state_dict': '0.9.16',
    'timm.models.generate_default_cfgs': '0.9.16',
    'timm.models.get_pretrained_cfg_value': '0.9.16',
    'timm.models.group_parameters': '0.9.16',
    'timm.models.load_state_dict': '0.9.16',
    'timm.models.register_model': '0.9.16',
    'timm.models.register_notrace_function': '0.9.16',
    'timm.models.register_notrace_module': '0.9.16',
    'timm.models.pvt_v2.MlpWithDepthwiseConv': '0.9.16',
    'timm.models.swin_transformer.PatchMerging': '0.9.16',
    'timm.models.swin_transformer.SwinTransformerBlock': '0.9.16',
    'timm.models.swin_transformer.get_relative_position_index': '0.9.16',
    'timm.models.swin_transformer.window_partition': '0.9.16',
    'timm.models.swin_transformer.window_reverse': '0.9.16',
    'timm.models.davit.checkpoint_filter_fn': '0.9.16',
    'timm.optim.create_optimizer_v2': '0.9.16',
    'timm.optim.optimizer_kwargs': '0.9.16',
    'timm.optim.param_groups_weight_decay': '1.0.12',
    'timm.scheduler.create_scheduler_v2': '0.9.16',
    'timm.scheduler.scheduler_kwargs': '0.9.16',
    'timm.utils.AverageMeter': '0.9.16',
    'timm.utils.ModelEmaV3': '0.9.16',
    'timm.utils.ParseKwargs': '0.9.16',
    'timm.utils.accuracy': '0.9.16',
    'timm.utils.dispatch_clip_grad': '0.9.16',
    'timm.utils.distribute_bn': '0.9.16',
    'timm.utils.random_seed': '0.9.16',
    'timm.utils.setup_default_logging': '0.9.16',
    'timm.utils.update_summary': '0.9.16',
    # keywords hiervit passes
    'timm.models.load_state_dict(weights_only=)': '1.0.9',
    'timm.optim.create_optimizer_v2(param_group_fn=)': '0.9.16',
    'timm.utils.update_summary(lr=)': '0.9.16',
}


def _version(text):
    return tuple(int(p) for p in text.split('.'))


def declared_floor():
    with open(os.path.join(ROOT, 'pyproject.toml')) as f:
        match = re.search(r'"timm>=([0-9.]+)', f.read())
    assert match, 'pyproject.toml must declare timm>=X'
    return match[1]


def timm_imports():
    """`module.name` of every `from timm... import name` in hiervit's sources."""
    names = set()
    for folder in SOURCE_DIRS:
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for file in files:
                if not file.endswith('.py'):
                    continue
                with open(os.path.join(base, file)) as f:
                    tree = ast.parse(f.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.ImportFrom) and node.module and node.module.split('.')[0] == 'timm':
                        names.update(f'{node.module}.{a.name}' for a in node.names)
    return names


def test_every_timm_import_has_a_first_release():
    missing = sorted(timm_imports() - set(FIRST_RELEASE))
    assert not missing, (f'add the first timm release that has {missing} to FIRST_RELEASE in {__file__} '
                         f'(pip install --no-deps --target DIR timm==X, then import it) and raise the floor if needed')


def test_declared_floor_has_every_name():
    floor = declared_floor()
    needed = {k: v for k, v in FIRST_RELEASE.items() if v is not None}
    newest = max(needed.values(), key=_version)
    assert _version(floor) >= _version(newest), (
        f'pyproject.toml declares timm>={floor}, but {[k for k, v in needed.items() if v == newest]} first appear in '
        f'timm {newest}')


_PROBE = r'''
import os, sys, numpy as np, timm
from PIL import Image
assert timm.__version__ == sys.argv[1], (timm.__version__, timm.__file__)
import hiervit, torch
families = {}
for name in sorted(hiervit.list_hiervit_models()):
    families.setdefault(name.split('_')[0], name)
with torch.device('meta'):  # one model of every family builds against this timm
    for name in families.values():
        timm.create_model(name)
from hiervit.train.train import train
from hiervit.train.validate import validate
root = sys.argv[2]
rng = np.random.default_rng(0)
for split in ('train', 'validation'):
    for c in range(2):
        os.makedirs(os.path.join(root, split, str(c)))
        for i in range(4):
            pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, split, str(c), f'{i}.png'))
run = train(['--model', 'nat_mini', '--model-kwargs', 'embed_dim=8', 'depths=(1,1,1,1)', 'num_heads=(1,1,1,1)',
             'kernel_size=3', '--data-dir', root, '--output', os.path.join(root, 'out'), '--img-size', '32', '-b', '4',
             '--workers', '0', '--epochs', '1', '--opt', 'adamw', '--lr', '1e-3', '--model-ema', '--no-log-tb',
             '--mixup', '0.8', '--aa', 'rand-m9-mstd0.5-inc1', '--no-model-wd-exempt'])
validate(['--checkpoint', os.path.join(run['output_dir'], 'last.pth.tar'), '--data-dir', root, '--workers', '0'])
print('FLOOR OK', timm.__version__)
'''


def test_floor_installs_and_trains(tmp_path):
    """Install the declared floor beside the environment's timm, build a model of every family on it (meta device)
    and train + validate a tiny one."""
    floor = declared_floor()
    target = tmp_path / 'site'
    pip = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--target', str(target),
                          f'timm=={floor}'], capture_output=True, text=True, timeout=300)
    if pip.returncode != 0 and re.search(r'(?i)connection|network|resolve host|No matching distribution', pip.stderr):
        pytest.skip(f'PyPI is unreachable: {pip.stderr.strip().splitlines()[-1]}')
    assert pip.returncode == 0, pip.stderr[-2000:]
    data = tmp_path / 'data'
    env = {**os.environ, 'PYTHONPATH': str(target), 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run([sys.executable, '-c', _PROBE, floor, str(data)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0 and 'FLOOR OK' in proc.stdout, (proc.stdout + proc.stderr)[-3000:]
