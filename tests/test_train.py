"""hiervit-train / hiervit-validate: the real pipeline on a tiny NAT and tiny images.

Covers recipe loading, a few training steps with mixup + cutmix + RandAugment + random erasing + EMA + bf16 autocast +
grad accumulation, bit-identical resume from a mid-epoch stop, atomic checkpoint writes, 2-process gloo DDP, the
validate CLI and the bad-data errors. The data is a small ImageFolder of odd-sized PNGs written per test module.
"""
import argparse
import csv
import gzip
import importlib.util
import io
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

import hiervit  # noqa: F401  (registers the models)
from hiervit.train import checkpoint as ckpt
from hiervit.train.args import build_train_parser, parse_with_config
from hiervit.train.data import FashionMNIST, ResumableSampler, read_idx
from hiervit.train.train import train
from hiervit.train.validate import validate

TINY_NAT = ['--model', 'nat_mini', '--model-kwargs', 'embed_dim=8', 'depths=(1,1,1,1)', 'num_heads=(1,1,1,1)',
            'kernel_size=3']
NUM_CLASSES = 3


def _load(path):
    """Our own checkpoints load with the safe (weights-only) unpickler."""
    return torch.load(path, map_location='cpu', weights_only=True)


def _write_split(root, split, per_class, rng):
    for c in range(NUM_CLASSES):
        folder = root / split / f'class_{c}'
        folder.mkdir(parents=True)
        for i in range(per_class):
            # odd, non-square sizes; each class has its own mean colour so the task is learnable
            h, w = int(rng.integers(17, 27)), int(rng.integers(19, 31))
            pixels = np.clip(rng.normal(60 + 70 * c, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f'{i}.png')


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('imagefolder')
    rng = np.random.default_rng(0)
    _write_split(root, 'train', 8, rng)
    _write_split(root, 'validation', 3, rng)
    return root


def _base_args(data_dir, out, experiment, *extra):
    return [*TINY_NAT, '--data-dir', str(data_dir), '--output', str(out), '--experiment', experiment,
            '--img-size', '32', '-b', '4', '--workers', '0', '--threads', '1', '--opt', 'adamw', '--lr', '1e-3',
            '--warmup-epochs', '1', '--no-progress', '--no-log-tb', *extra]


# the full regularisation stack of the ImageNet recipes; each piece draws from a different RNG
_RECIPE_AUG = ['--mixup', '0.8', '--cutmix', '1.0', '--aa', 'rand-m9-mstd0.5-inc1', '--reprob', '0.25',
               '--drop-path', '0.1', '--smoothing', '0.1', '--model-ema', '--model-ema-decay', '0.9',
               '--clip-grad', '5.0']


@pytest.fixture(scope='module')
def trained_run(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp('runs')
    result = train(_base_args(image_folder, out, 'pipeline', '--epochs', '2', '--amp', '--amp-dtype', 'bfloat16',
                              '--grad-accum-steps', '2', '--channels-last', '--grad-checkpointing', '--log-tb',
                              *_RECIPE_AUG))
    return result


def test_recipe_keys_are_checked(tmp_path):
    recipe = tmp_path / 'r.yaml'
    recipe.write_text('model: nat_mini\nbatch-size: 32\nlr: 0.001\n')
    with pytest.raises(ValueError, match=r"'batch-size' \(did you mean 'batch_size'\?\)"):
        parse_with_config(build_train_parser(), ['-c', str(recipe)])
    recipe.write_text('model: nat_mini\nbatch_size: 32\ndrop_path: 0.2\nmodel_kwargs: {kernel_size: 5}\n')
    args, _ = parse_with_config(build_train_parser(), ['-c', str(recipe), '--drop-path', '0.3'])
    assert (args.model, args.batch_size, args.drop_path, args.model_kwargs) == ('nat_mini', 32, 0.3, {'kernel_size': 5})


def test_bundled_recipe_by_name():
    args, _ = parse_with_config(build_train_parser(), ['-c', 'nat_tiny'])
    assert args.model == 'nat_tiny' and args.opt == 'adamw'
    with pytest.raises(ValueError, match='--config'):
        parse_with_config(build_train_parser(), ['-c', 'no_such_recipe'])


def test_pipeline_outputs(trained_run):
    out = trained_run['output_dir']
    for name in ('last.pth.tar', 'model_best.pth.tar', 'summary.csv', 'args.yaml', 'checkpoint-0.pth.tar'):
        assert os.path.isfile(os.path.join(out, name)), name
    assert not [f for f in os.listdir(out) if f.endswith('.tmp')]
    state = _load(os.path.join(out, 'last.pth.tar'))
    assert state['resume_epoch'] == 2 and state['resume_batch'] == 0
    assert state['num_updates'] == 2 * 3  # 24 images / batch 4 = 6 batches, 2 per update
    assert 'state_dict_ema' in state and 'scheduler' in state and len(state['rng']) == 1
    ema = state['state_dict_ema']
    assert any(not torch.equal(ema[k], v) for k, v in state['state_dict'].items() if v.is_floating_point())
    with open(os.path.join(out, 'summary.csv')) as f:
        header, *rows = f.read().splitlines()
    assert 'eval_top1' in header and 'eval_ema_top1' in header and len(rows) == 2
    assert np.isfinite(trained_run['metrics']['train']['loss'])
    if importlib.util.find_spec('tensorboard') is not None:
        assert any(f.startswith('events.out.tfevents') for f in os.listdir(os.path.join(out, 'tb')))


def test_validate_matches_training_eval(trained_run, image_folder, capsys):
    out = trained_run['output_dir']
    results = validate(['--checkpoint', os.path.join(out, 'last.pth.tar'), '--data-dir', str(image_folder),
                        '--workers', '0', '-b', '5', '--threads', '1'])
    printed = json.loads(capsys.readouterr().out)
    assert printed['top1'] == results['top1'] and printed['num_images'] == 9
    assert {'top1', 'top5', 'img_per_sec', 'param_count'} <= set(printed)
    # the same weights, split and transforms (taken from the checkpoint's args) as the last in-training evaluation
    eval_top1 = trained_run['metrics']['eval']['top1']
    assert results['top1'] == pytest.approx(eval_top1, abs=1e-3)
    ema = validate(['--checkpoint', os.path.join(out, 'last.pth.tar'), '--data-dir', str(image_folder),
                    '--workers', '0', '--use-ema', '--threads', '1'])
    assert ema['top1'] == pytest.approx(trained_run['metrics']['eval']['ema_top1'], abs=1e-3)


def _weights(path):
    state = _load(path)
    return state['state_dict'], state['state_dict_ema'], state['optimizer']['state']


@pytest.mark.parametrize(
    'accum,sched', [(1, ['--sched-on-updates']), (2, [])], ids=['per-update-lr', 'accum2-epoch-lr'])
def test_resume_mid_epoch_is_bit_identical(image_folder, tmp_path, accum, sched):
    args = ['--epochs', '2', '--grad-accum-steps', str(accum), *sched, *_RECIPE_AUG]
    updates_per_epoch = 6 // accum  # 24 images, batch 4
    full = train(_base_args(image_folder, tmp_path, 'full', *args, '--no-eval'))
    # stop two updates into the second epoch, then resume with a different worker count
    stop_at = updates_per_epoch + 2
    stopped = train(_base_args(image_folder, tmp_path, 'split', *args, '--no-eval', '--stop-after-steps', str(stop_at)))
    assert stopped['stopped'] and stopped['num_updates'] == stop_at
    last = os.path.join(stopped['output_dir'], 'last.pth.tar')
    assert _load(last)['resume_batch'] == 2 * accum
    resumed = train(_base_args(image_folder, tmp_path, 'split', *args, '--no-eval', '--resume', last,
                               '--workers', '1'))
    assert resumed['num_updates'] == full['num_updates'] == 2 * updates_per_epoch
    a = _weights(os.path.join(full['output_dir'], 'last.pth.tar'))
    b = _weights(os.path.join(resumed['output_dir'], 'last.pth.tar'))
    for sa, sb in zip(a[:2], b[:2]):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    for pa, pb in zip(a[2].values(), b[2].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / 'last.pth.tar'
    ckpt.atomic_save({'x': torch.ones(3)}, str(path))

    def broken_save(obj, f):
        f.write(b'partial')
        raise OSError('disk full')

    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'):
        ckpt.atomic_save({'x': torch.zeros(3)}, str(path))
    assert torch.equal(_load(str(path))['x'], torch.ones(3))
    assert os.listdir(tmp_path) == ['last.pth.tar']


def test_rng_state_roundtrip():
    state = ckpt.rng_state()
    a = (np.random.rand(), torch.rand(2), __import__('random').random())
    ckpt.set_rng_state(state)
    b = (np.random.rand(), torch.rand(2), __import__('random').random())
    assert a[0] == b[0] and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_sampler_resume_and_shards():
    full = list(ResumableSampler(23, seed=3))
    sampler = ResumableSampler(23, seed=3)
    sampler.set_epoch(0, start=10)
    assert list(sampler) == full[10:] and len(sampler) == 13
    sampler.set_epoch(1)
    assert [i for i, _ in sampler] != [i for i, _ in full]
    shards = [list(ResumableSampler(23, seed=3, num_replicas=2, rank=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 12
    assert {i for s in shards for i, _ in s} == set(range(23))
    assert len({s for shard in shards for _, s in shard}) == 24  # every position has its own augmentation seed


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


_DDP_RUNS = """
import json, sys
import torch.distributed as dist
from timm.utils import setup_default_logging
from hiervit.train.train import train
setup_default_logging()
dist.init_process_group('gloo')  # one group for all runs: train() leaves a caller's group in place
for argv in json.loads(sys.argv[1]):
    train(argv)
# a gloo group left for interpreter exit can abort there ('terminate called without an active exception')
dist.barrier()
dist.destroy_process_group()
"""


def test_ddp_gloo_mid_epoch_resume_is_bit_identical(image_folder, tmp_path):
    """2 gloo processes: a run stopped mid-epoch and resumed ends bit-identical to an uninterrupted one.

    A tiny BiFormer has BatchNorm: DDP broadcasts rank 0's buffers at every forward, each rank's EMA tracks its own
    copy mid-epoch (saved per rank) and both are averaged across ranks at the end of an epoch.
    """
    model = ['--model', 'biformer_tiny', '--model-kwargs', 'depths=(1,1,1,1)', 'embed_dims=(8,16,32,64)', 'head_dim=8',
             'topks=(1,1,1,-2)', 'n_win=2', 'global_attn_heads=2']
    common = ['--epochs', '2', '--device', 'cpu', '--mixup', '0.8', '--drop-path', '0.1', '--model-ema',
              '--model-ema-decay', '0.9', '--aug-repeats', '2', *model]
    split_last = str(tmp_path / 'split' / 'last.pth.tar')
    runs = [_base_args(image_folder, tmp_path, 'full', *common),
            _base_args(image_folder, tmp_path, 'split', *common, '--stop-after-steps', '4'),
            _base_args(image_folder, tmp_path, 'split', *common, '--resume', split_last)]
    script = tmp_path / 'ddp_runs.py'
    script.write_text(_DDP_RUNS)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1', '--nproc_per_node', '2',
           '--master_addr', '127.0.0.1', '--master_port', str(_free_port()), str(script), json.dumps(runs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert log.count('all 2 ranks hold identical weights') == 3, log[-3000:]  # full, stopped (parameters), resumed
    assert 'stopped (--stop-after-steps) at epoch 1 batch 1, update 4' in log
    full, resumed = _load(str(tmp_path / 'full' / 'last.pth.tar')), _load(split_last)
    # 24 images x 2 repeats / 2 ranks = 12 per rank, batch 4: 3 updates per epoch
    assert full['num_updates'] == resumed['num_updates'] == 6 and len(full['rng']) == 2
    assert not torch.equal(full['rng'][0]['torch'], full['rng'][1]['torch'])  # per-rank seeding
    for key in ('state_dict', 'state_dict_ema'):
        assert full[key].keys() == resumed[key].keys()
        for k in full[key]:
            assert torch.equal(full[key][k], resumed[key][k]), (key, k)
    for pa, pb in zip(full['optimizer']['state'].values(), resumed['optimizer']['state'].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    with open(tmp_path / 'full' / 'summary.csv') as f_full, open(tmp_path / 'split' / 'summary.csv') as f_split:
        assert f_full.read() == f_split.read()  # the same losses and metrics, one row per epoch


def test_sigterm_saves_resumable_checkpoint(image_folder, tmp_path):
    cmd = [sys.executable, '-m', 'hiervit.train',
           *_base_args(image_folder, tmp_path, 'term', '--epochs', '100', '--no-eval', '--log-interval', '1')]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    lines = []
    for line in proc.stdout:  # wait until training is under way
        lines.append(line)
        if 'Train: 0 [   1/6' in line:
            proc.send_signal(signal.SIGTERM)
            break
    lines += proc.stdout.readlines()
    assert proc.wait(timeout=120) == 0, ''.join(lines)[-3000:]
    log = ''.join(lines)
    assert 'continue with --resume' in log, log[-3000:]
    state = _load(str(tmp_path / 'term' / 'last.pth.tar'))
    assert 0 < state['num_updates'] == 6 * state['resume_epoch'] + state['resume_batch'] < 600


def test_corrupt_image_names_the_file(image_folder, tmp_path):
    bad = tmp_path / 'data'
    shutil.copytree(image_folder, bad)
    corrupt = bad / 'train' / 'class_1' / '3.png'
    corrupt.write_bytes(corrupt.read_bytes()[:40])
    with pytest.raises(ValueError, match=r'corrupt or unreadable image .*class_1/3\.png'):
        train(_base_args(bad, tmp_path, 'corrupt', '--epochs', '1', '--no-eval', '-b', '24'))


def test_missing_folder_and_class_mismatch(image_folder, trained_run, tmp_path):
    with pytest.raises(ValueError, match='--data-dir .*does not exist'):
        train(_base_args(tmp_path / 'nope', tmp_path, 'missing', '--epochs', '1'))
    with pytest.raises(ValueError, match='--num-classes'):
        train(_base_args(image_folder, tmp_path, 'mismatch', '--epochs', '1', '--num-classes', '5'))
    last = os.path.join(trained_run['output_dir'], 'last.pth.tar')
    five = _load(last)
    five['state_dict']['head.fc.weight'] = torch.zeros(5, five['state_dict']['head.fc.weight'].shape[1])
    torch.save(five, tmp_path / 'five.pth.tar')
    with pytest.raises(ValueError, match=r'--resume .*five.pth.tar has 5 classes but the model has 3'):
        train(_base_args(image_folder, tmp_path, 'mismatch', '--epochs', '1',
                         '--resume', str(tmp_path / 'five.pth.tar')))
    with pytest.raises(ValueError, match='--amp-dtype float16 needs a CUDA device'):
        train(_base_args(image_folder, tmp_path, 'fp16', '--epochs', '1', '--amp', '--device', 'cpu'))
    with pytest.raises(ValueError, match=r'--checkpoint .*has 3 classes but --num-classes is 7'):
        validate(['--checkpoint', os.path.join(trained_run['output_dir'], 'last.pth.tar'),
                  '--data-dir', str(image_folder), '--num-classes', '7', '--workers', '0'])
    with pytest.raises(ValueError, match="--model 'nat_nano' is not a registered"):
        train(['--model', 'nat_nano', '--data-dir', str(image_folder), '--output', str(tmp_path)])


def test_initial_checkpoint_without_classifier(trained_run, image_folder, tmp_path):
    state = _load(os.path.join(trained_run['output_dir'], 'last.pth.tar'))['state_dict']
    headless = {k: v for k, v in state.items() if not k.startswith('head.fc.')}
    torch.save(headless, tmp_path / 'headless.pth')
    run = train(_base_args(image_folder, tmp_path, 'ft', '--epochs', '1', '--no-eval', '--lr', '0', '--warmup-lr', '0',
                           '--initial-checkpoint', str(tmp_path / 'headless.pth')))
    tuned = _load(os.path.join(run['output_dir'], 'last.pth.tar'))['state_dict']
    assert torch.equal(tuned['patch_embed.proj.0.weight'], state['patch_embed.proj.0.weight'])  # lr 0: unchanged
    headless['extra.weight'] = torch.zeros(1)
    torch.save(headless, tmp_path / 'foreign.pth')
    with pytest.raises(ValueError, match=r'--initial-checkpoint .*foreign.pth does not fit --model nat_mini'):
        train(_base_args(image_folder, tmp_path, 'ft2', '--epochs', '1', '--initial-checkpoint',
                         str(tmp_path / 'foreign.pth')))


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype='>i4').tobytes()
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reader(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28))
    labels = np.array([0, 9, 3, 3, 1])
    _write_idx(tmp_path / 't10k-images-idx3-ubyte.gz', images)
    _write_idx(tmp_path / 't10k-labels-idx1-ubyte.gz', labels)
    ds = FashionMNIST(str(tmp_path), 'test')
    img, target = ds[1]
    assert len(ds) == 5 and target == 9 and img.mode == 'RGB' and img.size == (28, 28)
    assert np.array_equal(np.asarray(img)[..., 0], images[1])
    with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
        FashionMNIST(str(tmp_path), 'train')
    with pytest.raises(ValueError, match="'train' and 'test'"):
        FashionMNIST(str(tmp_path), 'holdout')
    (tmp_path / 'bad.gz').write_bytes(gzip.compress(b'\x00\x00\x0d\x01\x00\x00\x00\x01\x00'))
    with pytest.raises(ValueError, match='not an IDX file'):
        read_idx(str(tmp_path / 'bad.gz'))
    _write_idx(tmp_path / 't10k-labels-idx1-ubyte.gz', labels[:4])
    with pytest.raises(ValueError, match='do not pair up'):
        FashionMNIST(str(tmp_path), 'test')


def test_demo_learns_a_tiny_idx_set(tmp_path, capsys):
    """The demo end to end (recipe, training, hiervit-validate on the test split, the --target check) on 10 classes
    told apart by brightness: it must clear 50% top-1 on 200 test images, where a constant guess gets 10% (it measured
    70%)."""
    from hiervit.train import demo
    rng = np.random.default_rng(1)
    for prefix, per_class in (('train', 30), ('t10k', 20)):
        labels = np.repeat(np.arange(10), per_class)
        images = np.clip(20 + 23 * labels[:, None, None] + rng.normal(0, 8, (len(labels), 28, 28)), 0, 255)
        _write_idx(tmp_path / f'{prefix}-images-idx3-ubyte.gz', images)
        _write_idx(tmp_path / f'{prefix}-labels-idx1-ubyte.gz', labels)
    demo.main(['--data-dir', str(tmp_path), '--no-install', '--output', str(tmp_path / 'out'), '--epochs', '4',
               '--workers', '0', '--target', '50', '-b', '16', '--no-progress'])
    out = capsys.readouterr().out
    assert 'Fashion-MNIST test top-1' in out and 'on 200 images' in out and 'reached' in out, out[-500:]
    with pytest.raises(SystemExit):  # the same run cannot reach 100%: the demo exits non-zero
        demo.main(['--data-dir', str(tmp_path), '--no-install', '--output', str(tmp_path / 'out'), '--epochs', '1',
                   '--workers', '0', '--target', '100', '-b', '16', '--no-progress'])
    with pytest.raises(SystemExit, match='apt-get install dataset-fashion-mnist'):
        demo.ensure_fashion_mnist(str(tmp_path / 'empty'))


# --- checkpoints written by other trainers ---------------------------------------------------------------------------

def _foreign_checkpoints(trained_run, tmp_path):
    """The trained weights saved the way timm's CheckpointSaver, DeiT/BiFormer main.py and NAT's train.py save them,
    and as .safetensors."""
    ours = _load(os.path.join(trained_run['output_dir'], 'last.pth.tar'))
    sd, ema = ours['state_dict'], ours['state_dict_ema']
    kwargs = ours['args']['model_kwargs']
    files = {
        # timm train.py: CheckpointSaver of a model saved without unwrapping DDP, args as a Namespace
        'timm': {'epoch': 1, 'arch': 'nat', 'version': 2, 'metric': 50.0, 'optimizer': ours['optimizer'],
                 'state_dict': {f'module.{k}': v for k, v in sd.items()}, 'state_dict_ema': ema,
                 'args': argparse.Namespace(model='nat_mini', model_kwargs=kwargs, img_size=32, input_size=None,
                                            crop_pct=None, mean=None, std=None, interpolation='')},
        # DeiT / BiFormer main.py: 'model' / 'model_ema', --input-size is an int
        'biformer': {'model': sd, 'model_ema': ema, 'optimizer': ours['optimizer'], 'lr_scheduler': {}, 'epoch': 1,
                     'scaler': {}, 'max_accuracy': 50.0,
                     'args': argparse.Namespace(model='nat_mini', input_size=32, output_dir='out', data_set='IMNET')},
        # NAT train.py (timm 0.5 CheckpointSaver, no EMA); a pathlib path needs the full unpickler
        'nat': {'epoch': 1, 'arch': 'nat', 'version': 2, 'state_dict': sd, 'optimizer': ours['optimizer'],
                'metric': 50.0,
                'args': argparse.Namespace(model='nat_mini', img_size=32, crop_pct=0.875, output=pathlib.Path('o'))},
    }
    paths = {}
    for name, obj in files.items():
        paths[name] = str(tmp_path / f'{name}.pth.tar')
        torch.save(obj, paths[name])
    paths['safetensors'] = str(tmp_path / 'weights.safetensors')
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, paths['safetensors'])
    return paths, sd, ema, kwargs


def test_foreign_checkpoints_validate_like_ours(trained_run, image_folder, tmp_path, caplog):
    paths, _, _, kwargs = _foreign_checkpoints(trained_run, tmp_path)
    data = ['--data-dir', str(image_folder), '--workers', '0', '--threads', '1']
    ours = os.path.join(trained_run['output_dir'], 'last.pth.tar')
    expect, expect_ema = validate(['--checkpoint', ours, *data]), validate(['--checkpoint', ours, '--use-ema', *data])
    kw = ['--model-kwargs', *(f'{k}={v}' for k, v in kwargs.items())]
    # the model name (and for timm's checkpoint its kwargs and image size) come from the stored Namespace
    assert validate(['--checkpoint', paths['timm'], *data])['top1'] == expect['top1']
    assert validate(['--checkpoint', paths['timm'], '--use-ema', *data])['top1'] == expect_ema['top1']
    assert validate(['--checkpoint', paths['biformer'], '--use-ema', *kw, *data])['top1'] == expect_ema['top1']
    with caplog.at_level(logging.WARNING, logger='hiervit.train'):
        assert validate(['--checkpoint', paths['nat'], *kw, *data])['top1'] == expect['top1']
    assert any('pickles pathlib.PosixPath' in r.getMessage() and 'unpickling it in full' in r.getMessage()
               for r in caplog.records)
    assert validate(['--checkpoint', paths['safetensors'], '--model', 'nat_mini', '--img-size', '32', *kw,
                     *data])['top1'] == expect['top1']
    with pytest.raises(ValueError, match=r'--use-ema: --checkpoint .*nat.pth.tar holds no EMA weights'):
        validate(['--checkpoint', paths['nat'], '--use-ema', *kw, *data])


def test_foreign_checkpoints_start_training(trained_run, image_folder, tmp_path):
    paths, sd, ema, _ = _foreign_checkpoints(trained_run, tmp_path)
    assert all(ckpt.load_resume_state(p) is None for p in paths.values())  # not ours: never a resumable state
    frozen = ['--epochs', '1', '--no-eval', '--lr', '0', '--warmup-lr', '0']
    key = 'patch_embed.proj.0.weight'
    # --initial-checkpoint takes the EMA weights when there are some (as timm's train.py)
    run = train(_base_args(image_folder, tmp_path, 'init', *frozen, '--initial-checkpoint', paths['timm']))
    assert torch.equal(_load(os.path.join(run['output_dir'], 'last.pth.tar'))['state_dict'][key], ema[key])
    run = train(_base_args(image_folder, tmp_path, 'init_st', *frozen, '--initial-checkpoint', paths['safetensors']))
    assert torch.equal(_load(os.path.join(run['output_dir'], 'last.pth.tar'))['state_dict'][key], sd[key])
    with pytest.raises(ValueError, match=r'--resume .*biformer.pth.tar is not a hiervit-train checkpoint.*'
                                         r'--initial-checkpoint'):
        train(_base_args(image_folder, tmp_path, 'res', '--epochs', '1', '--resume', paths['biformer']))
    run = train(_base_args(image_folder, tmp_path, 'res', *frozen, '--resume', paths['biformer'], '--no-resume-opt'))
    assert torch.equal(_load(os.path.join(run['output_dir'], 'last.pth.tar'))['state_dict'][key], sd[key])


def test_resume_without_optimizer_starts_a_new_run_folder(trained_run, image_folder, tmp_path):
    old = trained_run['output_dir']
    with open(os.path.join(old, 'summary.csv')) as f:
        summary = f.read()
    before = {f: os.path.getmtime(os.path.join(old, f)) for f in os.listdir(old) if f.endswith('.pth.tar')}
    args = [a for a in _base_args(image_folder, tmp_path, '', '--epochs', '1', '--no-eval') if a]
    args.remove('--experiment')
    run = train([*args, '--resume', os.path.join(old, 'last.pth.tar'), '--no-resume-opt'])
    assert run['output_dir'] != old and os.path.dirname(run['output_dir']) == str(tmp_path)
    assert os.path.basename(run['output_dir']).endswith('-nat_mini-32') and run['epoch'] == 0
    with open(os.path.join(old, 'summary.csv')) as f:
        assert f.read() == summary
    assert before == {f: os.path.getmtime(os.path.join(old, f)) for f in before}


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize('terminal', [True, False], ids=['terminal', 'pipe'])
def test_progress_bars_on_a_terminal_log_lines_otherwise(image_folder, tmp_path, monkeypatch, caplog, terminal):
    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, 'stderr', stream)
    args = [a for a in _base_args(image_folder, tmp_path, 'bar', '--epochs', '1', '--no-eval', '--log-interval', '2')
            if a != '--no-progress']
    with caplog.at_level(logging.INFO, logger='hiervit.train'):
        train(args)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Train: ')]
    if terminal:
        assert 'epoch 0/1' in stream.getvalue() and '\r' in stream.getvalue() and not lines
    else:  # updates 0, 2, 4 and the last one (5) of the epoch, as timm's train.py logs them
        assert '\r' not in stream.getvalue() and 'epoch 0/1' not in stream.getvalue()
        assert [ln.split(']')[0] for ln in lines] == [
            f'Train: 0 [{i:>4d}/6 ({100 * (i + 1) / 6:>3.0f}%)' for i in (0, 2, 4, 5)]
        assert all(re.search(r'Loss: [\d.]+ \([\d.]+\) .* LR: [\d.e+-]+ ', ln) for ln in lines), lines


def test_host_syncs_happen_at_log_points_only(image_folder, tmp_path, monkeypatch):
    """`.item()` / `.tolist()` (a device -> host copy, a GPU sync) run per log point, not per step."""
    calls = []
    for name in ('item', 'tolist'):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, _o=original, _n=name: calls.append(_n) or _o(self))

    def syncs(log_interval):
        calls.clear()
        train(_base_args(image_folder, tmp_path, f'sync{log_interval}', '--epochs', '2', '--no-eval',
                         '--log-interval', str(log_interval)))
        return len(calls)

    # 2 epochs x 6 updates: with interval 100 only update 0 and the last one of each epoch are log points
    every, sparse = syncs(1), syncs(100)
    assert every - sparse == 2 * (6 - 2) * 2  # per extra log point: the reduced sums and the current loss


def test_argument_checks(image_folder, tmp_path):
    with pytest.raises(ValueError, match=r'--aug-repeats 3 needs a distributed run .*set --aug-repeats 0'):
        train(_base_args(image_folder, tmp_path, 'ra', '--epochs', '1', '--aug-repeats', '3'))
    with pytest.raises(ValueError, match=r'--aug-repeats must be a whole number of repeats >= 2 .*got 2.5'):
        train(_base_args(image_folder, tmp_path, 'ra', '--epochs', '1', '--aug-repeats', '2.5'))
    with pytest.raises(ValueError, match='--no-model-wd-exempt .* --layer-decay'):
        train(_base_args(image_folder, tmp_path, 'wd', '--no-model-wd-exempt', '--layer-decay', '0.9'))
    with pytest.raises(ValueError, match=r'pass --checkpoint x.pth instead of --initial-checkpoint'):
        validate(['--initial-checkpoint', 'x.pth', '--model', 'nat_mini', '--data-dir', str(image_folder)])


def test_validate_log_interval(trained_run, image_folder, caplog):
    with caplog.at_level(logging.INFO, logger='hiervit.train'):
        validate(['--checkpoint', os.path.join(trained_run['output_dir'], 'last.pth.tar'), '--data-dir',
                  str(image_folder), '--workers', '0', '-b', '2', '--log-interval', '2'])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Test: ')]
    assert [ln.split(']')[0] for ln in lines] == ['Test: [   0/5', 'Test: [   2/5', 'Test: [   4/5']  # 9 images


def test_validate_reads_the_checkpoint_once(trained_run, image_folder, monkeypatch):
    path = os.path.join(trained_run['output_dir'], 'last.pth.tar')
    reads, load = [], torch.load
    monkeypatch.setattr(torch, 'load', lambda f, *a, **k: reads.append(f) or load(f, *a, **k))
    validate(['--checkpoint', path, '--use-ema', '--data-dir', str(image_folder), '--workers', '0'])
    assert reads.count(path) == 1, reads


def test_official_layouts_load_through_the_model(tmp_path):
    """hiervit-train leaves official key layouts to the model's own conversion (its load pre-hook), with the same
    errors: a classifier of another size names the flags that fix it."""
    from hiervit.train.train import _load_weights_into
    keys = json.loads((pathlib.Path(__file__).parent / 'fixtures' / 'nat_mini_keys.json').read_text())
    official = {k: torch.empty(s, device='meta') for k, s in keys.items()}
    with torch.device('meta'):
        model, other = timm.create_model('nat_mini'), timm.create_model('nat_mini', num_classes=10)
    _load_weights_into(model, official, '--initial-checkpoint', 'nat_mini.pth')
    with pytest.raises(ValueError, match=r'--initial-checkpoint nat_mini.pth does not fit --model nat_mini '
                                         r'\(--num-classes .*--pretrained-path.*has 1000 classes, the model 10'):
        _load_weights_into(other, official, '--initial-checkpoint', 'nat_mini.pth')


def test_weight_decay_of_the_model_exempt_list(tmp_path):
    from hiervit.train.train import _create_optimizer
    model = timm.create_model('nat_mini', embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), kernel_size=3)
    rpb = {id(p) for n, p in model.named_parameters() if n.endswith('.rpb')}
    assert rpb
    for flag, decayed in (('--model-wd-exempt', False), ('--no-model-wd-exempt', True)):
        args, _ = parse_with_config(build_train_parser(), ['--opt', 'adamw', '--weight-decay', '0.05', '--lr', '1',
                                                           flag])
        groups = _create_optimizer(model, args).param_groups
        in_decay = {id(p) for g in groups if g['weight_decay'] > 0 for p in g['params']}
        assert (rpb <= in_decay) == decayed and not (rpb & in_decay and not decayed)
        assert all(p.ndim > 1 for g in groups if g['weight_decay'] > 0 for p in g['params'])  # norms, biases exempt


def _epoch_lrs(run):
    with open(os.path.join(run['output_dir'], 'summary.csv')) as f:
        rows = list(csv.DictReader(f))
    return [float(r['lr']) for r in rows]


def test_schedule_epoch_offset_and_constant_lr(image_folder, tmp_path):
    common = ['--epochs', '4', '--no-eval', '-b', '24', '--sched', 'cosine', '--warmup-epochs', '1',
              '--warmup-lr', '1e-5', '--min-lr', '1e-5']
    timm_like = _epoch_lrs(train(_base_args(image_folder, tmp_path, 'off1', *common)))
    deit_like = _epoch_lrs(train(_base_args(image_folder, tmp_path, 'off0', *common, '--sched-epoch-offset', '0')))
    # the lr each epoch ends with is that of the next epoch: DeiT's main.py runs one epoch behind
    assert deit_like[1:] == timm_like[:-1] and deit_like[0] == 1e-5 and len(timm_like) == 4
    assert len(set(timm_like)) == 4
    constant = _epoch_lrs(train(_base_args(image_folder, tmp_path, 'none', *common, '--sched', 'none')))
    assert constant == [1e-3] * 4


@pytest.fixture(scope='module')
def learnable_folder(tmp_path_factory):
    """3 colour classes with enough validation images that a constant guess (33%) is far from learning."""
    root = tmp_path_factory.mktemp('learnable')
    rng = np.random.default_rng(1)
    _write_split(root, 'train', 24, rng)
    _write_split(root, 'validation', 30, rng)
    return root


def test_training_beats_a_constant_class_guess(learnable_folder, tmp_path):
    run = train(_base_args(learnable_folder, tmp_path, 'learn', '--epochs', '4', '-b', '8', '--lr', '3e-3',
                           '--model-ema', '--model-ema-decay', '0.5', '--no-model-ema-best', '--checkpoint-hist', '0'))
    top1 = run['metrics']['eval']['top1']
    assert top1 >= 100 / NUM_CLASSES + 40, top1  # 90 validation images, 30 per class
    # the best checkpoint follows the live model's top-1 (--no-model-ema-best), not the EMA's
    with open(os.path.join(run['output_dir'], 'summary.csv')) as f:
        rows = list(csv.DictReader(f))
    best = max(rows, key=lambda r: float(r['eval_top1']))
    assert run['best'] == (pytest.approx(float(best['eval_top1'])), int(best['epoch']))
