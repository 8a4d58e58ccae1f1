"""Every bundled recipe against the values its paper's code published, each named by its source; every model built.

`PUBLISHED` holds one entry per published value: the recipes it applies to, a flag dest (or a quantity in `DERIVED`
that the trainer computes from several flags, such as the epochs actually run), the value and where it comes from
(official file, README or paper table). `ASSUMED` lists the recipe keys no source gives, with the reason. Every key
of every `configs/classification/*.yaml` must be covered by one of the two, so a new recipe needs its entries here:
add `Published((recipes...), 'key', value, 'repo path/to/file: what it says')` lines for its family.
"""
import copy
import functools
import glob
import os
from typing import Any, Callable, Dict, NamedTuple, Tuple

import pytest
import timm
import torch
from timm.data import resolve_data_config
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

import hiervit
from hiervit.backbones.vitae_vsa import official_drop_path_rates
from hiervit.train.args import build_train_parser, load_recipe, parse_with_config
from hiervit.train.train import _create_optimizer, create_model_from_args

CONFIG_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
CLASSIFICATION = sorted(glob.glob(os.path.join(CONFIG_ROOT, 'classification', '*.yaml')))
DEMO = sorted(glob.glob(os.path.join(CONFIG_ROOT, 'demo', '*.yaml')))
RECIPES = [os.path.splitext(os.path.basename(p))[0] for p in CLASSIFICATION]


class Published(NamedTuple):
    recipes: Tuple[str, ...]
    key: str  # a flag dest or a DERIVED name
    value: Any
    source: str


class Assumed(NamedTuple):
    recipes: Tuple[str, ...]
    keys: Tuple[str, ...]
    reason: str


@functools.lru_cache(maxsize=None)
def recipe_args(name: str):
    args, _ = parse_with_config(build_train_parser(), ['-c', name])
    return args


@functools.lru_cache(maxsize=None)
def recipe_model(name: str) -> torch.nn.Module:
    """The recipe's model with its kwargs and drop path, on the meta device (no weights allocated)."""
    with torch.device('meta'):
        return create_model_from_args(recipe_args(name), None)


def _lr_at_global_batch(args, batch: int) -> float:
    if args.lr is not None:
        return args.lr
    ratio = batch / args.lr_base_size
    return args.lr_base * (ratio ** 0.5 if args.lr_base_scale == 'sqrt' else ratio)


@functools.lru_cache(maxsize=None)
def _optimizer(name: str) -> torch.optim.Optimizer:
    args = copy.copy(recipe_args(name))
    args.lr = _lr_at_global_batch(args, 1024)
    return _create_optimizer(recipe_model(name), args)


def _epochs_run(name: str) -> int:
    _, num_epochs = create_scheduler_v2(_optimizer(name), **scheduler_kwargs(recipe_args(name)), updates_per_epoch=100)
    return num_epochs


def _rpb_decayed(name: str) -> bool:
    model = recipe_model(name)
    rpb = {id(p) for n, p in model.named_parameters() if n.endswith('rpb')}
    assert rpb, f'{name} has no rpb parameters'
    decayed = {id(p) for g in _optimizer(name).param_groups if g['weight_decay'] > 0 for p in g['params']}
    return rpb <= decayed


def _lr_schedule(name: str) -> str:
    scheduler, _ = create_scheduler_v2(_optimizer(name), **scheduler_kwargs(recipe_args(name)), updates_per_epoch=100)
    return 'constant' if scheduler is None else type(scheduler).__name__


def _eval_data(name: str, key: str) -> Any:
    return resolve_data_config(vars(recipe_args(name)), model=recipe_model(name))[key]


# name -> (how the trainer derives it from a recipe, the recipe keys it accounts for)
DERIVED: Dict[str, Tuple[Callable[[str], Any], Tuple[str, ...]]] = {
    'epochs_run': (_epochs_run, ('epochs', 'cooldown_epochs')),
    'lr_at_global_batch_1024': (lambda n: _lr_at_global_batch(recipe_args(n), 1024),
                                ('lr', 'lr_base', 'lr_base_size', 'lr_base_scale')),
    'rpb_decayed': (_rpb_decayed, ('model_wd_exempt',)),
    'lr_schedule': (_lr_schedule, ('sched',)),
    'adamw_eps': (lambda n: _optimizer(n).defaults['eps'], ()),
    'eval_crop_pct': (lambda n: _eval_data(n, 'crop_pct'), ('crop_pct',)),
    'eval_interpolation': (lambda n: _eval_data(n, 'interpolation'), ('interpolation',)),
}

# --- InLine (LeapLabTHU/InLine: main.py / main_ema.py on the Swin config system) ---------------------------------
IL_SWIN_1K = ('inline_swin_tiny', 'inline_swin_small', 'inline_swin_base')
IL_SWIN = IL_SWIN_1K + ('inline_swin_base_384',)
IL_CSWIN_1K = ('inline_cswin_tiny', 'inline_cswin_small', 'inline_cswin_base')
IL_CSWIN = IL_CSWIN_1K + ('inline_cswin_base_384',)
IL_PVT = ('inline_pvt_tiny', 'inline_pvt_small', 'inline_pvt_medium', 'inline_pvt_large')
IL_DEIT = ('inline_deit_tiny', 'inline_deit_small', 'inline_deit_base')
IL_ALL = IL_SWIN + IL_CSWIN + IL_PVT + IL_DEIT
IL_CONFIG = 'LeapLabTHU/InLine config.py default'
IL_CFG = 'LeapLabTHU/InLine cfgs/<recipe>.yaml'
IL_SCALE = 'LeapLabTHU/InLine main.py / main_ema.py: BASE_LR, WARMUP_LR, MIN_LR x DATA.BATCH_SIZE x 8 GPUs / 512'
IL_README = 'LeapLabTHU/InLine README.md training command (8 GPUs, --amp)'
IL_EMA = 'LeapLabTHU/InLine main_ema.py: --model-ema on, decay 0.9996 ** (global batch / 4096)'

# --- NAT / DiNAT / DiNAT_s (SHI-Labs/Neighborhood-Attention-Transformer, classification/) -------------------------
NAT_REPO = 'SHI-Labs/Neighborhood-Attention-Transformer classification/'
NAT_1K = ('nat_mini', 'nat_tiny', 'nat_small', 'nat_base', 'dinat_mini', 'dinat_tiny', 'dinat_small', 'dinat_base',
          'dinat_s_tiny', 'dinat_s_small', 'dinat_s_base')
NAT_FT_224 = ('dinat_large', 'dinat_s_large')
NAT_FT_384 = ('dinat_large_384', 'dinat_large_384_11x11', 'dinat_s_large_384')
NAT_FT = NAT_FT_224 + NAT_FT_384
NAT_21K = ('dinat_large_21k', 'dinat_large_21k_11x11', 'dinat_s_large_21k')
NAT_ALL = NAT_1K + NAT_FT + NAT_21K
NAT_CFG = NAT_REPO + 'configs/<recipe>.yml'
NAT_TRAIN = NAT_REPO + 'train.py argparse default'
NAT_MODELS = NAT_REPO + 'nat.py / dinat.py / dinats.py drop_path_rate of the model function'

# --- BiFormer (rayleizhu/BiFormer, DeiT-based main.py) ------------------------------------------------------------
BIFORMER = ('biformer_tiny', 'biformer_small', 'biformer_base', 'biformer_stl')
BF_ARGS = 'rayleizhu/BiFormer configs/train_args.yaml (defaults exported from main.py)'
BF_MAIN = 'rayleizhu/BiFormer main.py'

# --- DaViT (dingmyu/davit; the models are timm's own davit_*) -------------------------------------------------------
DAVIT = ('davit_tiny', 'davit_small', 'davit_base')
DAVIT_README = 'dingmyu/davit README.md training command (8 GPUs x 128, --lr 1e-3, --clip-grad 1.0, --native-amp)'
DAVIT_TRAIN = 'dingmyu/davit train.py argparse default'

# --- S2AFormer (arXiv 2505.22195): the training recipe is unpublished ---------------------------------------------
S2AFORMER = ('s2aformer_mini', 's2aformer_t', 's2aformer_xs', 's2aformer_s', 's2aformer_m')
S2A_PAPER = 'S2AFormer paper (arXiv 2505.22195), ImageNet-1k section: 300 epochs at 224'

# --- CSWin (microsoft/CSWin-Transformer) ----------------------------------------------------------------------------
CSWIN_1K = ('cswin_tiny', 'cswin_small', 'cswin_base')
CSWIN_FT = ('cswin_base_384', 'cswin_large')
CS_README = 'microsoft/CSWin-Transformer README.md training command (train.sh 8 GPUs)'
CS_MAIN = 'microsoft/CSWin-Transformer main.py argparse default'
CS_FT_README = 'microsoft/CSWin-Transformer README.md fine-tune command (finetune.sh 8 GPUs)'
CS_FINETUNE = 'microsoft/CSWin-Transformer finetune.py argparse default'

# --- L2ViT (ChuanyangZheng/L2ViT, ConvNeXt-based classification/main.py) -------------------------------------------
L2_1K = ('l2vit_tiny', 'l2vit_small', 'l2vit_base')
L2_FT = ('l2vit_base.in22k_ft_in1k', 'l2vit_base_384')
L2_22K = ('l2vit_base.in22k',)
L2_ALL = L2_1K + L2_FT + L2_22K
L2_README = 'ChuanyangZheng/L2ViT readme.md command of the run'
L2_MAIN = 'ChuanyangZheng/L2ViT classification/main.py argparse default'


# --- ViTAEv2-VSA (ViTAE-Transformer/ViTAE-VSA, Image-Classification/) and Swin+VSA (never released) ------------------
VSA_REPO = 'ViTAE-Transformer/ViTAE-VSA Image-Classification/'
VSA_MAIN = VSA_REPO + 'main.py argparse default'
VSA_S_SH = VSA_REPO + 'vitaev2_vsa/training_scripts/ViTAEv2_VSA_S.sh (8 GPUs)'
VSA_48M_SH = VSA_REPO + 'vitaev2_vsa/training_scripts/ViTAEv2_VSA_widePCM_48M.sh (2 nodes x 8 GPUs)'
VSA_RELEASED = ('vitaev2_vsa_s', 'vitaev2_vsa_48m')
VSA_ALL = VSA_RELEASED + ('vitaev2_vsa_b', 'swin_vsa_tiny', 'swin_vsa_small')
SWIN_VSA = ('swin_vsa_tiny', 'swin_vsa_small')

def published_values(recipes: Tuple[str, ...], source: str, **values: Any):
    """One `Published` entry per keyword: the values that one source gives for these recipes."""
    return [Published(recipes, key, value, source) for key, value in values.items()]


# --- FLatten (LeapLabTHU/FLatten-Transformer: Swin-style config.py + cfgs/*.yaml, main.py / main_ema.py) ----------
FL_REPO = 'LeapLabTHU/FLatten-Transformer '
FL_CONFIG = FL_REPO + 'config.py defaults'
FL_SCALE = ' x global batch (8 GPUs, README) / 512, as main.py scales BASE_LR, WARMUP_LR and MIN_LR'
# recipe -> (its cfgs/ file, then batch_size, weight_decay, warmup_epochs, drop_path, clip_grad, epochs, BASE_LR,
# WARMUP_LR, MIN_LR, img_size, eval crop as the cfg gives them, clip None = no clipping)
FL_CFGS = {
    'flatten_swin_tiny': ('flatten_swin_t', 128, 0.05, 20, 0.2, 5.0, 300, 5e-4, 5e-7, 5e-6, 224, 0.875),
    'flatten_swin_small': ('flatten_swin_s', 128, 0.05, 20, 0.3, 5.0, 300, 5e-4, 5e-7, 5e-6, 224, 0.875),
    'flatten_swin_base': ('flatten_swin_b', 64, 0.05, 20, 0.5, 5.0, 300, 5e-4, 5e-7, 5e-6, 224, 0.875),
    'flatten_swin_base_384': ('flatten_swin_b_384', 32, 1e-8, 5, 0.5, 5.0, 30, 2e-5, 2e-8, 2e-7, 384, 1.0),
    'flatten_pvt_tiny': ('flatten_pvt_t', 128, 0.05, 5, 0.1, None, 300, 5e-4, 1e-6, 1e-5, 224, 0.875),
    'flatten_pvt_small': ('flatten_pvt_s', 64, 0.05, 5, 0.1, None, 300, 5e-4, 1e-6, 1e-5, 224, 0.875),
    'flatten_pvt_medium': ('flatten_pvt_m', 64, 0.05, 5, 0.3, 1.0, 300, 5e-4, 1e-6, 1e-5, 224, 0.875),
    'flatten_pvt_large': ('flatten_pvt_b', 32, 0.05, 5, 0.3, 1.0, 300, 5e-4, 1e-6, 1e-5, 224, 0.875),
    'flatten_pvt_v2_b0': ('flatten_pvt_v2_b0', 128, 0.05, 5, 0.1, None, 300, 5e-4, 1e-6, 1e-5, 224, 0.875),
    'flatten_pvt_v2_b1': ('flatten_pvt_v2_b1', 128, 0.05, 5, 0.1, None, 300, 5e-4, 1e-6, 1e-5, 224, 0.875),
    'flatten_pvt_v2_b2': ('flatten_pvt_v2_b2', 128, 0.05, 5, 0.1, None, 300, 5e-4, 1e-6, 1e-5, 224, 0.875),
    'flatten_pvt_v2_b3': ('flatten_pvt_v2_b3', 128, 0.05, 5, 0.3, 1.0, 300, 5e-4, 1e-6, 1e-5, 224, 0.875),
    'flatten_pvt_v2_b4': ('flatten_pvt_v2_b4', 64, 0.05, 5, 0.3, 1.0, 300, 5e-4, 1e-6, 1e-5, 224, 0.875),
    'flatten_cswin_tiny': ('flatten_cswin_t', 256, 0.05, 20, 0.2, None, 300, 5e-4, 1e-6, 1e-5, 224, 0.875),
    'flatten_cswin_small': ('flatten_cswin_s', 128, 0.05, 20, 0.4, None, 300, 5e-4, 1e-6, 1e-5, 224, 0.875),
    'flatten_cswin_base': ('flatten_cswin_b', 64, 0.1, 20, 0.5, None, 300, 5e-4, 1e-6, 1e-5, 224, 0.875),
    'flatten_cswin_base_384': ('flatten_cswin_b_384', 32, 1e-8, 0, 0.7, None, 20, 5e-6, 5e-6, 5e-7, 384, 0.875),
}
FL_EMA = {'flatten_cswin_tiny': 0.99984, 'flatten_cswin_small': 0.99984, 'flatten_cswin_base': 0.99982,
          'flatten_cswin_base_384': 0.99982}
FL_ALL = tuple(FL_CFGS) + ('flatten_pvt_v2_b5',)


def _flatten_published():
    out = []
    for name, (cfg, batch, wd, warmup, dp, clip, epochs, lr, warm, low, size, crop) in FL_CFGS.items():
        src = f'{FL_REPO}cfgs/{cfg}.yaml'
        scale = batch * 8 / 512
        out += published_values(
            (name,), src, batch_size=batch, weight_decay=wd, warmup_epochs=warmup, drop_path=dp, img_size=size,
            lr_at_global_batch_1024=lr * 1024 / 512, eval_crop_pct=crop)
        if name in FL_EMA:
            out += published_values((name,), src + ' EPOCHS + COOLDOWN_EPOCHS 10 (main_ema.py trains both)',
                                    epochs_run=epochs + 10)
        else:
            out += published_values((name,), src + ' over ' + FL_CONFIG + ' (main.py: lr_scheduler.py runs EPOCHS, '
                                    'COOLDOWN_EPOCHS unused)', epochs_run=epochs)
        out += published_values((name,), src + ' WARMUP_LR / MIN_LR' + FL_SCALE, warmup_lr=warm * scale,
                                min_lr=low * scale)
        if clip is not None:
            out.append(Published((name,), 'clip_grad', clip, src + ' TRAIN.CLIP_GRAD (default 5.0)'))
        ema = FL_EMA.get(name)
        out += published_values((name,), FL_REPO + 'README.md command (main_ema.py --model-ema --model-ema-decay)'
                                if ema else FL_REPO + 'README.md command (main.py, no EMA)', model_ema=bool(ema))
        if ema:
            out.append(Published((name,), 'model_ema_decay', ema, FL_REPO + 'README.md --model-ema-decay'))
    return out + published_values(
        tuple(FL_CFGS), FL_CONFIG, opt='adamw', opt_eps=1e-8, adamw_eps=1e-8, lr_schedule='CosineLRScheduler',
        sched_on_updates=True, train_interpolation='bicubic', aa='rand-m9-mstd0.5-inc1', color_jitter=0.4, mixup=0.8,
        cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5, smoothing=0.1, reprob=0.25, remode='pixel', recount=1,
        amp=False)


PUBLISHED = [
    # NAT family, ImageNet-1k from scratch
    Published(NAT_1K, 'epochs', 300, NAT_CFG),
    Published(NAT_1K, 'cooldown_epochs', 10, NAT_CFG),
    Published(NAT_1K, 'epochs_run', 310, NAT_TRAIN + ': create_scheduler returns cycle length + cooldown epochs'),
    Published(NAT_1K, 'lr_at_global_batch_1024', 1e-3, NAT_CFG + ' lr: 1e-3'),
    Published(NAT_1K, 'warmup_lr', 1e-6, NAT_CFG),
    Published(NAT_1K, 'min_lr', 5e-6, NAT_CFG),
    Published(NAT_1K, 'warmup_epochs', 20, NAT_CFG),
    Published(NAT_1K, 'amp', True, NAT_CFG),
    Published(NAT_1K, 'batch_size', 128, NAT_CFG),
    Published(NAT_1K, 'lr_schedule', 'CosineLRScheduler', NAT_CFG + ' sched: cosine'),
    Published(NAT_1K, 'sched_on_updates', True, NAT_CFG + ' sched_epochwise: False'),
    Published(NAT_1K, 'weight_decay', 0.05, NAT_CFG),
    Published(NAT_1K, 'mixup', 0.8, NAT_TRAIN),
    Published(NAT_1K, 'cutmix', 1.0, NAT_TRAIN),
    Published(NAT_1K, 'mixup_prob', 1.0, NAT_TRAIN),
    # NAT family, ImageNet-22k -> 1k fine-tunes
    Published(NAT_FT, 'epochs', 30, NAT_CFG),
    Published(NAT_FT, 'cooldown_epochs', 0, NAT_CFG),
    Published(NAT_FT, 'epochs_run', 30, NAT_CFG),
    Published(NAT_FT, 'lr', 5e-5, NAT_CFG),
    Published(NAT_FT, 'warmup_epochs', 0, NAT_CFG),
    Published(NAT_FT, 'amp', False, NAT_CFG),
    Published(NAT_FT, 'batch_size', 64, NAT_CFG),
    Published(NAT_FT, 'lr_schedule', 'constant',
              NAT_CFG + ' sched: linear, for which ' + NAT_REPO + 'train.py create_scheduler builds no scheduler'),
    Published(NAT_FT, 'mixup', 0.0, NAT_CFG),
    Published(NAT_FT, 'cutmix', 0.0, NAT_CFG),
    Published(NAT_FT, 'mixup_prob', 0.0, NAT_CFG),
    Published(('dinat_large', 'dinat_s_large'), 'weight_decay', 1e-4, NAT_CFG),
    Published(('dinat_large_384', 'dinat_large_384_11x11'), 'weight_decay', 1e-10,
              NAT_REPO + 'configs/dinat_large_384.yml (no 11x11 file: same fine-tune)'),
    Published(('dinat_s_large_384',), 'weight_decay', 1e-5, NAT_CFG),
    Published(NAT_FT_224, 'img_size', 224, NAT_CFG),
    Published(NAT_FT_384, 'img_size', 384, NAT_CFG),
    Published(NAT_FT_384, 'eval_crop_pct', 1.0, NAT_CFG),
    # NAT family, all runs of the official train.py
    Published(NAT_1K + NAT_FT_224, 'eval_crop_pct', 0.875, NAT_TRAIN + ' --crop-pct 0.875'),
    Published(NAT_1K, 'img_size', 224, NAT_TRAIN + ' --img-size 224'),
    Published(NAT_1K + NAT_FT, 'opt', 'adamw', NAT_TRAIN),
    Published(NAT_1K + NAT_FT, 'adamw_eps', 1e-8, NAT_TRAIN + ' --opt-eps 1e-8'),
    Published(NAT_1K + NAT_FT, 'clip_grad', 5.0, NAT_TRAIN),
    Published(NAT_1K + NAT_FT, 'aa', 'rand-m9-mstd0.5-inc1', NAT_TRAIN),
    Published(NAT_1K + NAT_FT, 'reprob', 0.25, NAT_TRAIN),
    Published(NAT_1K + NAT_FT, 'remode', 'pixel', NAT_TRAIN),
    Published(NAT_1K + NAT_FT, 'smoothing', 0.1, NAT_TRAIN),
    Published(NAT_1K + NAT_FT, 'train_interpolation', 'random', NAT_TRAIN),
    Published(NAT_1K + NAT_FT, 'color_jitter', 0.4, NAT_TRAIN),
    Published(NAT_1K + NAT_FT, 'model_ema', False, NAT_TRAIN),
    Published(NAT_1K + NAT_FT, 'rpb_decayed', True,
              NAT_REPO + 'nat.py lists rpb only in no_weight_decay_keywords(), which the timm create_optimizer_v2 '
              'called by train.py never reads'),
    Published(('nat_mini', 'nat_tiny', 'dinat_mini', 'dinat_tiny', 'dinat_s_tiny'), 'drop_path', 0.2, NAT_MODELS),
    Published(('nat_small', 'dinat_small', 'dinat_s_small'), 'drop_path', 0.3, NAT_MODELS),
    Published(('nat_base', 'dinat_base', 'dinat_s_base'), 'drop_path', 0.5, NAT_MODELS),
    Published(NAT_FT, 'drop_path', 0.35, NAT_MODELS),
    Published(NAT_21K, 'drop_path', 0.2, NAT_MODELS),
    # BiFormer, ImageNet-1k from scratch
    Published(BIFORMER, 'epochs', 300, BF_ARGS),
    Published(BIFORMER, 'epochs_run', 300, BF_MAIN + ': for epoch in range(args.start_epoch, args.epochs)'),
    Published(BIFORMER, 'sched_epoch_offset', 0, BF_MAIN + ': lr_scheduler.step(epoch) after each epoch'),
    Published(BIFORMER, 'sched_on_updates', False, BF_MAIN + ': the schedule steps per epoch only'),
    Published(BIFORMER, 'model_ema_best', False, BF_MAIN + ': best.pth when the live model\'s acc1 is the maximum'),
    Published(BIFORMER, 'lr_base', 5e-4, BF_ARGS + ' lr: 0.0005'),
    Published(BIFORMER, 'lr_base_size', 512, BF_MAIN + ': linear_scaled_lr = lr * batch_size * world_size / 512'),
    Published(BIFORMER, 'lr_base_scale', 'linear', BF_MAIN + ': linear_scaled_lr'),
    Published(BIFORMER, 'batch_size', 128, 'rayleizhu/BiFormer README.md and scripts/train.sh: batch_size=128'),
    Published(BIFORMER, 'opt', 'adamw', BF_ARGS),
    Published(BIFORMER, 'adamw_eps', 1e-8, BF_ARGS + ' opt_eps: 1.0e-08'),
    Published(BIFORMER, 'clip_grad', None, BF_ARGS),
    Published(BIFORMER, 'weight_decay', 0.05, BF_ARGS),
    Published(BIFORMER, 'lr_schedule', 'CosineLRScheduler', BF_ARGS + ' sched: cosine'),
    Published(BIFORMER, 'warmup_lr', 1e-6, BF_ARGS),
    Published(BIFORMER, 'min_lr', 1e-5, BF_ARGS),
    Published(BIFORMER, 'warmup_epochs', 5, BF_ARGS),
    Published(BIFORMER, 'color_jitter', 0.4, BF_ARGS),
    Published(BIFORMER, 'aa', 'rand-m9-mstd0.5-inc1', BF_ARGS),
    Published(BIFORMER, 'smoothing', 0.1, BF_ARGS),
    Published(BIFORMER, 'train_interpolation', 'bicubic', BF_ARGS),
    Published(BIFORMER, 'aug_repeats', 3, BF_ARGS + ' repeated_aug: true; samplers.py RASampler repeats 3 times'),
    Published(BIFORMER, 'reprob', 0.25, BF_ARGS),
    Published(BIFORMER, 'remode', 'pixel', BF_ARGS),
    Published(BIFORMER, 'mixup', 0.8, BF_ARGS),
    Published(BIFORMER, 'cutmix', 1.0, BF_ARGS),
    Published(BIFORMER, 'mixup_prob', 1.0, BF_ARGS),
    Published(BIFORMER, 'mixup_switch_prob', 0.5, BF_ARGS),
    Published(BIFORMER, 'model_ema', True, BF_ARGS),
    Published(BIFORMER, 'model_ema_decay', 0.99996, BF_ARGS),
    Published(BIFORMER, 'img_size', 224, BF_ARGS + ' input_size: 224'),
    Published(BIFORMER, 'eval_crop_pct', 0.875, 'rayleizhu/BiFormer datasets.py: Resize(256 / 224 * size), CenterCrop'),
    Published(BIFORMER, 'eval_interpolation', 'bicubic', 'rayleizhu/BiFormer datasets.py: Resize(interpolation=3)'),
    Published(BIFORMER, 'amp', True, 'rayleizhu/BiFormer engine.py: torch.cuda.amp.autocast() around every forward'),
    Published(('biformer_small',), 'drop_path', 0.15, 'rayleizhu/BiFormer README.md and scripts/train.sh'),
    Published(('biformer_tiny',), 'drop_path', 0.1, 'rayleizhu/BiFormer issue #32 (the authors\' reply)'),
    Published(('biformer_stl',), 'drop_path', 0.1, 'rayleizhu/BiFormer scripts/train.sh (model=\'biformer_stl\')'),
    # DaViT, ImageNet-1k from scratch
    Published(DAVIT, 'batch_size', 128, DAVIT_README),
    Published(DAVIT, 'lr_at_global_batch_1024', 1e-3, DAVIT_README),
    Published(DAVIT, 'clip_grad', 1.0, DAVIT_README),
    Published(DAVIT, 'amp', True, DAVIT_README),
    Published(DAVIT, 'img_size', 224, 'dingmyu/davit README.md (ImageNet-1k models at 224)'),
    Published(DAVIT, 'epochs', 300, DAVIT_TRAIN),
    Published(DAVIT, 'cooldown_epochs', 10, DAVIT_TRAIN),
    Published(DAVIT, 'opt', 'adamw', DAVIT_TRAIN),
    Published(DAVIT, 'weight_decay', 0.05, DAVIT_TRAIN),
    Published(DAVIT, 'lr_schedule', 'CosineLRScheduler', DAVIT_TRAIN + ' --sched cosine'),
    Published(DAVIT, 'warmup_epochs', 5, DAVIT_TRAIN),
    Published(DAVIT, 'warmup_lr', 1e-6, DAVIT_TRAIN),
    Published(DAVIT, 'min_lr', 1e-5, DAVIT_TRAIN),
    Published(DAVIT, 'aa', 'rand-m9-mstd0.5-inc1', DAVIT_TRAIN),
    Published(DAVIT, 'color_jitter', 0.4, DAVIT_TRAIN),
    Published(DAVIT, 'mixup', 0.8, DAVIT_TRAIN),
    Published(DAVIT, 'cutmix', 1.0, DAVIT_TRAIN),
    Published(DAVIT, 'smoothing', 0.1, DAVIT_TRAIN),
    Published(DAVIT, 'reprob', 0.25, DAVIT_TRAIN),
    Published(DAVIT, 'remode', 'pixel', DAVIT_TRAIN),
    Published(DAVIT, 'model_ema', False, DAVIT_TRAIN),
    Published(DAVIT, 'train_interpolation', 'bicubic', DAVIT_TRAIN),
    Published(('davit_tiny',), 'drop_path', 0.1, DAVIT_TRAIN + ' --drop-path 0.1 (used for Tiny)'),
    # CSWin, ImageNet-1k from scratch
    Published(('cswin_tiny', 'cswin_small'), 'batch_size', 256, CS_README + ' -b 256'),
    Published(('cswin_base',), 'batch_size', 128, CS_README + ' -b 128'),
    Published(('cswin_tiny', 'cswin_small'), 'lr_base', 2e-3, CS_README + ' --lr 2e-3'),
    Published(('cswin_base',), 'lr_base', 1e-3, CS_README + ' --lr 1e-3'),
    Published(('cswin_tiny', 'cswin_small'), 'lr_base_size', 2048, CS_README + ': 8 GPUs x -b 256, lr not rescaled'),
    Published(('cswin_base',), 'lr_base_size', 1024, CS_README + ': 8 GPUs x -b 128, lr not rescaled'),
    Published(('cswin_tiny', 'cswin_small'), 'weight_decay', 0.05, CS_README),
    Published(('cswin_base',), 'weight_decay', 0.1, CS_README),
    Published(('cswin_tiny', 'cswin_small'), 'model_ema_decay', 0.99984, CS_README),
    Published(('cswin_base',), 'model_ema_decay', 0.99992, CS_README),
    Published(('cswin_tiny',), 'drop_path', 0.2, CS_README),
    Published(('cswin_small',), 'drop_path', 0.4, CS_README),
    Published(('cswin_base',), 'drop_path', 0.5, CS_README),
    Published(CSWIN_1K, 'warmup_epochs', 20, CS_README),
    Published(CSWIN_1K, 'amp', True, CS_README + ' --amp'),
    Published(CSWIN_1K, 'img_size', 224, CS_README + ' --img-size 224'),
    Published(CSWIN_1K, 'epochs', 300, CS_MAIN),
    Published(CSWIN_1K, 'cooldown_epochs', 10, CS_MAIN),
    Published(CSWIN_1K, 'min_lr', 1e-5, CS_MAIN),
    Published(CSWIN_1K, 'mixup', 0.8, CS_MAIN),
    Published(CSWIN_1K, 'cutmix', 1.0, CS_MAIN),
    # CSWin fine-tunes: B at 384 from the 224 model, L at 224 from ImageNet-22k
    Published(('cswin_base_384',), 'batch_size', 32, CS_FT_README),
    Published(('cswin_base_384',), 'epochs', 20, CS_FT_README),
    Published(('cswin_base_384',), 'lr', 5e-6, CS_FT_README + ' (--lr-scale 1: one lr for backbone and head)'),
    Published(('cswin_base_384',), 'mixup', 0.1, CS_FT_README),
    Published(('cswin_base_384',), 'cutmix', 0.1, CS_FT_README),
    Published(('cswin_base_384',), 'drop_path', 0.7, CS_FT_README),
    Published(('cswin_base_384',), 'model_ema_decay', 0.9998, CS_FT_README),
    Published(('cswin_base_384',), 'img_size', 384, CS_FT_README),
    Published(('cswin_large',), 'batch_size', 64, CS_FT_README),
    Published(('cswin_large',), 'epochs', 30, CS_FT_README),
    Published(('cswin_large',), 'lr', 2.5e-4, CS_FT_README + ' (the head\'s lr; --lr-scale 0.05 for the backbone is '
                                               'not reproduced: one lr for all parameters)'),
    Published(('cswin_large',), 'mixup', 0.01, CS_FT_README),
    Published(('cswin_large',), 'cutmix', 0.3, CS_FT_README),
    Published(('cswin_large',), 'drop_path', 0.2, CS_FT_README),
    Published(('cswin_large',), 'model_ema_decay', 0.9996, CS_FT_README),
    Published(('cswin_large',), 'grad_checkpointing', True, CS_FT_README + ' --use-chk'),
    Published(('cswin_large',), 'img_size', 224, CS_FT_README),
    Published(('cswin_large',), 'eval_interpolation', 'bicubic', CS_FT_README + ' --interpolation bicubic'),
    Published(CSWIN_FT, 'min_lr', 5e-7, CS_FT_README),
    Published(CSWIN_FT, 'weight_decay', 1e-8, CS_FT_README),
    Published(CSWIN_FT, 'warmup_epochs', 0, CS_FT_README),
    Published(CSWIN_FT, 'cooldown_epochs', 10, CS_FT_README),
    Published(CSWIN_FT, 'amp', True, CS_FT_README + ' --amp'),
    # CSWin, all runs (main.py and finetune.py share these defaults)
    Published(CSWIN_1K + CSWIN_FT, 'opt', 'adamw', CS_MAIN + ' / ' + CS_FINETUNE),
    Published(CSWIN_1K + CSWIN_FT, 'lr_schedule', 'CosineLRScheduler', CS_MAIN + ' / ' + CS_FINETUNE),
    Published(CSWIN_1K + CSWIN_FT, 'warmup_lr', 1e-6, CS_MAIN + ' / ' + CS_FINETUNE),
    Published(CSWIN_1K + CSWIN_FT, 'train_interpolation', 'random', CS_MAIN + ' / ' + CS_FINETUNE),
    Published(CSWIN_1K + CSWIN_FT, 'aa', 'rand-m9-mstd0.5-inc1', CS_MAIN + ' / ' + CS_FINETUNE),
    Published(CSWIN_1K + CSWIN_FT, 'color_jitter', 0.4, CS_MAIN + ' / ' + CS_FINETUNE),
    Published(CSWIN_1K + CSWIN_FT, 'smoothing', 0.1, CS_MAIN + ' / ' + CS_FINETUNE),
    Published(CSWIN_1K + CSWIN_FT, 'reprob', 0.25, CS_MAIN + ' / ' + CS_FINETUNE),
    Published(CSWIN_1K + CSWIN_FT, 'remode', 'pixel', CS_MAIN + ' / ' + CS_FINETUNE),
    Published(CSWIN_1K + CSWIN_FT, 'model_ema', True, CS_MAIN + ' / ' + CS_FINETUNE + ' (--model-ema default True)'),
    # L2ViT
    *published_values(L2_1K, L2_README, batch_size=128, grad_accum_steps=4, lr_base=4e-3, lr_base_size=4096,
                      epochs=300, model_ema=True, amp=False),
    Published(('l2vit_base',), 'drop_path', 0.3, L2_README + ' (L2ViT_Base --drop_path 0.3)'),
    *published_values(L2_FT, L2_README, batch_size=64, grad_accum_steps=2, lr_base=4e-5, lr_base_size=1024,
                      epochs=30, weight_decay=1e-8, warmup_epochs=5, warmup_lr=4e-8, min_lr=4e-7, drop_path=0.2,
                      model_ema=True, amp=False),
    *published_values(L2_22K, L2_README, num_classes=21841, batch_size=128, lr_base=1e-3, lr_base_size=1024,
                      epochs=90, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5, drop_path=0.2, model_ema=False,
                      amp=False, weight_decay=0.05),
    *published_values(L2_1K, L2_MAIN, weight_decay=0.05, warmup_epochs=20, warmup_lr=0.0, min_lr=1e-6),
    *published_values(L2_ALL, L2_MAIN, opt='adamw', opt_eps=1e-8, lr_schedule='CosineLRScheduler',
                      sched_on_updates=True, warmup_prefix=True, aa='rand-m9-mstd0.5-inc1', color_jitter=0.4,
                      mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5, smoothing=0.1, reprob=0.25,
                      remode='pixel', recount=1, train_interpolation='bicubic'),
    *published_values(L2_1K + L2_FT, L2_MAIN, model_ema_decay=0.9999),
    *published_values(L2_1K + L2_22K + ('l2vit_base.in22k_ft_in1k',), 'ChuanyangZheng/L2ViT classification/'
                      'datasets.py: resize 256, center crop 224', img_size=224, eval_crop_pct=0.875),
    *published_values(('l2vit_base_384',), 'ChuanyangZheng/L2ViT classification/datasets.py: 384 resized, no crop',
                      img_size=384, eval_crop_pct=1.0),
    # S2AFormer: only the length and resolution are published
    Published(S2AFORMER, 'epochs', 300, S2A_PAPER),
    Published(S2AFORMER, 'img_size', 224, S2A_PAPER),
    # FLatten
    *_flatten_published(),
    # InLine (every value of the Swin config system: config.py defaults overridden by the variant's cfgs/*.yaml)
    Published(IL_ALL, 'opt', 'adamw', IL_CONFIG),
    Published(IL_ALL, 'adamw_eps', 1e-8, IL_CONFIG + ' TRAIN.OPTIMIZER.EPS'),
    Published(IL_ALL, 'lr_schedule', 'CosineLRScheduler', IL_CONFIG + ' TRAIN.LR_SCHEDULER.NAME cosine'),
    Published(IL_ALL, 'sched_on_updates', True, 'LeapLabTHU/InLine lr_scheduler.py: t_in_epochs=False'),
    Published(IL_ALL, 'lr_base_size', 512, IL_SCALE),
    Published(IL_ALL, 'lr_base_scale', 'linear', IL_SCALE),
    Published(IL_ALL, 'aa', 'rand-m9-mstd0.5-inc1', IL_CONFIG),
    Published(IL_ALL, 'color_jitter', 0.4, IL_CONFIG),
    Published(IL_ALL, 'mixup', 0.8, IL_CONFIG),
    Published(IL_ALL, 'cutmix', 1.0, IL_CONFIG),
    Published(IL_ALL, 'smoothing', 0.1, IL_CONFIG + ' MODEL.LABEL_SMOOTHING'),
    Published(IL_ALL, 'reprob', 0.25, IL_CONFIG),
    Published(IL_ALL, 'remode', 'pixel', IL_CONFIG),
    Published(IL_ALL, 'train_interpolation', 'bicubic', IL_CONFIG + ' DATA.INTERPOLATION'),
    Published(IL_ALL, 'amp', True, IL_README),
    Published(IL_SWIN + IL_PVT + IL_DEIT, 'model_ema', False, 'LeapLabTHU/InLine main.py (no EMA)'),
    Published(IL_DEIT[:1], 'img_size', 224, IL_CONFIG + ' DATA.IMG_SIZE'),
    Published(IL_DEIT[1:2], 'img_size', 288, IL_CFG + ' DATA.IMG_SIZE'),
    Published(IL_DEIT[2:], 'img_size', 448, IL_CFG + ' DATA.IMG_SIZE'),
    Published(IL_DEIT[:1], 'batch_size', 512, IL_CFG + ' DATA.BATCH_SIZE'),
    Published(IL_DEIT[1:2], 'batch_size', 128, IL_CFG + ' DATA.BATCH_SIZE'),
    Published(IL_DEIT[2:], 'batch_size', 64, IL_CFG + ' DATA.BATCH_SIZE'),
    Published(IL_DEIT, 'epochs_run', 300, IL_CONFIG + ' (COOLDOWN_EPOCHS 0)'),
    Published(IL_DEIT, 'warmup_epochs', 20, IL_CONFIG),
    Published(IL_DEIT, 'lr_base', 5e-4, IL_CONFIG),
    Published(IL_DEIT, 'weight_decay', 0.05, IL_CONFIG),
    Published(IL_DEIT, 'clip_grad', 5.0, IL_CONFIG),
    Published(IL_DEIT, 'drop_path', 0.1, IL_CONFIG + ' MODEL.DROP_PATH_RATE'),
    Published(IL_DEIT[:1], 'warmup_lr', 4e-6, IL_SCALE + ': 5e-7 x 4096 / 512'),
    Published(IL_DEIT[:1], 'min_lr', 4e-5, IL_SCALE + ': 5e-6 x 4096 / 512'),
    Published(IL_DEIT[1:2], 'warmup_lr', 1e-6, IL_SCALE + ': 5e-7 x 1024 / 512'),
    Published(IL_DEIT[1:2], 'min_lr', 1e-5, IL_SCALE + ': 5e-6 x 1024 / 512'),
    Published(IL_DEIT[2:], 'warmup_lr', 5e-7, IL_SCALE + ': 5e-7 x 512 / 512'),
    Published(IL_DEIT[2:], 'min_lr', 5e-6, IL_SCALE + ': 5e-6 x 512 / 512'),
    Published(IL_PVT, 'img_size', 224, IL_CFG),
    Published(IL_PVT, 'epochs_run', 310, IL_CFG + ' EPOCHS 300 + COOLDOWN_EPOCHS 10 (main.py)'),
    Published(IL_PVT, 'warmup_epochs', 5, IL_CFG),
    Published(IL_PVT, 'lr_base', 5e-4, IL_CFG),
    Published(IL_PVT, 'weight_decay', 0.05, IL_CFG),
    Published(IL_PVT[:3], 'batch_size', 128, IL_CFG + ' DATA.BATCH_SIZE'),
    Published(IL_PVT[3:], 'batch_size', 64, IL_CFG + ' (cfgs/inline_pvt_b.yaml) DATA.BATCH_SIZE'),
    Published(IL_PVT[:3], 'warmup_lr', 2e-6, IL_SCALE + ': 1e-6 x 1024 / 512'),
    Published(IL_PVT[:3], 'min_lr', 2e-5, IL_SCALE + ': 1e-5 x 1024 / 512'),
    Published(IL_PVT[3:], 'warmup_lr', 1e-6, IL_SCALE + ': 1e-6 x 512 / 512'),
    Published(IL_PVT[3:], 'min_lr', 1e-5, IL_SCALE + ': 1e-5 x 512 / 512'),
    Published(IL_PVT[:2], 'clip_grad', None, IL_CFG + ' CLIP_GRAD None'),
    Published(IL_PVT[2:], 'clip_grad', 1.0, IL_CFG + ' CLIP_GRAD 1.0'),
    Published(IL_PVT[:2], 'drop_path', 0.1, IL_CFG),
    Published(IL_PVT[2:], 'drop_path', 0.3, IL_CFG),
    Published(IL_SWIN, 'clip_grad', 5.0, IL_CONFIG),
    Published(IL_SWIN_1K + IL_CSWIN_1K, 'img_size', 224, IL_CONFIG),
    Published(IL_SWIN_1K, 'epochs_run', 300, IL_CONFIG + ' (no cooldown in main.py)'),
    Published(IL_SWIN_1K + IL_CSWIN_1K, 'warmup_epochs', 20, IL_CONFIG),
    Published(IL_SWIN_1K + IL_CSWIN_1K, 'lr_base', 5e-4, IL_CONFIG + ' / ' + IL_CFG),
    Published(IL_SWIN_1K + ('inline_cswin_tiny', 'inline_cswin_small'), 'weight_decay', 0.05, IL_CFG),
    Published(('inline_swin_tiny', 'inline_swin_small', 'inline_cswin_tiny', 'inline_cswin_small'), 'batch_size', 128,
              IL_CFG + ' DATA.BATCH_SIZE'),
    Published(('inline_swin_base', 'inline_cswin_base'), 'batch_size', 64, IL_CFG + ' DATA.BATCH_SIZE'),
    Published(('inline_swin_tiny', 'inline_swin_small'), 'warmup_lr', 1e-6, IL_SCALE + ': 5e-7 x 1024 / 512'),
    Published(('inline_swin_tiny', 'inline_swin_small'), 'min_lr', 1e-5, IL_SCALE + ': 5e-6 x 1024 / 512'),
    Published(('inline_swin_base',), 'warmup_lr', 5e-7, IL_SCALE + ': 5e-7 x 512 / 512'),
    Published(('inline_swin_base',), 'min_lr', 5e-6, IL_SCALE + ': 5e-6 x 512 / 512'),
    Published(('inline_swin_tiny',), 'drop_path', 0.2, IL_CFG),
    Published(('inline_swin_small',), 'drop_path', 0.3, IL_CFG),
    Published(('inline_swin_base', 'inline_swin_base_384'), 'drop_path', 0.5, IL_CFG),
    Published(('inline_swin_base_384',), 'img_size', 384, IL_CFG),
    Published(('inline_swin_base_384',), 'eval_crop_pct', 1.0, IL_CFG + ' TEST.CROP False'),
    Published(('inline_swin_base_384',), 'batch_size', 32, IL_CFG),
    Published(('inline_swin_base_384',), 'epochs_run', 30, IL_CFG),
    Published(('inline_swin_base_384',), 'warmup_epochs', 5, IL_CFG),
    Published(('inline_swin_base_384',), 'weight_decay', 1e-8, IL_CFG),
    Published(('inline_swin_base_384',), 'lr_base', 2e-5, IL_CFG),
    Published(('inline_swin_base_384',), 'warmup_lr', 1e-8, IL_SCALE + ': 2e-8 x 256 / 512'),
    Published(('inline_swin_base_384',), 'min_lr', 1e-7, IL_SCALE + ': 2e-7 x 256 / 512'),
    Published(IL_CSWIN, 'model_ema', True, IL_EMA),
    Published(IL_CSWIN_1K, 'epochs_run', 310, IL_CFG + ' EPOCHS 300 + COOLDOWN_EPOCHS 10 (main_ema.py)'),
    Published(('inline_cswin_tiny', 'inline_cswin_small'), 'model_ema_decay', 0.9999, IL_EMA + ': 1024 -> 0.99990'),
    Published(('inline_cswin_base',), 'model_ema_decay', 0.99995, IL_EMA + ': 512 -> 0.99995'),
    Published(('inline_cswin_base_384',), 'model_ema_decay', 0.999975, IL_EMA + ': 256 -> 0.999975'),
    Published(('inline_cswin_tiny', 'inline_cswin_small'), 'warmup_lr', 2e-6, IL_SCALE + ': 1e-6 x 1024 / 512'),
    Published(('inline_cswin_tiny', 'inline_cswin_small'), 'min_lr', 2e-5, IL_SCALE + ': 1e-5 x 1024 / 512'),
    Published(('inline_cswin_base',), 'warmup_lr', 1e-6, IL_SCALE + ': 1e-6 x 512 / 512'),
    Published(('inline_cswin_base',), 'min_lr', 1e-5, IL_SCALE + ': 1e-5 x 512 / 512'),
    Published(('inline_cswin_base',), 'weight_decay', 0.1, IL_CFG),
    Published(('inline_cswin_tiny',), 'drop_path', 0.2, IL_CFG),
    Published(('inline_cswin_small',), 'drop_path', 0.4, IL_CFG),
    Published(('inline_cswin_base',), 'drop_path', 0.5, IL_CFG),
    Published(('inline_cswin_base_384',), 'drop_path', 0.7, IL_CFG),
    Published(('inline_cswin_base_384',), 'img_size', 384, IL_CFG),
    Published(('inline_cswin_base_384',), 'batch_size', 32, IL_CFG),
    Published(('inline_cswin_base_384',), 'epochs_run', 30, IL_CFG + ' EPOCHS 20 + COOLDOWN_EPOCHS 10'),
    Published(('inline_cswin_base_384',), 'warmup_epochs', 0, IL_CFG),
    Published(('inline_cswin_base_384',), 'weight_decay', 1e-8, IL_CFG),
    Published(('inline_cswin_base_384',), 'lr_base', 5e-6, IL_CFG),
    Published(('inline_cswin_base_384',), 'warmup_lr', 2.5e-6, IL_SCALE + ': 5e-6 x 256 / 512'),
    Published(('inline_cswin_base_384',), 'min_lr', 2.5e-7, IL_SCALE + ': 5e-7 x 256 / 512'),
    # ViTAEv2-VSA, ImageNet-1k from scratch (main.py defaults + the two released training scripts)
    *published_values(VSA_RELEASED, VSA_MAIN, epochs=300, cooldown_epochs=10, epochs_run=310, opt='adamw',
                      lr_schedule='CosineLRScheduler', warmup_epochs=10, warmup_lr=1e-6, min_lr=1e-5,
                      train_interpolation='random', aa='rand-m9-mstd0.5-inc1', color_jitter=0.4, mixup=0.8,
                      cutmix=1.0, smoothing=0.1, reprob=0.25, remode='pixel', model_ema=True, amp=False,
                      lr_base=5e-4, lr_base_size=512),
    Published(VSA_RELEASED, 'lr_at_global_batch_1024', 1e-3, VSA_MAIN + ': lr 5e-4 x global batch / 512'),
    Published(VSA_RELEASED, 'model_ema_decay', 0.9999200016,
              VSA_MAIN + ': --model-ema-decay 0.99996 ** (global batch 1024 // 512) = 0.99996 ** 2'),
    Published(('vitaev2_vsa_s',), 'drop_path', 0.1, VSA_MAIN + ' (the S script sets none)'),
    *published_values(('vitaev2_vsa_s',), VSA_S_SH, batch_size=128, weight_decay=0.05, img_size=224),
    *published_values(('vitaev2_vsa_48m',), VSA_48M_SH, batch_size=64, weight_decay=0.055, drop_path=0.25,
                      img_size=224),
]

ASSUMED = [
    Assumed(tuple(FL_CFGS), ('lr_base_scale',), 'main.py scales linearly from 512; the trainer\'s linear scaling to '
            'the actual global batch does the same'),
    Assumed(('flatten_pvt_v2_b5',), ('img_size', 'crop_pct', 'train_interpolation', 'batch_size', 'epochs', 'opt',
                                     'opt_eps', 'lr_base', 'lr_base_size', 'lr_base_scale', 'weight_decay', 'sched',
                                     'sched_on_updates', 'warmup_epochs', 'warmup_lr', 'min_lr', 'clip_grad',
                                     'drop_path', 'aa', 'color_jitter', 'mixup', 'cutmix', 'mixup_prob',
                                     'mixup_switch_prob', 'smoothing', 'reprob', 'remode', 'recount', 'model_ema',
                                     'amp'),
            'the repository has no config for FLatten-PVTv2-B5 (models/flatten_pvt_v2.py defines it): B4\'s is '
            'assumed'),
    Assumed(NAT_1K, ('lr_base_size', 'lr_base_scale'),
            'the configs give lr 1e-3 at 128 images per GPU; the global batch 1024 (8 GPUs) it is scaled from is '
            'not stated in the repository, and linear scaling to other batches is hiervit\'s'),
    Assumed(NAT_FT, ('batch_size',), 'the GPU count of the fine-tunes is not given; the lr is not rescaled'),
    Assumed(NAT_21K, ('img_size', 'crop_pct', 'train_interpolation', 'batch_size', 'epochs', 'cooldown_epochs', 'opt',
                      'lr_base', 'lr_base_size', 'lr_base_scale', 'weight_decay', 'model_wd_exempt', 'sched',
                      'sched_on_updates', 'warmup_epochs', 'warmup_lr', 'min_lr', 'clip_grad', 'aa', 'mixup',
                      'cutmix', 'smoothing', 'reprob', 'remode', 'model_ema', 'amp'),
            'the ImageNet-22k pretraining recipe was never released (DiNAT.md: "details will be released soon"); '
            'these follow the family\'s ImageNet-1k recipe'),
    Assumed(('biformer_base',), ('drop_path',), 'the repository gives no drop path for BiFormer-B'),
    Assumed(CSWIN_1K, ('lr_base_scale',), 'linear scaling of the README\'s lr to other global batches is hiervit\'s'),
    Assumed(('cswin_base_384',), ('crop_pct',), 'finetune.py uses the model\'s default crop (1.0 at 384)'),
    Assumed(('cswin_large_384',), ('img_size', 'crop_pct', 'batch_size', 'epochs', 'lr', 'min_lr', 'weight_decay',
                                   'train_interpolation', 'interpolation', 'mixup', 'cutmix', 'drop_path',
                                   'model_ema_decay', 'grad_checkpointing', 'cooldown_epochs', 'opt', 'sched',
                                   'warmup_epochs', 'warmup_lr', 'aa', 'color_jitter', 'smoothing', 'reprob', 'remode',
                                   'model_ema', 'amp'),
            'the README publishes no 384 fine-tune of CSWin-L: its 224 command is assumed, at 384'),
    Assumed(L2_ALL, ('lr_base_scale',), 'linear scaling of the README\'s lr to other total batches is hiervit\'s'),
    Assumed(('l2vit_tiny', 'l2vit_small'), ('drop_path',), 'the README gives the drop path of L2ViT-B only'),
    Assumed(DAVIT, ('lr_base_size', 'lr_base_scale'),
            'the README gives lr 1e-3 at global batch 1024; linear scaling to other batches is hiervit\'s'),
    Assumed(('davit_small', 'davit_base'), ('drop_path',), 'the repository gives no per-variant drop path'),
    Assumed(S2AFORMER, ('crop_pct', 'train_interpolation', 'batch_size', 'cooldown_epochs', 'opt', 'lr_base',
                        'lr_base_size', 'lr_base_scale', 'weight_decay', 'sched', 'warmup_epochs', 'warmup_lr',
                        'min_lr', 'drop_path', 'aa', 'mixup', 'cutmix', 'smoothing', 'reprob', 'remode', 'amp'),
            'the paper does not publish its recipe: the DeiT/PVT standard recipe is assumed'),
    Assumed(VSA_RELEASED, ('lr_base_scale',), 'main.py scales the lr linearly by global batch / 512; hiervit does it '
            'for any batch'),
    Assumed(('vitaev2_vsa_b',) + SWIN_VSA, (
        'img_size', 'batch_size', 'lr_base', 'lr_base_size', 'lr_base_scale', 'weight_decay', 'drop_path',
        'model_ema_decay', 'epochs', 'cooldown_epochs', 'opt', 'sched', 'warmup_epochs', 'warmup_lr', 'min_lr',
        'train_interpolation', 'aa', 'color_jitter', 'mixup', 'cutmix', 'smoothing', 'reprob', 'remode', 'model_ema',
        'amp'),
            'no recipe was released for ViTAEv2-B+VSA or Swin+VSA: the released ViTAEv2-VSA recipe is assumed (the '
            '48M one for B), with Swin\'s drop path for Swin+VSA'),
]


@pytest.mark.parametrize('recipe', RECIPES)
def test_recipe_matches_published_values(recipe):
    wrong = []
    for entry in PUBLISHED:
        if recipe not in entry.recipes:
            continue
        got = DERIVED[entry.key][0](recipe) if entry.key in DERIVED else getattr(recipe_args(recipe), entry.key)
        if got != entry.value:
            wrong.append(f'{entry.key} is {got!r}, {entry.source} says {entry.value!r}')
    assert not wrong, f'{recipe}: ' + '; '.join(wrong)


@pytest.mark.parametrize('recipe', RECIPES)
def test_every_recipe_value_has_a_source(recipe):
    keys = set(load_recipe(recipe_path(recipe), build_train_parser())) - {'model'}
    covered = set()
    for entry in PUBLISHED:
        if recipe in entry.recipes:
            covered.update(DERIVED[entry.key][1] if entry.key in DERIVED else (entry.key,))
    for assumed in ASSUMED:
        if recipe in assumed.recipes:
            covered.update(assumed.keys)
    missing = sorted(keys - covered)
    assert not missing, (f'configs/classification/{recipe}.yaml sets {missing} without a PUBLISHED entry (value + '
                         f'source) or an ASSUMED one (reason) in {__file__}')


def recipe_path(name: str) -> str:
    return os.path.join(CONFIG_ROOT, 'classification', f'{name}.yaml')


def test_table_names_only_bundled_recipes_and_known_keys():
    dests = {a.dest for a in build_train_parser()._actions}
    for entry in PUBLISHED:
        assert set(entry.recipes) <= set(RECIPES), entry
        assert entry.key in DERIVED or entry.key in dests, entry
        assert entry.source, entry


@pytest.mark.parametrize('path', CLASSIFICATION + DEMO, ids=os.path.basename)
def test_recipe_loads_and_builds_its_model(path):
    cfg = load_recipe(path, build_train_parser())  # raises on a key that is not a flag dest
    # hiervit's models, or timm's own families that hiervit ships recipes for (DaViT)
    assert cfg['model'] in timm.list_models(), f'{path} names an unregistered model {cfg["model"]!r}'
    args = recipe_args(path)
    model = recipe_model(path)  # kwargs, drop path and classes accepted, on the meta device
    assert sum(p.numel() for p in model.parameters()) > 0
    if args.drop_path:
        rates = [m.drop_prob for m in model.modules() if isinstance(m, timm.layers.DropPath)]
        # ViTAEv2-VSA's released schedule (official_drop_path_rates) peaks below the rate
        peak = max(max(r) for r in official_drop_path_rates(args.drop_path, model.depths)) if getattr(
            model, 'official_dpr', False) else args.drop_path
        assert rates and max(rates) == pytest.approx(peak), path


def test_classification_recipe_names_match_models():
    # `<model>.yaml`, or `<model>.<tag>.yaml` for a further recipe of the same model (pre-training, fine-tuning)
    for path in CLASSIFICATION:
        name = os.path.splitext(os.path.basename(path))[0].split('.')[0]
        assert load_recipe(path, build_train_parser())['model'] == name, path


def test_every_registered_model_has_a_recipe():
    missing = sorted(set(hiervit.list_hiervit_models()) - {r.split('.')[0] for r in RECIPES})
    assert not missing, f'add configs/classification/<model>.yaml for {missing}'
