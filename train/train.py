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
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import (
    AverageMeter, ModelEmaV3, accuracy, dispatch_clip_grad, distribute_bn, random_seed, reduce_tensor,
    setup_default_logging, update_summary)
from timm.utils.summary import trim_summary

import hiervit
from .args import build_train_parser, parse_with_config
from .checkpoint import CheckpointManager, load_file, model_state_from_file, rng_state, set_rng_state
from .data import create_eval_loader, create_source, create_train_loader, source_num_classes

try:
    from tqdm import tqdm
except ImportError:  # tqdm is a core dependency; keep plain logging working without it anyway
    tqdm = None

try:
    from torch.utils.tensorboard import SummaryWriter
except ImportError:
    SummaryWriter = None

__all__ = ['main', 'train', 'evaluate', 'create_model_from_args', 'check_num_classes', 'cpu_threads']

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
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')
    return dict(world_size=world_size, rank=rank, local_rank=local_rank, device=device, distributed=world_size > 1)


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


def _load_initial(model: nn.Module, path: str) -> None:
    """Load `--initial-checkpoint`; without classifier keys (e.g. a dropped 21k head) the fresh classifier stays."""
    state = model_state_from_file(load_file(path))
    _check_classes(model, state, '--initial-checkpoint', path)
    classifier, head_keys = _classifier_keys(model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - head_keys:
        raise ValueError(f'--initial-checkpoint {path} does not fit --model {model.default_cfg.get("architecture")}: '
                         f'missing keys {sorted(set(missing) - head_keys)[:8]}, '
                         f'unexpected keys {sorted(unexpected)[:8]}')
    if missing:
        _logger.info(f'--initial-checkpoint {path} has no {classifier}: the classifier keeps its initialisation')


def _weights_digest(model: nn.Module, buffers: bool = True) -> str:
    h = hashlib.sha256()
    tensors = model.state_dict().items() if buffers else model.named_parameters()
    for name, tensor in tensors:
        h.update(name.encode())
        h.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _make_output_dir(args, data_config: dict) -> str:
    if args.experiment:
        name = args.experiment
    elif args.resume:
        return os.path.dirname(os.path.abspath(args.resume))
    else:
        name = '-'.join([datetime.now().strftime('%Y%m%d-%H%M%S'), args.model, str(data_config['input_size'][-1])])
    path = os.path.abspath(os.path.join(args.output or './output/train', name))
    os.makedirs(path, exist_ok=True)
    return path


@torch.no_grad()
def evaluate(
        model: nn.Module,
        loader: torch.utils.data.DataLoader,
        device: torch.device,
        autocast: Callable = contextlib.nullcontext,
        channels_last: bool = False,
        distributed: bool = False,
        world_size: int = 1,
) -> Dict[str, float]:
    """Loss, top-1 and top-5 (in %) of `model` on `loader`."""
    model.eval()
    meters = {k: AverageMeter() for k in ('loss', 'top1', 'top5')}
    loss_fn = nn.CrossEntropyLoss()
    for images, target in loader:
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast():
            output = model(images)
        output = output.float()
        loss = loss_fn(output, target)
        top1, top5 = accuracy(output, target, topk=(1, min(5, output.shape[-1])))
        if distributed:
            loss, top1, top5 = (reduce_tensor(t, world_size) for t in (loss, top1, top5))
        for key, value in (('loss', loss), ('top1', top1), ('top5', top5)):
            meters[key].update(value.item(), images.shape[0])
    return {k: m.avg for k, m in meters.items()}


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


def _train(args, args_text: str) -> Dict[str, Any]:
    env = _init_distributed(args)
    device, rank, world_size, distributed = env['device'], env['rank'], env['world_size'], env['distributed']
    primary = rank == 0
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    random_seed(args.seed, rank)

    if args.amp and args.amp_dtype == 'float16' and device.type != 'cuda':
        raise ValueError('--amp-dtype float16 needs a CUDA device (it uses a GradScaler); use --amp-dtype bfloat16')
    if args.grad_accum_steps < 1:
        raise ValueError(f'--grad-accum-steps must be >= 1, got {args.grad_accum_steps}')
    amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype) if args.amp \
        else contextlib.nullcontext

    resume = load_file(args.resume) if args.resume else None
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
        _load_initial(model, args.initial_checkpoint)
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
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    scaler = torch.amp.GradScaler('cuda') if args.amp and amp_dtype == torch.float16 else None

    start_epoch, start_batch, num_updates = 0, 0, 0
    if resume is not None:
        resume_state = model_state_from_file(resume)
        _check_classes(model, resume_state, '--resume', args.resume)
        model.load_state_dict(resume_state)
        if not args.no_resume_opt:
            optimizer.load_state_dict(resume['optimizer'])
            if scaler is not None and 'scaler' in resume:
                scaler.load_state_dict(resume['scaler'])
            start_epoch, start_batch = resume['resume_epoch'], resume['resume_batch']
            num_updates = resume['num_updates']
    if args.start_epoch is not None:
        start_epoch, start_batch = args.start_epoch, 0

    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
        if resume is not None and 'state_dict_ema' in resume:
            model_ema.module.load_state_dict(model_state_from_file(resume, use_ema=True))

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
    if resume is not None and 'scheduler' in resume and not args.no_resume_opt:
        scheduler.load_state_dict(resume['scheduler'])
    # the scheduler sets the lr of a fresh optimizer at construction; recompute it for where this run starts
    scheduler.step(start_epoch)
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

    output_dir = _make_output_dir(args, data_config)
    manager = CheckpointManager(output_dir, args.checkpoint_hist, decreasing=args.eval_metric == 'loss')
    if resume is not None and 'checkpoint_manager' in resume and os.path.dirname(
            os.path.abspath(args.resume)) == output_dir:
        manager.load_state_dict(resume['checkpoint_manager'])
    summary_path = os.path.join(output_dir, 'summary.csv')
    writer = None
    if primary:
        with open(os.path.join(output_dir, 'args.yaml'), 'w') as f:
            f.write(args_text)
        if os.path.exists(summary_path):  # rows of epochs this run is about to (re)train are stale
            trim_summary(summary_path, start_epoch)
        if args.log_tb and SummaryWriter is not None:
            writer = SummaryWriter(log_dir=os.path.join(output_dir, 'tb'))
        n_params = sum(p.numel() for p in model.parameters())
        _logger.info(f'model {args.model}: {n_params / 1e6:.3f}M params, {num_classes} classes, input '
                     f'{tuple(data_config["input_size"])}; {len(source_train)} train images, {world_size} process(es), '
                     f'{batches_per_epoch} batches/epoch; output {output_dir}')

    if resume is not None and not args.no_resume_opt and 'rng' in resume:
        states = resume['rng']
        if len(states) != world_size:
            raise ValueError(f'--resume {args.resume} was written by {len(states)} process(es), this run has '
                             f'{world_size}; the data order and RNG streams cannot continue exactly')
        set_rng_state(states[rank])

    stop = _Stop()
    previous_handlers = {signal.SIGTERM: signal.signal(signal.SIGTERM, stop.request)}

    def checkpoint_state(epoch: int, batch: int) -> Dict[str, Any]:
        rng = [rng_state()]
        if distributed:
            rng = [None] * world_size
            dist.all_gather_object(rng, rng_state())
        state = {
            'arch': args.model, 'args': vars(args), 'version': hiervit.__version__,
            'resume_epoch': epoch, 'resume_batch': batch, 'num_updates': num_updates,
            'state_dict': model.state_dict(), 'optimizer': optimizer.state_dict(),
            'scheduler': scheduler.state_dict(), 'rng': rng,
        }
        if model_ema is not None:
            state['state_dict_ema'] = model_ema.module.state_dict()
        if scaler is not None:
            state['scaler'] = scaler.state_dict()
        return state

    def should_stop() -> bool:
        flag = stop.requested or (args.stop_after_steps is not None and num_updates >= args.stop_after_steps)
        if distributed:  # every rank must stop at the same update
            t = torch.tensor([float(flag)], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

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
            loss_meter, data_time, step_time = AverageMeter(), AverageMeter(), AverageMeter()
            accum = args.grad_accum_steps
            last_accum = batches_per_epoch % accum or accum
            show_bar = primary and tqdm is not None and not args.no_progress
            bar = tqdm(total=batches_per_epoch, initial=first_batch, desc=f'epoch {epoch}/{num_epochs}',
                       dynamic_ncols=True, disable=not show_bar)
            end = time.time()
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
                if need_update:
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
                    scheduler.step_update(num_updates=num_updates, metric=loss_meter.avg)
                loss_meter.update(loss.item(), images.shape[0])
                step_time.update(time.time() - end)
                lr = optimizer.param_groups[0]['lr']
                rate = images.shape[0] * world_size / max(step_time.val, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f'{loss_meter.val:.4f}', lr=f'{lr:.3g}', img_s=f'{rate:.0f}', refresh=False)
                if primary and (batch_idx % args.log_interval == 0 or last_batch):
                    if not show_bar:
                        _logger.info(f'epoch {epoch} [{batch_idx + 1}/{batches_per_epoch}] loss {loss_meter.val:.4f} '
                                     f'({loss_meter.avg:.4f}) lr {lr:.3g} {rate:.0f} img/s '
                                     f'(data {data_time.avg:.3f}s)')
                    if writer is not None:
                        writer.add_scalar('train/loss', loss_meter.val, num_updates)
                        writer.add_scalar('train/lr', lr, num_updates)
                if need_update and not last_batch and should_stop():
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
            bar.close()

            if distributed and args.dist_bn:
                # each rank's last forward updated its own BatchNorm statistics; make them agree before eval / save
                distribute_bn(model, world_size, reduce=args.dist_bn == 'reduce')
            train_metrics = {'loss': loss_meter.avg}
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
            scheduler.step(epoch + 1, eval_metrics[args.eval_metric] if eval_metrics else None)
            metric = None
            if eval_metrics:
                metric = eval_metrics.get(f'ema_{args.eval_metric}', eval_metrics[args.eval_metric])
            state = checkpoint_state(epoch + 1, 0)
            if primary:
                manager.save_epoch(state, epoch, metric)
                update_summary(epoch, train_metrics, eval_metrics or {}, summary_path,
                               lr=optimizer.param_groups[0]['lr'])
                if writer is not None:
                    for k, v in (eval_metrics or {}).items():
                        writer.add_scalar(f'eval/{k}', v, epoch)
                    writer.add_scalar('train/epoch_loss', train_metrics['loss'], epoch)
            metrics = {'train': train_metrics, 'eval': eval_metrics}
            if should_stop():
                stopped = epoch + 1 < num_epochs
                if stopped and primary:
                    _logger.info(f'stopped after epoch {epoch}; continue with --resume {manager.last_path}')
                break
        # mid-epoch, ranks legitimately differ in their BatchNorm statistics: compare the parameters only
        digest = _weights_digest(model, buffers=not stopped)
        if distributed:
            digests = [None] * world_size
            dist.all_gather_object(digests, digest)
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
