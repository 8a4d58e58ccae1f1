"""`hiervit-validate`: top-1 / top-5 and throughput of a model on a labelled split.

`--checkpoint` takes the weights of hiervit-train, timm's train.py, DeiT/BiFormer `main.py` or NAT's `train.py`
(`.pth`, `.pth.tar` or `.safetensors`). When the checkpoint stores its training args (a dict or an
`argparse.Namespace`) the model name, its kwargs and the input settings come from them (flags given on the command line
win); otherwise the model's `pretrained_cfg` decides the transforms.
"""
import argparse
import contextlib
import json
import logging
import time
from functools import partial
from typing import Any, Dict

import timm
import torch
from timm.data import resolve_data_config
from timm.models import get_pretrained_cfg_value
from timm.utils import setup_default_logging

from .args import build_validate_parser, parse_with_config
from .checkpoint import has_ema, read_checkpoint, weights_of
from .data import create_eval_loader, create_source
from .train import check_num_classes, cpu_threads, create_model_from_args, evaluate

__all__ = ['main', 'validate']

_logger = logging.getLogger('hiervit.validate')

# settings a training checkpoint carries that decide how the model is built and fed
_FROM_CHECKPOINT = ('model', 'model_kwargs', 'in_chans', 'input_size', 'img_size', 'crop_pct', 'mean', 'std',
                    'interpolation', 'dataset', 'data_dir', 'input_img_mode', 'class_map')


def _fill_from_checkpoint(args: argparse.Namespace, saved: Dict[str, Any], parser: argparse.ArgumentParser) -> None:
    saved = dict(saved)
    if isinstance(saved.get('input_size'), int):  # DeiT/BiFormer main.py: --input-size is the square side
        saved['img_size'] = saved.pop('input_size')
    for key in _FROM_CHECKPOINT:
        if saved.get(key) is not None and getattr(args, key) == parser.get_default(key):
            setattr(args, key, saved[key])


def validate(argv=None) -> Dict[str, Any]:
    """Run validation from CLI-style `argv`; returns the results dict that is also printed."""
    parser = build_validate_parser()
    args, _ = parse_with_config(parser, argv)
    with cpu_threads(args.threads):
        return _validate(args, parser)


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    device = torch.device(args.device) if args.device else torch.device('cuda' if torch.cuda.is_available() else 'cpu')

    if args.initial_checkpoint:
        raise ValueError(f'hiervit-validate evaluates the weights given with --checkpoint; pass --checkpoint '
                         f'{args.initial_checkpoint} instead of --initial-checkpoint')
    if args.use_ema and not args.checkpoint:
        raise ValueError('--use-ema selects the EMA weights of a --checkpoint; pass one')
    state = None
    if args.checkpoint:
        checkpoint = read_checkpoint(args.checkpoint, '--checkpoint')
        saved = checkpoint.get('args') if isinstance(checkpoint, dict) else None
        if isinstance(saved, argparse.Namespace):
            saved = vars(saved)
        if isinstance(saved, dict):
            _fill_from_checkpoint(args, saved, parser)
        if args.use_ema and not has_ema(checkpoint):
            raise ValueError(f'--use-ema: --checkpoint {args.checkpoint} holds no EMA weights (state_dict_ema or '
                             f'model_ema); drop --use-ema')
        state = weights_of(checkpoint, args.use_ema, args.checkpoint, '--checkpoint')
        del checkpoint

    num_classes = args.num_classes
    if state is not None and args.model:
        classifier = get_pretrained_cfg_value(args.model, 'classifier') if timm.is_model(args.model) else None
        head = state.get(f'{classifier}.weight') if isinstance(classifier, str) else None
        if head is not None:
            if num_classes is not None and num_classes != head.shape[0]:
                raise ValueError(f'--checkpoint {args.checkpoint} has {head.shape[0]} classes but --num-classes is '
                                 f'{num_classes}; drop --num-classes or set it to {head.shape[0]}')
            num_classes = head.shape[0]
    model = create_model_from_args(args, num_classes, pretrained=args.pretrained and state is None)
    if state is not None:
        try:  # official key layouts: the model's load pre-hook converts them (its family's checkpoint_filter_fn)
            missing, unexpected = model.load_state_dict(state, strict=False)
        except ValueError as e:  # the pre-hook read it as an official layout and refused it
            raise ValueError(f'--checkpoint {args.checkpoint} does not fit --model {args.model}: {e}') from e
        if missing or unexpected:
            raise ValueError(f'--checkpoint {args.checkpoint} does not fit --model {args.model}: missing keys '
                             f'{sorted(missing)[:8]}, unexpected keys {sorted(unexpected)[:8]}')
    source = create_source(args.dataset, args.data_dir, args.val_split, False, args.class_map, args.dataset_download,
                           args.input_img_mode)
    check_num_classes(source, model.num_classes, '--num-classes or --checkpoint', args.val_split)

    data_config = resolve_data_config(vars(args), model=model)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    eval_model = torch.compile(model, backend=args.torchcompile) if args.torchcompile else model
    amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype) if args.amp \
        else contextlib.nullcontext
    indices = range(min(args.num_samples, len(source))) if args.num_samples else None
    loader = create_eval_loader(source, data_config, args.batch_size, args.workers, args.pin_mem, indices=indices)

    start = time.time()
    metrics = evaluate(eval_model, loader, device, autocast, args.channels_last, log_interval=args.log_interval)
    elapsed = time.time() - start
    num_images = len(loader.dataset)
    results = {
        'model': args.model,
        'checkpoint': args.checkpoint or None,
        'top1': round(metrics['top1'], 3),
        'top1_err': round(100 - metrics['top1'], 3),
        'top5': round(metrics['top5'], 3),
        'loss': round(metrics['loss'], 4),
        'param_count': round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        'img_size': data_config['input_size'][-1],
        'crop_pct': data_config['crop_pct'],
        'interpolation': data_config['interpolation'],
        'num_images': num_images,
        'img_per_sec': round(num_images / elapsed, 1),
    }
    _logger.info(f'{args.model}: top-1 {results["top1"]:.2f}% top-5 {results["top5"]:.2f}% on {num_images} images, '
                 f'{results["img_per_sec"]:.0f} img/s')
    print(json.dumps(results, indent=2))
    if args.results_file:
        with open(args.results_file, 'w') as f:
            json.dump(results, f, indent=2)
    return results


def main(argv=None) -> None:
    """Console entry point of `hiervit-validate`."""
    setup_default_logging()
    validate(argv)


if __name__ == '__main__':
    main()
