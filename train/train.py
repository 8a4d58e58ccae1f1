"""`hiervit-train`: ImageNet-style training of hiervit (or any timm) models on timm's library components.

Single process: `hiervit-train -c nat_tiny --data-dir /data/imagenet`. Distributed (DDP; nccl on GPU, gloo on CPU):
`torchrun --nproc_per_node 8 -m hiervit.train -c nat_tiny --data-dir /data/imagenet`.

A run is resumable at any optimizer update: `last.pth.tar` holds the model, optimizer, scheduler, EMA, grad scaler,
every rank's RNG states and the position in the epoch, and `--resume` continues bit-identically on CPU. SIGTERM (or
`--stop-after-steps N`) saves that checkpoint after the current update and stops.
"""
import contextlib
import hashlib
import logging
import math
import os
import signal
import sys
import time
from datetime import datetime
from functools import partial
from typing import Any, Callable, Dict, Optional, Set, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import timm
from timm.data import Mixup, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, optimizer_kwargs, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import (
    AverageMeter, ModelEmaV3, accuracy, dispatch_clip_grad, distribute_bn, random_seed,
    setup_default_logging, update_summary)

import hiervit
from .args import build_train_parser, parse_with_config
from .checkpoint import (
    RESUME_KEYS, CheckpointManager, load_resume_state, load_weights, read_checkpoint, rng_state, set_rng_state,
    trim_summary, weights_of)
from .data import create_eval_loader, create_source, create_train_loader, source_num_classes

try:
    from tqdm import tqdm
except ImportError:  # tqdm is a core dependency; keep plain logging working without it anyway
    tqdm = None

try:
    from torch.utils.tensorboard import SummaryWriter
except ImportError:
    SummaryWriter = None

__all__ = ['main', 'train', 'evaluate', 'create_model_from_args', 'check_num_classes', 'cpu_threads', 'check_args']

_logger = logging.getLogger('hiervit.train')


class _Stop:
    """Set by SIGTERM (e.g. a preempting scheduler): the loop saves a resumable checkpoint after this update, stops."""

    def __init__(self):
        self.requested = False
        self.reason = ''

    def request(self, signum: int, frame: Any = None) -> None:
        self.requested = True
        self.reason = signal.Signals(signum).name


def _init_distributed(args) -> Dict[str, Any]:
    """Device and process group from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK)."""
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    rank = int(os.environ.get('RANK', 0))
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    device = torch.device(args.device) if args.device else torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', local_rank)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    owns_group = world_size > 1 and not dist.is_initialized()  # a caller's group is left to the caller
    if owns_group:
        dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')
    return dict(world_size=world_size, rank=rank, local_rank=local_rank, device=device, distributed=world_size > 1,
                owns_group=owns_group)


def check_num_classes(source: torch.utils.data.Dataset, num_classes: int, flag: str, split: str) -> None:
    """Stop when a dataset's class count and the model's (or checkpoint's) disagree."""
    found = source_num_classes(source)
    if found is not None and found != num_classes:
        raise ValueError(f'split {split!r} has {found} classes but the model has {num_classes}; '
                         f'fix {flag} (or --class-map) so they match')


def create_model_from_args(args, num_classes: Optional[int], pretrained: bool = False) -> nn.Module:
    """`timm.create_model` from CLI args, with a helpful error for an unknown model name."""
    if not args.model:
        raise ValueError('--model is required (or a --config recipe that sets `model`)')
    kwargs = dict(args.model_kwargs or {})
    if getattr(args, 'drop_path', None) is not None:
        kwargs['drop_path_rate'] = args.drop_path
    if getattr(args, 'drop', 0.):
        kwargs['drop_rate'] = args.drop
    if args.in_chans is not None:
        kwargs['in_chans'] = args.in_chans
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    if args.pretrained_path:
        kwargs['pretrained_cfg_overlay'] = dict(file=args.pretrained_path)
    if not timm.is_model(args.model):
        raise ValueError(f'--model {args.model!r} is not a registered timm model; hiervit registers '
                         f'{", ".join(hiervit.list_hiervit_models()) or "no models yet"}')
    return timm.create_model(args.model, pretrained=pretrained, **kwargs)


def _classifier_keys(model: nn.Module) -> Tuple[Optional[str], Set[str]]:
    classifier = model.pretrained_cfg.get('classifier') if hasattr(model, 'pretrained_cfg') else None
    return classifier, ({f'{classifier}.weight', f'{classifier}.bias'} if isinstance(classifier, str) else set())


def _check_classes(model: nn.Module, state: Dict[str, torch.Tensor], flag: str, path: str) -> None:
    classifier, _ = _classifier_keys(model)
    head = state.get(f'{classifier}.weight')
    if head is not None and head.shape[0] != model.num_classes:
        raise ValueError(f'{flag} {path} has {head.shape[0]} classes but the model has {model.num_classes}; set '
                         f'--num-classes {head.shape[0]} (and a dataset with as many classes), or drop its '
                         f'{classifier}.* keys to fine-tune a fresh classifier')


def _load_weights_into(model: nn.Module, state: Dict[str, torch.Tensor], flag: str, path: str) -> None:
    """Load weights whose classifier may be missing (e.g. a dropped 21k head: the fresh classifier stays). Official
    key layouts are converted by the model's load pre-hook (its family's `checkpoint_filter_fn`)."""
    _check_classes(model, state, flag, path)
    classifier, head_keys = _classifier_keys(model)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except ValueError as e:  # the model's load pre-hook read it as an official layout and refused it
        raise ValueError(f'{flag} {path} does not fit --model {model.default_cfg.get("architecture")} '
                         f'(--num-classes sets num_classes, --pretrained --pretrained-path loads pretrained '
                         f'weights): {e}') from e
    if unexpected or set(missing) - head_keys:
        raise ValueError(f'{flag} {path} does not fit --model {model.default_cfg.get("architecture")}: '
                         f'missing keys {sorted(set(missing) - head_keys)[:8]}, '
                         f'unexpected keys {sorted(unexpected)[:8]}')
    if missing:
        _logger.info(f'{flag} {path} has no {classifier}: the classifier keeps its initialisation')


def _weights_digest(model: nn.Module, buffers: bool = True) -> str:
    h = hashlib.sha256()
    tensors = model.state_dict().items() if buffers else model.named_parameters()
    for name, tensor in tensors:
        h.update(name.encode())
        h.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _make_output_dir(args, data_config: dict, continue_in: Optional[str], env: Dict[str, Any]) -> str:
    """The run folder, made on the primary rank only and shared with the others (their clocks may differ)."""
    path = None
    if env['rank'] == 0:
        if args.experiment:
            path = os.path.abspath(os.path.join(args.output or './output/train', args.experiment))
        elif continue_in:
            path = continue_in
        else:
            name = '-'.join([datetime.now().strftime('%Y%m%d-%H%M%S'), args.model.replace('/', '_'),
                             str(data_config['input_size'][-1])])
            path = os.path.abspath(os.path.join(args.output or './output/train', name))
        os.makedirs(path, exist_ok=True)
    if env['distributed']:
        shared = [path]
        dist.broadcast_object_list(shared, src=0)
        path = shared[0]
    return path


def _is_terminal(stream: Any) -> bool:
    return bool(getattr(stream, 'isatty', None)) and stream.isatty()


class _SumMeter:
    """Running sums kept on the device (no host sync per step); read with `values()` at a log point."""

    def __init__(self, device: torch.device, size: int = 3):
        self.sums = torch.zeros(size, dtype=torch.float64, device=device)

    def add(self, *values: torch.Tensor) -> None:
        self.sums += torch.stack([v.detach().to(torch.float64) for v in values])


@torch.no_grad()
def evaluate(
        model: nn.Module,
        loader: torch.utils.data.DataLoader,
        device: torch.device,
        autocast: Callable = contextlib.nullcontext,
        channels_last: bool = False,
        distributed: bool = False,
        world_size: int = 1,
        log_interval: int = 0,
        log_prefix: str = 'Test',
) -> Dict[str, float]:
    """Loss, top-1 and top-5 (in %) of `model` on `loader`; a log line every `log_interval` batches (0: none)."""
    model.eval()
    sums = _SumMeter(device, 4)  # loss x n, top-1 x n, top-5 x n, n
    loss_fn = nn.CrossEntropyLoss()
    num_batches = len(loader)
    start = time.time()
    for batch_idx, (images, target) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast():
            output = model(images)
        output = output.float()
        loss = loss_fn(output, target)
        top1, top5 = accuracy(output, target, topk=(1, min(5, output.shape[-1])))
        n = torch.tensor(float(images.shape[0]), device=device)
        sums.add(loss * n, top1 * n, top5 * n, n)
        last = batch_idx == num_batches - 1
        if log_interval and (batch_idx % log_interval == 0 or last) and not distributed:
            loss_sum, top1_sum, top5_sum, count = sums.sums.tolist()
            _logger.info(f'{log_prefix}: [{batch_idx:>4d}/{num_batches}]  Time: {time.time() - start:.1f}s  '
                         f'Loss: {loss.item():>7.3f} ({loss_sum / count:>6.3f})  '
                         f'Acc@1: {top1.item():>7.3f} ({top1_sum / count:>7.3f})  '
                         f'Acc@5: {top5.item():>7.3f} ({top5_sum / count:>7.3f})')
    totals = sums.sums
    if distributed:
        totals = totals.clone()
        dist.all_reduce(totals)
    loss_sum, top1_sum, top5_sum, count = totals.tolist()
    return {'loss': loss_sum / count, 'top1': top1_sum / count, 'top5': top5_sum / count}


@contextlib.contextmanager
def cpu_threads(threads: Optional[int]):
    """Use `threads` intra-op threads inside the block (None: leave torch's setting alone)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train(argv=None) -> Dict[str, Any]:
    """Run training from CLI-style `argv`; returns the output folder, final epoch and metrics."""
    args, args_text = parse_with_config(build_train_parser(), argv)
    with cpu_threads(args.threads):
        return _train(args, args_text)


def check_args(args, distributed: bool, device: torch.device) -> None:
    """Refuse flag values (and combinations) that would train something other than what they say."""
    if args.amp and args.amp_dtype == 'float16' and device.type != 'cuda':
        raise ValueError('--amp-dtype float16 needs a CUDA device (it uses a GradScaler); use --amp-dtype bfloat16')
    if args.grad_accum_steps < 1:
        raise ValueError(f'--grad-accum-steps must be >= 1, got {args.grad_accum_steps}')
    if args.log_interval < 1:
        raise ValueError(f'--log-interval must be >= 1, got {args.log_interval}')
    if args.aug_repeats:
        if args.aug_repeats != int(args.aug_repeats) or args.aug_repeats < 2:
            raise ValueError(f'--aug-repeats must be a whole number of repeats >= 2 (DeiT uses 3) or 0 for off, got '
                             f'{args.aug_repeats:g}')
        if not distributed:
            raise ValueError(f'--aug-repeats {args.aug_repeats:g} needs a distributed run (torchrun): in one process '
                             f'each image would fill {int(args.aug_repeats)} places of a batch and an epoch would see '
                             f'1/{int(args.aug_repeats)} of the data; set --aug-repeats 0')
    if not args.model_wd_exempt and args.layer_decay is not None:
        raise ValueError('--no-model-wd-exempt builds its own parameter groups and cannot be combined with '
                         '--layer-decay; drop one of them')


def _create_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    kwargs = optimizer_kwargs(cfg=args)
    if not args.model_wd_exempt:
        # timm's groups minus the model's no_weight_decay() list: 1-D parameters and biases stay exempt
        kwargs['param_group_fn'] = lambda m: param_groups_weight_decay(m, args.weight_decay, no_weight_decay_list=())
    return create_optimizer_v2(model, **kwargs)


def _train(args, args_text: str) -> Dict[str, Any]:
    env = _init_distributed(args)
    device, rank, world_size, distributed = env['device'], env['rank'], env['world_size'], env['distributed']
    primary = rank == 0
    check_args(args, distributed, device)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    random_seed(args.seed, rank)
    amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype) if args.amp \
        else contextlib.nullcontext

    # --resume of our own checkpoint continues the run (in its folder); with --no-resume-opt, or for another
    # trainer's checkpoint, only its weights are taken and a new run (and folder) starts, as in timm
    resume = load_resume_state(args.resume) if args.resume else None
    if args.resume and resume is None and not args.no_resume_opt:
        raise ValueError(f'--resume {args.resume} is not a hiervit-train checkpoint (it lacks one of '
                         f'{", ".join(RESUME_KEYS)}), '
                         f'so the optimizer, schedule and data position cannot continue; start from its weights with '
                         f'--initial-checkpoint {args.resume} (or add --no-resume-opt)')
    continuing = resume is not None and not args.no_resume_opt
    data_root = args.data_dir
    source_train = create_source(args.dataset, data_root, args.train_split, True, args.class_map,
                                 args.dataset_download, args.input_img_mode)
    source_eval = None if args.no_eval else create_source(
        args.dataset, data_root, args.val_split, False, args.class_map, args.dataset_download, args.input_img_mode)
    num_classes = args.num_classes or source_num_classes(source_train)
    model = create_model_from_args(args, num_classes, pretrained=args.pretrained)
    num_classes = model.num_classes
    check_num_classes(source_train, num_classes, '--num-classes', args.train_split)
    if source_eval is not None:
        check_num_classes(source_eval, num_classes, '--num-classes', args.val_split)
    if args.initial_checkpoint:
        # timm's train.py takes the EMA weights of a checkpoint that has them
        _load_weights_into(model, load_weights(args.initial_checkpoint, '--initial-checkpoint', use_ema=True),
                           '--initial-checkpoint', args.initial_checkpoint)
    data_config = resolve_data_config(vars(args), model=model, verbose=primary)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    if args.sync_bn and distributed:
        if device.type == 'cpu':
            raise ValueError('--sync-bn needs GPUs (torch.nn.SyncBatchNorm has no CPU path); drop it for CPU runs, '
                             'where DDP keeps rank 0\'s BatchNorm statistics')
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if primary:
            n_sync = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
            _logger.info(f'--sync-bn: {n_sync} BatchNorm layers synchronised across ranks')
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)

    if args.lr is None:
        global_batch = args.batch_size * world_size * args.grad_accum_steps
        scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
        ratio = global_batch / args.lr_base_size
        args.lr = args.lr_base * (ratio ** 0.5 if scale == 'sqrt' else ratio)
        if primary:
            _logger.info(f'lr {args.lr:.3g} = lr_base {args.lr_base:g} x ({global_batch}/{args.lr_base_size}) '
                         f'{scale} scaling')
    optimizer = _create_optimizer(model, args)
    scaler = torch.amp.GradScaler('cuda') if args.amp and amp_dtype == torch.float16 else None

    start_epoch, start_batch, num_updates = 0, 0, 0
    epoch_sums = None
    foreign = None  # another trainer's --resume checkpoint, read once for its weights and its EMA weights
    if resume is not None:
        _check_classes(model, resume['state_dict'], '--resume', args.resume)
        model.load_state_dict(resume['state_dict'])
    elif args.resume:
        foreign = read_checkpoint(args.resume, '--resume')
        _load_weights_into(model, weights_of(foreign, False, args.resume, '--resume'), '--resume', args.resume)
    if continuing:
        optimizer.load_state_dict(resume['optimizer'])
        if scaler is not None and 'scaler' in resume:
            scaler.load_state_dict(resume['scaler'])
        start_epoch, start_batch = resume['resume_epoch'], resume['resume_batch']
        num_updates = resume['num_updates']
        epoch_sums = resume.get('epoch_sums')
        if epoch_sums is not None:
            if len(epoch_sums) != world_size:
                raise ValueError(f'--resume {args.resume} was written by {len(epoch_sums)} process(es), this run has '
                                 f'{world_size}; the data order and RNG streams cannot continue exactly')
            epoch_sums = epoch_sums[rank]
    if args.start_epoch is not None:
        start_epoch, start_batch = args.start_epoch, 0

    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
        if resume is not None and resume.get('state_dict_ema') is not None:
            model_ema.module.load_state_dict(resume['state_dict_ema'])
            if continuing and 'ema_buffers' in resume and len(resume['ema_buffers']) == world_size:
                # mid-epoch each rank's EMA has tracked its own BatchNorm statistics
                for name, buf in model_ema.module.named_buffers():
                    buf.copy_(resume['ema_buffers'][rank][name])
        elif foreign is not None:  # another trainer's checkpoint: its EMA weights when it has them (timm's fallback)
            _load_weights_into(model_ema.module, weights_of(foreign, True, args.resume, '--resume'), '--resume',
                               args.resume)
    del foreign

    train_model = model
    if distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None)
    if args.torchcompile:
        train_model = torch.compile(train_model, backend=args.torchcompile)

    loader_train, sampler_train = create_train_loader(source_train, data_config, args, world_size, rank)
    batches_per_epoch = len(sampler_train) // args.batch_size
    if batches_per_epoch == 0:
        raise ValueError(f'-b/--batch-size {args.batch_size} exceeds the {len(sampler_train)} training samples per '
                         f'process; lower it')
    updates_per_epoch = math.ceil(batches_per_epoch / args.grad_accum_steps)
    loader_eval = None
    if source_eval is not None:
        loader_eval = create_eval_loader(source_eval, data_config, args.batch_size, args.workers, args.pin_mem,
                                         world_size, rank)

    scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=args.eval_metric == 'loss'),
        updates_per_epoch=updates_per_epoch)
    if scheduler is not None:
        if continuing and resume.get('scheduler') is not None:
            scheduler.load_state_dict(resume['scheduler'])
        # a fresh scheduler sets the lr of epoch 0; recompute it for where this run starts
        scheduler.step(max(start_epoch + args.sched_epoch_offset - 1, 0))
        if args.sched_on_updates:
            scheduler.step_update(num_updates)

    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                         prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=num_classes)
        loss_fn = SoftTargetCrossEntropy()
    elif args.smoothing:
        loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        loss_fn = nn.CrossEntropyLoss()

    continue_in = os.path.dirname(os.path.abspath(args.resume)) if continuing else None
    output_dir = _make_output_dir(args, data_config, continue_in, env)
    manager = CheckpointManager(output_dir, args.checkpoint_hist, decreasing=args.eval_metric == 'loss')
    if continuing and 'checkpoint_manager' in resume and continue_in == output_dir:
        manager.load_state_dict(resume['checkpoint_manager'])
    summary_path = os.path.join(output_dir, 'summary.csv')
    writer = None
    if primary:
        with open(os.path.join(output_dir, 'args.yaml'), 'w') as f:
            f.write(args_text)
        trim_summary(summary_path, start_epoch)  # rows of epochs this run is about to (re)train are stale
        if args.log_tb and SummaryWriter is not None:
            writer = SummaryWriter(log_dir=os.path.join(output_dir, 'tb'))
        n_params = sum(p.numel() for p in model.parameters())
        _logger.info(f'model {args.model}: {n_params / 1e6:.3f}M params, {num_classes} classes, input '
                     f'{tuple(data_config["input_size"])}; {len(source_train)} train images, {world_size} process(es), '
                     f'{batches_per_epoch} batches/epoch; output {output_dir}')

    if continuing and 'rng' in resume:
        states = resume['rng']
        if len(states) != world_size:
            raise ValueError(f'--resume {args.resume} was written by {len(states)} process(es), this run has '
                             f'{world_size}; the data order and RNG streams cannot continue exactly')
        set_rng_state(states[rank])

    stop = _Stop()
    previous_handlers = {signal.SIGTERM: signal.signal(signal.SIGTERM, stop.request)}
    sums = _SumMeter(device)  # this rank's loss x n, n and the stop flag, reduced at log points only

    def checkpoint_state(epoch: int, batch: int) -> Dict[str, Any]:
        rng, epoch_sums = [rng_state()], [sums.sums[:2].cpu()]
        ema_buffers = None
        if distributed:
            rng, epoch_sums = [None] * world_size, [None] * world_size
            dist.all_gather_object(rng, rng_state())
            dist.all_gather_object(epoch_sums, sums.sums[:2].cpu())
            if model_ema is not None:
                ema_buffers = [None] * world_size
                dist.all_gather_object(ema_buffers, {k: v.cpu() for k, v in model_ema.module.named_buffers()})
        state = {
            'arch': args.model, 'args': vars(args), 'version': hiervit.__version__,
            'resume_epoch': epoch, 'resume_batch': batch, 'num_updates': num_updates,
            'state_dict': model.state_dict(), 'optimizer': optimizer.state_dict(),
            'scheduler': scheduler.state_dict() if scheduler is not None else None, 'rng': rng,
            'epoch_sums': epoch_sums if batch else None,  # the running train loss of a stopped epoch
        }
        if model_ema is not None:
            state['state_dict_ema'] = model_ema.module.state_dict()
            if ema_buffers is not None:
                state['ema_buffers'] = ema_buffers
        if scaler is not None:
            state['scaler'] = scaler.state_dict()
        return state

    def reduced_sums(sync: bool) -> Tuple[float, float, bool]:
        """(loss sum, sample count, stop requested) over all ranks; the one host sync of a log point."""
        sums.sums[2] = float(stop.requested)
        totals = sums.sums
        if distributed and sync:
            totals = totals.clone()
            dist.all_reduce(totals)
        loss_sum, count, stop_flag = totals.tolist()
        return loss_sum, count, stop_flag > 0

    def steps_done() -> bool:  # the same on every rank: needs no agreement
        return args.stop_after_steps is not None and num_updates >= args.stop_after_steps

    metrics: Dict[str, Any] = {}
    epoch = start_epoch
    stopped = False
    try:
        for epoch in range(start_epoch, num_epochs):
            if mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
                mixup_fn.mixup_enabled = False
            first_batch = start_batch if epoch == start_epoch else 0
            sampler_train.set_epoch(epoch, first_batch * args.batch_size)
            train_model.train()
            sums.sums.zero_()
            if first_batch and epoch_sums is not None:
                sums.sums[:2] = epoch_sums.to(sums.sums)
            data_time, update_time = AverageMeter(), AverageMeter()
            accum = args.grad_accum_steps
            last_accum = batches_per_epoch % accum or accum
            show_bar = primary and tqdm is not None and not args.no_progress and _is_terminal(sys.stderr)
            bar = tqdm(total=batches_per_epoch, initial=first_batch, desc=f'epoch {epoch}/{num_epochs}',
                       dynamic_ncols=True, file=sys.stderr) if show_bar else None
            end = update_start = time.time()
            update_samples = 0
            for batch_idx, (images, target) in enumerate(loader_train, start=first_batch):
                if batch_idx >= batches_per_epoch:
                    break
                data_time.update(time.time() - end)
                last_batch = batch_idx == batches_per_epoch - 1
                need_update = last_batch or (batch_idx + 1) % accum == 0
                in_last_group = batch_idx >= batches_per_epoch - last_accum
                accum_steps = last_accum if in_last_group else accum
                images = images.to(device, non_blocking=True)
                target = target.to(device, non_blocking=True)
                if mixup_fn is not None:
                    images, target = mixup_fn(images, target)
                if args.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                sync = contextlib.nullcontext() if need_update or not distributed else train_model.no_sync()
                with sync:
                    with autocast():
                        output = train_model(images)
                        loss = loss_fn(output, target)
                    scaled = loss / accum_steps
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                n = images.shape[0]
                sums.sums[0] += loss.detach().to(torch.float64) * n
                sums.sums[1] += n
                update_samples += n * world_size
                if bar is not None:
                    bar.update(1)
                end = time.time()
                if not need_update:
                    continue
                if scaler is not None and args.clip_grad is not None:
                    scaler.unscale_(optimizer)
                if args.clip_grad is not None:
                    dispatch_clip_grad(model.parameters(), value=args.clip_grad, mode=args.clip_mode)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                num_updates += 1
                if model_ema is not None:
                    model_ema.update(model, step=num_updates)
                if scheduler is not None:
                    scheduler.step_update(num_updates=num_updates)
                update_idx = batch_idx // accum
                update_time.update(time.time() - update_start)
                update_start = time.time()
                log_point = update_idx % args.log_interval == 0 or last_batch
                stop_now = not last_batch and steps_done()
                if log_point:
                    loss_sum, count, stop_flag = reduced_sums(sync=True)
                    stop_now = stop_now or (stop_flag and not last_batch)
                    lr = optimizer.param_groups[0]['lr']
                    rate = update_samples / max(update_time.val, 1e-9)
                    loss_now = loss.item()
                    if bar is not None:
                        bar.set_postfix(loss=f'{loss_sum / count:.4f}', lr=f'{lr:.3g}', img_s=f'{rate:.0f}')
                    elif primary:
                        _logger.info(
                            f'Train: {epoch} [{update_idx:>4d}/{updates_per_epoch} '
                            f'({100. * (update_idx + 1) / updates_per_epoch:>3.0f}%)]  '
                            f'Loss: {loss_now:#.3g} ({loss_sum / count:#.3g})  '
                            f'Time: {update_time.val:.3f}s, {rate:>7.2f}/s  LR: {lr:.3e}  '
                            f'Data: {data_time.val:.3f} ({data_time.avg:.3f})')
                    if writer is not None:
                        writer.add_scalar('train/loss', loss_now, num_updates)
                        writer.add_scalar('train/lr', lr, num_updates)
                elif not distributed and not last_batch:
                    stop_now = stop_now or stop.requested
                update_samples = 0
                if stop_now:
                    if bar is not None:
                        bar.close()
                    path = _save_resumable(manager, checkpoint_state(epoch, batch_idx + 1), primary)
                    stopped = True
                    if primary:
                        _logger.info(f'stopped ({stop.reason or "--stop-after-steps"}) at epoch {epoch} batch '
                                     f'{batch_idx + 1}, update {num_updates}; continue with --resume {path}')
                    break
                end = time.time()
            if stopped:
                break
            if bar is not None:
                bar.close()

            if distributed and args.dist_bn:
                # each rank's last forward updated its own BatchNorm statistics (and its EMA's copy of them): make
                # them agree before eval / save, as timm does for both
                distribute_bn(model, world_size, reduce=args.dist_bn == 'reduce')
                if model_ema is not None:
                    distribute_bn(model_ema.module, world_size, reduce=args.dist_bn == 'reduce')
            loss_sum, count, stop_flag = reduced_sums(sync=True)
            train_metrics = {'loss': loss_sum / count}
            eval_metrics = None
            if loader_eval is not None:
                eval_metrics = evaluate(model, loader_eval, device, autocast, args.channels_last, distributed,
                                        world_size)
                if model_ema is not None:
                    ema_metrics = evaluate(model_ema.module, loader_eval, device, autocast, args.channels_last,
                                           distributed, world_size)
                    eval_metrics.update({f'ema_{k}': v for k, v in ema_metrics.items()})
                if primary:
                    _logger.info('epoch {} eval: '.format(epoch) + ', '.join(
                        f'{k} {v:.3f}' for k, v in eval_metrics.items()))
            if scheduler is not None:
                scheduler.step(epoch + args.sched_epoch_offset,
                               eval_metrics[args.eval_metric] if eval_metrics else None)
            metric = None
            if eval_metrics:
                key = f'ema_{args.eval_metric}' if args.model_ema_best and model_ema is not None else args.eval_metric
                metric = eval_metrics[key]
            state = checkpoint_state(epoch + 1, 0)
            if primary:
                manager.save_epoch(state, epoch, metric)
                update_summary(epoch, train_metrics, eval_metrics or {}, summary_path,
                               lr=optimizer.param_groups[0]['lr'],
                               write_header=not os.path.exists(summary_path) or os.path.getsize(summary_path) == 0)
                if writer is not None:
                    for k, v in (eval_metrics or {}).items():
                        writer.add_scalar(f'eval/{k}', v, epoch)
                    writer.add_scalar('train/epoch_loss', train_metrics['loss'], epoch)
            metrics = {'train': train_metrics, 'eval': eval_metrics}
            if steps_done() or stop_flag:
                stopped = epoch + 1 < num_epochs
                if stopped and primary:
                    _logger.info(f'stopped after epoch {epoch}; continue with --resume {manager.last_path}')
                break
        # mid-epoch, ranks legitimately differ in their BatchNorm statistics: compare the parameters only
        digest = _weights_digest(model, buffers=not stopped)
        if distributed:
            digests = [None] * world_size
            dist.all_gather_object(digests, digest)
            if model_ema is not None:
                ema_digests = [None] * world_size
                dist.all_gather_object(ema_digests, _weights_digest(model_ema.module, buffers=not stopped))
                digests = [d + e for d, e in zip(digests, ema_digests)]
            if len(set(digests)) != 1:
                raise RuntimeError(f'ranks ended with different weights: {digests}')
            if primary:
                _logger.info(f'all {world_size} ranks hold identical weights (sha256 {digest})')
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        if writer is not None:
            writer.close()
    if primary and manager.best is not None:
        _logger.info(f'best {args.eval_metric} {manager.best[0]:.3f} (epoch {manager.best[1]})')
    if distributed:
        dist.barrier()
        if env['owns_group']:
            dist.destroy_process_group()
    return {'output_dir': output_dir, 'epoch': epoch, 'num_updates': num_updates, 'stopped': stopped,
            'metrics': metrics, 'best': manager.best, 'weights_sha256': digest}


def _save_resumable(manager: CheckpointManager, state: Dict[str, Any], primary: bool) -> str:
    return manager.save_last(state) if primary else manager.last_path


def main(argv=None) -> None:
    """Console entry point of `hiervit-train`."""
    setup_default_logging()
    train(argv)


if __name__ == '__main__':
    main()
