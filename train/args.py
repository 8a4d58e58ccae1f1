"""Command-line flags of `hiervit-train` and `hiervit-validate`, and YAML recipe loading.

Flag names, dests and defaults follow timm's train.py / validate.py so that timm recipes and habits carry over. A recipe
(`-c/--config`) is a YAML mapping whose keys are flag dests (`batch_size`, `drop_path`, ...); it sets the defaults
and the command line overrides it. An unknown key is an error naming the key, never silently ignored.
"""
import argparse
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import yaml
from timm.utils import ParseKwargs

__all__ = ['build_train_parser', 'build_validate_parser', 'parse_with_config', 'load_recipe', 'recipe_path']

_CONFIG_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def _add_data_args(parser: argparse.ArgumentParser, training: bool) -> None:
    group = parser.add_argument_group('Dataset')
    group.add_argument('data', nargs='?', metavar='DIR', help='path to dataset (positional, deprecated)')
    group.add_argument('--data-dir', metavar='DIR', help='path to the dataset root (folder, .tar, or IDX folder)')
    group.add_argument('--dataset', metavar='NAME', default='',
                       help="'' (ImageFolder / tar), 'torch/<name>', 'hfds/<name>' or 'fashion_mnist'")
    if training:
        group.add_argument('--train-split', metavar='NAME', default='train', help='training split')
    group.add_argument('--val-split', metavar='NAME', default='validation', help='validation split')
    group.add_argument('--dataset-download', action='store_true', default=False,
                       help='allow torchvision datasets to download (only when a network is reachable)')
    group.add_argument('--class-map', default='', type=str, metavar='FILENAME', help='class-name to index map file')
    group.add_argument('--input-img-mode', default=None, type=str, help='PIL mode the images are converted to')


def _add_model_args(parser: argparse.ArgumentParser, training: bool) -> None:
    group = parser.add_argument_group('Model')
    group.add_argument('--model', default=None, type=str, metavar='MODEL', help='name of the model to create')
    group.add_argument('--pretrained', action='store_true', default=False, help='start from pretrained weights')
    group.add_argument('--pretrained-path', default=None, type=str, help='local file overriding the pretrained_cfg')
    # hiervit-validate takes the weights with --checkpoint; it keeps this flag only to refuse it by name
    group.add_argument('--initial-checkpoint', default='', type=str, metavar='PATH',
                       help='load these weights first (EMA weights when the file has them, as timm)' if training
                       else argparse.SUPPRESS)
    group.add_argument('--num-classes', type=int, default=None, metavar='N', help='number of label classes')
    group.add_argument('--in-chans', type=int, default=None, metavar='N', help='image input channels')
    group.add_argument('--img-size', type=int, default=None, metavar='N', help='image size (square)')
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N',
                       help='input dims (C H W), overrides --img-size')
    group.add_argument('--crop-pct', default=None, type=float, metavar='N', help='eval crop fraction')
    group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN', help='normalisation mean')
    group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD', help='normalisation std')
    group.add_argument('--interpolation', default='', type=str, metavar='NAME', help='resize interpolation')
    group.add_argument('-b', '--batch-size', type=int, default=128, metavar='N', help='batch size per process')
    group.add_argument('--channels-last', action='store_true', default=False, help='use channels_last memory layout')
    group.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor',
                       help='torch.compile the model with this backend')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                       help='extra model constructor kwargs, k=v ...')
    group.add_argument('--amp', action='store_true', default=False, help='mixed precision (autocast)')
    group.add_argument('--amp-dtype', default='float16', type=str, choices=('float16', 'bfloat16'),
                       help='autocast dtype (float16 uses a GradScaler and needs a GPU)')
    group.add_argument('--device', default=None, type=str, help="'cpu', 'cuda' or 'cuda:N' (default: cuda if present)")
    group.add_argument('--threads', type=int, default=None, metavar='N',
                       help='torch intra-op CPU threads (default: torch\'s choice); 1 is fastest for tiny models on '
                            'a busy machine')
    group.add_argument('-j', '--workers', type=int, default=4, metavar='N', help='data loading worker processes')
    group.add_argument('--pin-mem', action='store_true', default=False, help='pin loader memory (GPU)')
    group.add_argument('--log-interval', type=int, default=50, metavar='N',
                       help='log a line every N optimizer updates (training) or batches (validation)')


def build_train_parser() -> argparse.ArgumentParser:
    """Parser of `hiervit-train`; flags follow timm's train.py."""
    parser = argparse.ArgumentParser(prog='hiervit-train', description='Train a hiervit (or any timm) model')
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                        help='YAML recipe (keys are flag dests) or the name of a bundled recipe')
    _add_data_args(parser, training=True)
    _add_model_args(parser, training=True)

    group = parser.add_argument_group('Model extras')
    group.add_argument('--grad-checkpointing', action='store_true', default=False, help='activation checkpointing')
    group.add_argument('--sync-bn', action='store_true', default=False, help='SyncBatchNorm in distributed runs')
    group.add_argument('--dist-bn', type=str, default='reduce', choices=('reduce', 'broadcast', ''),
                       help='distributed runs: average (reduce) or copy rank 0\'s (broadcast) BatchNorm statistics '
                            'at the end of each epoch')
    group.add_argument('--grad-accum-steps', type=int, default=1, metavar='N', help='batches per optimizer update')

    group = parser.add_argument_group('Optimizer')
    group.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER', help='timm optimizer name')
    group.add_argument('--opt-eps', default=None, type=float, metavar='EPSILON', help='optimizer epsilon')
    group.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA', help='optimizer betas')
    group.add_argument('--momentum', type=float, default=0.9, metavar='M', help='SGD momentum')
    group.add_argument('--weight-decay', type=float, default=2e-5, help='weight decay (norms/biases/no_weight_decay '
                                                                        'exempt)')
    group.add_argument('--model-wd-exempt', dest='model_wd_exempt', action=argparse.BooleanOptionalAction,
                       default=True, help="exempt the model's no_weight_decay() parameters from weight decay (timm); "
                                          "--no-model-wd-exempt exempts only 1-D parameters and biases")
    group.add_argument('--clip-grad', type=float, default=None, metavar='NORM', help='clip gradient (off if unset)')
    group.add_argument('--clip-mode', type=str, default='norm', help="'norm', 'value' or 'agc'")
    group.add_argument('--layer-decay', type=float, default=None, help='layer-wise lr decay (uses group_matcher)')
    group.add_argument('--opt-kwargs', dest='opt_args', nargs='*', default=None, action=ParseKwargs,
                       help='extra optimizer kwargs, k=v ...')

    group = parser.add_argument_group('Learning rate schedule')
    group.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER',
                       help="timm scheduler name ('none': constant --lr)")
    group.add_argument('--sched-on-updates', action='store_true', default=False, help='step the schedule per update')
    group.add_argument('--sched-epoch-offset', type=int, default=1, choices=(0, 1),
                       help='after epoch e the per-epoch schedule steps to e + OFFSET: 1 as timm (epoch e trains at '
                            'lr(e)), 0 as DeiT/BiFormer main.py\'s lr_scheduler.step(epoch) (epoch e > 0 at lr(e - 1))')
    group.add_argument('--lr', type=float, default=None, metavar='LR', help='learning rate (overrides --lr-base)')
    group.add_argument('--lr-base', type=float, default=0.1, metavar='LR',
                       help='base lr at --lr-base-size global batch, scaled to the actual global batch')
    group.add_argument('--lr-base-size', type=int, default=256, metavar='DIV', help='batch size of --lr-base')
    group.add_argument('--lr-base-scale', type=str, default='', metavar='SCALE',
                       help="'linear' or 'sqrt' (default: sqrt for adaptive optimizers, else linear)")
    group.add_argument('--lr-noise', type=float, nargs='+', default=None, metavar='pct, pct', help='lr noise range')
    group.add_argument('--lr-noise-pct', type=float, default=0.67, metavar='PERCENT', help='lr noise limit')
    group.add_argument('--lr-noise-std', type=float, default=1.0, metavar='STDDEV', help='lr noise std-dev')
    group.add_argument('--lr-cycle-mul', type=float, default=1.0, metavar='MULT', help='cycle length multiplier')
    group.add_argument('--lr-cycle-decay', type=float, default=0.5, metavar='MULT', help='lr decay per cycle')
    group.add_argument('--lr-cycle-limit', type=int, default=1, metavar='N', help='cycle limit')
    group.add_argument('--lr-k-decay', type=float, default=1.0, help='k-decay of cosine/poly')
    group.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR', help='warmup start lr')
    group.add_argument('--min-lr', type=float, default=0, metavar='LR', help='lower lr bound')
    group.add_argument('--epochs', type=int, default=300, metavar='N', help='epochs to train')
    group.add_argument('--start-epoch', default=None, type=int, metavar='N', help='manual epoch number (restarts)')
    group.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+', metavar='MILESTONES',
                       help="epochs of the 'multistep' decays")
    group.add_argument('--decay-epochs', type=float, default=90, metavar='N', help='epochs between step decays')
    group.add_argument('--warmup-epochs', type=int, default=5, metavar='N', help='linear warmup epochs')
    group.add_argument('--warmup-prefix', action='store_true', default=False, help='warmup excluded from the decay')
    group.add_argument('--cooldown-epochs', type=int, default=0, metavar='N', help='epochs at min lr after decay')
    group.add_argument('--patience-epochs', type=int, default=10, metavar='N', help='plateau patience')
    group.add_argument('--decay-rate', '--dr', type=float, default=0.1, metavar='RATE', help='lr decay rate')

    group = parser.add_argument_group('Augmentation and regularization')
    group.add_argument('--no-aug', action='store_true', default=False, help='disable training augmentation')
    group.add_argument('--train-crop-mode', type=str, default=None, help="'rrc' (default) or 'rkrc'/'rkrr'")
    group.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0], metavar='PCT', help='RRC scale range')
    group.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO',
                       help='RRC aspect-ratio range')
    group.add_argument('--hflip', type=float, default=0.5, help='horizontal flip probability')
    group.add_argument('--vflip', type=float, default=0., help='vertical flip probability')
    group.add_argument('--color-jitter', type=float, default=0.4, metavar='PCT', help='color jitter factor')
    group.add_argument('--aa', type=str, default=None, metavar='NAME', help="auto-augment, e.g. 'rand-m9-mstd0.5-inc1'")
    group.add_argument('--aug-repeats', type=float, default=0,
                       help='repeated-augmentation count, a whole number (distributed runs only; 0: off)')
    group.add_argument('--reprob', type=float, default=0., metavar='PCT', help='random erasing probability')
    group.add_argument('--remode', type=str, default='pixel', help='random erasing mode')
    group.add_argument('--recount', type=int, default=1, help='random erasing count')
    group.add_argument('--mixup', type=float, default=0.0, help='mixup alpha (on if > 0)')
    group.add_argument('--cutmix', type=float, default=0.0, help='cutmix alpha (on if > 0)')
    group.add_argument('--cutmix-minmax', type=float, nargs='+', default=None, help='cutmix min/max ratio')
    group.add_argument('--mixup-prob', type=float, default=1.0, help='probability of mixup or cutmix per batch')
    group.add_argument('--mixup-switch-prob', type=float, default=0.5, help='probability of cutmix when both on')
    group.add_argument('--mixup-mode', type=str, default='batch', help="'batch', 'pair' or 'elem'")
    group.add_argument('--mixup-off-epoch', default=0, type=int, metavar='N', help='turn mixup off at this epoch')
    group.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    group.add_argument('--train-interpolation', type=str, default='random', help='training interpolation')
    group.add_argument('--drop', type=float, default=0.0, metavar='PCT', help='classifier dropout')
    group.add_argument('--drop-path', type=float, default=None, metavar='PCT', help='stochastic depth rate')

    group = parser.add_argument_group('Model exponential moving average')
    group.add_argument('--model-ema', action='store_true', default=False, help='track an EMA of the weights')
    group.add_argument('--model-ema-decay', type=float, default=0.9998, help='EMA decay')
    group.add_argument('--model-ema-warmup', action='store_true', help='EMA decay warmup')
    group.add_argument('--model-ema-best', dest='model_ema_best', action=argparse.BooleanOptionalAction, default=True,
                       help="pick model_best by the EMA's eval metric when an EMA is tracked (timm); "
                            "--no-model-ema-best uses the live model's (DeiT/BiFormer main.py)")

    group = parser.add_argument_group('Misc')
    group.add_argument('--seed', type=int, default=42, metavar='S', help='random seed')
    group.add_argument('--checkpoint-hist', type=int, default=10, metavar='N', help='epoch checkpoints to keep')
    group.add_argument('--resume', default='', type=str, metavar='PATH', help='resume the full training state')
    group.add_argument('--no-resume-opt', action='store_true', default=False, help='resume weights only')
    group.add_argument('--output', default='', type=str, metavar='PATH', help='output folder (default ./output/train)')
    group.add_argument('--experiment', default='', type=str, metavar='NAME', help='run sub-folder name')
    group.add_argument('--eval-metric', default='top1', type=str, metavar='EVAL_METRIC', help="'top1' or 'loss'")
    group.add_argument('--no-eval', action='store_true', default=False, help='skip the per-epoch validation')
    group.add_argument('--log-tb', dest='log_tb', action=argparse.BooleanOptionalAction, default=True,
                       help='TensorBoard logs (when tensorboard is installed)')
    group.add_argument('--no-progress', action='store_true', default=False,
                       help='plain log lines even on a terminal (without a terminal there are never bars)')
    group.add_argument('--deterministic', action='store_true', default=False,
                       help='deterministic algorithms (cudnn / torch.use_deterministic_algorithms)')
    group.add_argument('--stop-after-steps', type=int, default=None, metavar='N',
                       help='save a resumable checkpoint and stop after N optimizer updates in total')
    return parser


def build_validate_parser() -> argparse.ArgumentParser:
    """Parser of `hiervit-validate`; flags follow timm's validate.py."""
    parser = argparse.ArgumentParser(prog='hiervit-validate', description='Validate a hiervit (or any timm) model')
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE', help='YAML file of flag dests')
    _add_data_args(parser, training=False)
    _add_model_args(parser, training=False)
    parser.add_argument('--checkpoint', default='', type=str, metavar='PATH',
                        help='weights: .pth/.pth.tar/.safetensors of hiervit-train, timm, DeiT/BiFormer or NAT '
                             '(its stored args bring the model and data settings along)')
    parser.add_argument('--use-ema', dest='use_ema', action='store_true', help='use the checkpoint\'s EMA weights')
    parser.add_argument('--num-samples', type=int, default=None, metavar='N', help='validate on the first N samples')
    parser.add_argument('--results-file', default='', type=str, metavar='FILENAME', help='write results JSON here')
    return parser


def recipe_path(name_or_path: str) -> str:
    """Path of a recipe given a file or the name of a bundled one (`nat_tiny`, `demo/fashion_mnist_nat`)."""
    if os.path.isfile(name_or_path):
        return name_or_path
    for sub in ('', 'classification', 'demo'):
        candidate = os.path.join(_CONFIG_ROOT, sub, name_or_path)
        for path in (candidate, candidate + '.yaml'):
            if os.path.isfile(path):
                return path
    raise ValueError(f'--config: no recipe file or bundled recipe named {name_or_path!r} '
                     f'(bundled recipes live in {_CONFIG_ROOT}/classification and /demo)')


def load_recipe(path: str, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """Read a YAML recipe and check that every key is a dest of `parser`."""
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f'--config {path}: a recipe must be a YAML mapping of flag dests to values')
    known = {a.dest for a in parser._actions} - {'help', 'config'}
    unknown = sorted(set(cfg) - known)
    if unknown:
        hints = [f'{k!r} (did you mean {k.replace("-", "_")!r}?)' if k.replace('-', '_') in known else repr(k)
                 for k in unknown]
        raise ValueError(f'--config {path}: unknown key(s) {", ".join(hints)}; keys must be flag dests '
                         f'such as batch_size, drop_path, model_kwargs')
    return cfg


def parse_with_config(
        parser: argparse.ArgumentParser,
        argv: Optional[Sequence[str]] = None,
) -> Tuple[argparse.Namespace, str]:
    """Parse `argv` with a recipe from `-c/--config` as defaults; returns the args and their YAML text."""
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument('-c', '--config', default='', type=str)
    known, remaining = config_parser.parse_known_args(argv)
    if known.config:
        path = recipe_path(known.config)
        parser.set_defaults(**load_recipe(path, parser), config=path)
    args = parser.parse_args(remaining)
    if args.data and not args.data_dir:
        args.data_dir = args.data
    args_text = yaml.safe_dump(_plain(vars(args)), default_flow_style=False)
    return args, args_text


def _plain(obj: Any) -> Any:
    """Tuples -> lists so the args dump is plain YAML (and loads back as a recipe)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj

