"""Datasets and loaders for the training and validation CLIs.

Sources: timm's folder / tar readers (`--dataset ''`), torchvision datasets (`torch/<name>`), HF datasets
(`hfds/<name>`) through `timm.data.create_dataset`, and an in-memory Fashion-MNIST reader of the IDX files that Debian's
`dataset-fashion-mnist` package installs. Transforms are timm's `create_transform`.

Resumable, reproducible augmentation: the sampler hands every sample a seed drawn from (seed, epoch, position), and
the dataset seeds `random`, `numpy` and `torch` from it around the transform. A sample's augmentation then does not
depend on the worker that loads it or on what was loaded before, so a run resumed mid-epoch sees exactly the batches
of an uninterrupted one. The loader gets its own generator, so creating an iterator never draws from the global RNG.
"""
import contextlib
import gzip
import math
import os
import random
from typing import Any, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import create_dataset, create_transform

__all__ = [
    'FASHION_MNIST_ROOT', 'FashionMNIST', 'ReaderSource', 'SeededTransformDataset', 'ResumableSampler',
    'create_source', 'source_num_classes', 'create_train_loader', 'create_eval_loader',
]

FASHION_MNIST_ROOT = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_CLASSES = (
    'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
_FASHION_MNIST_INSTALL = 'apt-get install dataset-fashion-mnist'


def read_idx(path: str) -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes: big-endian magic (0, 0, 0x08, ndim), ndim int32 dims, data."""
    opener = gzip.open if path.endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f'cannot read IDX file {path}: {e}') from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f'{path} is not an IDX file of unsigned bytes (bad magic {data[:4]!r})')
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, dtype='>i4', count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(data) - offset != math.prod(dims):
        raise ValueError(f'{path}: header promises {dims} = {math.prod(dims)} bytes, file holds {len(data) - offset}')
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


class FashionMNIST(torch.utils.data.Dataset):
    """Fashion-MNIST held in memory (70k 28x28 uint8 images); items are (PIL image, class index)."""
    classes = FASHION_MNIST_CLASSES

    def __init__(self, root: Optional[str] = None, split: str = 'train', input_img_mode: str = 'RGB'):
        root = root or FASHION_MNIST_ROOT
        if split in ('train',):
            prefix = 'train'
        elif split in ('test', 'validation', 'val', 't10k'):
            prefix = 't10k'
        else:
            raise ValueError(f"--train-split/--val-split: Fashion-MNIST has 'train' and 'test' splits, not {split!r}")
        self.images_path = self._find(root, f'{prefix}-images-idx3-ubyte')
        labels_path = self._find(root, f'{prefix}-labels-idx1-ubyte')
        self.images = read_idx(self.images_path)
        self.targets = read_idx(labels_path)
        if self.images.ndim != 3 or self.targets.ndim != 1 or len(self.images) != len(self.targets):
            raise ValueError(f'{self.images_path} and {labels_path} do not pair up: images {self.images.shape}, '
                             f'labels {self.targets.shape}')
        if self.targets.max(initial=0) >= len(self.classes):
            raise ValueError(f'{labels_path}: label {self.targets.max()} is outside the {len(self.classes)} classes')
        self.input_img_mode = input_img_mode

    @staticmethod
    def _find(root: str, stem: str) -> str:
        for name in (stem + '.gz', stem):
            path = os.path.join(root, name)
            if os.path.isfile(path):
                return path
        raise FileNotFoundError(
            f'Fashion-MNIST file {stem}(.gz) not found in {root}; install the data with `{_FASHION_MNIST_INSTALL}` '
            f'(it fills {FASHION_MNIST_ROOT}) or point --data-dir at a folder holding the four IDX files')

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[Image.Image, int]:
        img = Image.fromarray(self.images[index], mode='L')
        if self.input_img_mode and self.input_img_mode != 'L':
            img = img.convert(self.input_img_mode)
        return img, int(self.targets[index])

    def filename(self, index: int) -> str:
        return f'{self.images_path}[{index}]'


class ReaderSource(torch.utils.data.Dataset):
    """Items of a timm reader as (PIL image, target); an unreadable image stops with its file name.

    timm's `ImageDataset` logs and skips unreadable samples, which silently changes the data; here it is an error.
    """

    def __init__(self, reader: Any, input_img_mode: str = 'RGB'):
        self.reader = reader
        self.input_img_mode = input_img_mode
        class_to_idx = getattr(reader, 'class_to_idx', None)
        self.classes = sorted(class_to_idx, key=class_to_idx.get) if class_to_idx else None

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> Tuple[Image.Image, int]:
        img, target, *_ = self.reader[index]
        try:
            if not isinstance(img, Image.Image):
                img = Image.open(img)
            if self.input_img_mode:
                img = img.convert(self.input_img_mode)  # decodes the pixels, so a truncated file fails here
        except (OSError, ValueError) as e:
            raise ValueError(f'corrupt or unreadable image {self.filename(index)}: {e}; remove or replace the file') \
                from e
        return img, -1 if target is None else target

    def filename(self, index: int) -> str:
        return self.reader.filename(index, absolute=True)


def create_source(
        name: str,
        root: Optional[str],
        split: str,
        is_training: bool,
        class_map: str = '',
        download: bool = False,
        input_img_mode: Optional[str] = None,
) -> torch.utils.data.Dataset:
    """A map-style dataset of (PIL image, target) for `--dataset name` under `--data-dir root`."""
    input_img_mode = input_img_mode or 'RGB'
    lower = name.lower()
    if lower in ('fashion_mnist', 'fashion-mnist', 'fashionmnist'):
        return FashionMNIST(root, split, input_img_mode)
    if lower.startswith(('hfids/', 'wds/', 'tfds/')):
        raise ValueError(f'--dataset {name}: streaming datasets cannot resume mid-epoch exactly and are not '
                         f"supported; use a folder/tar ('' ), 'torch/<name>' or 'hfds/<name>'")
    if not lower.startswith('hfds/'):
        if not root:
            raise ValueError(f'--data-dir is required for --dataset {name!r}')
        if not os.path.exists(root):
            raise ValueError(f'--data-dir {root} does not exist')
    dataset = create_dataset(
        name, root=root, split=split, is_training=is_training, class_map=class_map, download=download,
        input_img_mode=input_img_mode)
    if isinstance(dataset, torch.utils.data.IterableDataset):
        raise ValueError(f'--dataset {name}: iterable datasets are not supported')
    if hasattr(dataset, 'reader'):
        if len(dataset) == 0:
            raise ValueError(f'--data-dir {root}: no images found for split {split!r}')
        return ReaderSource(dataset.reader, input_img_mode)
    return dataset  # torchvision dataset: items are already (PIL image, target)


def source_num_classes(source: torch.utils.data.Dataset) -> Optional[int]:
    """Number of classes a source declares, or None when it does not say."""
    classes = getattr(source, 'classes', None)
    return len(classes) if classes else None


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch (CPU) RNGs for one sample.

    In the main process (`--workers 0`) the previous states are put back afterwards so the training RNG streams do not
    depend on the data; a loader worker owns its RNGs, so there the save / restore is skipped (it costs more than the
    transform of a small image).
    """
    in_main = torch.utils.data.get_worker_info() is None
    if in_main:
        py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.default_generator.manual_seed(seed)  # CPU generator only: transforms never touch a GPU RNG
    try:
        yield
    finally:
        if in_main:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)


class SeededTransformDataset(torch.utils.data.Dataset):
    """Applies `transform` to a source; keys are indices or (index, seed) pairs from `ResumableSampler`."""

    def __init__(self, source: torch.utils.data.Dataset, transform: Any):
        self.source = source
        self.transform = transform
        if hasattr(source, 'transform'):
            source.transform = None  # torchvision datasets: the transform runs here, seeded

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: Any) -> Tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        img, target = self.source[index]
        if seed is None:
            img = self.transform(img)
        else:
            with _seeded(seed):
                img = self.transform(img)
        return img, target


class ResumableSampler(torch.utils.data.Sampler):
    """One rank's share of an epoch's (shuffled) order, optionally with per-sample seeds, startable mid-epoch.

    Like `DistributedSampler`, the order is padded by repeating its head so every rank gets the same count. With
    `repeats > 0` each index appears `repeats` times in a row before the split across ranks (repeated augmentation
    as in DeiT); each rank then keeps ceil(N / num_replicas) samples, so an epoch still sees about N samples.
    """

    def __init__(
            self,
            num_samples: int,
            shuffle: bool = True,
            seed: int = 0,
            num_replicas: int = 1,
            rank: int = 0,
            repeats: int = 0,
            with_seeds: bool = True,
    ):
        if num_samples <= 0:
            raise ValueError('ResumableSampler: the dataset is empty')
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.repeats = max(int(repeats), 1)
        self.with_seeds = with_seeds
        self.epoch = 0
        self.start = 0
        self.num_local = math.ceil(num_samples / num_replicas)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and the number of this rank's samples to skip (to resume mid-epoch)."""
        self.epoch = epoch
        self.start = start

    def _order(self) -> Tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g) if self.shuffle else torch.arange(self.num_samples)
        order = order.repeat_interleave(self.repeats)
        total = math.ceil(len(order) / self.num_replicas) * self.num_replicas
        order = torch.cat([order, order[:total - len(order)]])
        seeds = torch.randint(0, 2 ** 62, (total,), generator=g)
        return order[self.rank::self.num_replicas][:self.num_local], seeds[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[Any]:
        order, seeds = self._order()
        for pos in range(self.start, len(order)):
            yield (int(order[pos]), int(seeds[pos])) if self.with_seeds else int(order[pos])

    def __len__(self) -> int:
        return self.num_local - self.start


def _loader(dataset, sampler, batch_size, workers, pin_memory, drop_last) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        drop_last=drop_last, persistent_workers=workers > 0, generator=torch.Generator())


def create_train_loader(
        source: torch.utils.data.Dataset,
        data_config: dict,
        args: Any,
        world_size: int = 1,
        rank: int = 0,
) -> Tuple[torch.utils.data.DataLoader, ResumableSampler]:
    """Training loader with timm's train transforms; returns the loader and its (resumable) sampler."""
    transform = create_transform(
        data_config['input_size'], is_training=True, no_aug=args.no_aug, train_crop_mode=args.train_crop_mode,
        scale=tuple(args.scale), ratio=tuple(args.ratio), hflip=args.hflip, vflip=args.vflip,
        color_jitter=args.color_jitter, auto_augment=args.aa, interpolation=args.train_interpolation,
        mean=data_config['mean'], std=data_config['std'], re_prob=args.reprob, re_mode=args.remode,
        re_count=args.recount, use_prefetcher=False)
    sampler = ResumableSampler(len(source), shuffle=True, seed=args.seed, num_replicas=world_size, rank=rank,
                               repeats=int(args.aug_repeats))
    loader = _loader(SeededTransformDataset(source, transform), sampler, args.batch_size, args.workers,
                     args.pin_mem, drop_last=True)
    return loader, sampler


def create_eval_loader(
        source: torch.utils.data.Dataset,
        data_config: dict,
        batch_size: int,
        workers: int,
        pin_memory: bool = False,
        world_size: int = 1,
        rank: int = 0,
        indices: Optional[Sequence[int]] = None,
) -> torch.utils.data.DataLoader:
    """Evaluation loader with timm's eval transforms (resize, center crop by crop_pct, normalize), in order."""
    transform = create_transform(
        data_config['input_size'], is_training=False, interpolation=data_config['interpolation'],
        mean=data_config['mean'], std=data_config['std'], crop_pct=data_config['crop_pct'],
        crop_mode=data_config.get('crop_mode'))
    dataset = SeededTransformDataset(source, transform)
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, list(indices))
    sampler = ResumableSampler(len(dataset), shuffle=False, num_replicas=world_size, rank=rank, with_seeds=False)
    return _loader(dataset, sampler, batch_size, workers, pin_memory, drop_last=False)
