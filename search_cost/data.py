"""The search's proxy data: scikit-learn's digits (zero set-up, the default) or the user's image folder.

An image folder has the usual layout, `train/<class>/*.jpg` and `val/<class>/*.jpg`; without `val/` a
seeded fifth of each class of `train/` is held out. The weights train on `train`, the architecture and
the proxy accuracy use `val`, as FBNetV2 splits ImageNet. Training images get the standard augmentation
(a random resized crop to the largest proxy size, a horizontal flip), held-out ones a resize and a
centre crop; the supernet then subsamples each batch to every resolution option. A folder is checked
before any training (it exists, has at least two classes, every image's header reads), and what is
wrong is said in one sentence.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from latency.vocab.errors import LutError
from search_cost.distributed import ONE_PROCESS, Ranks, rank_slice

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff"})
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as every torchvision recipe
HELD_OUT = 0.2  # of each class, when the folder has no val/

# This process's slice of a step's training batch (x, y) and held-out batch, and the global batches' sizes.
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int]


class DataError(LutError):
    """An image folder the search cannot use, in one sentence."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker's error reaches the main process as its type, its traceback prepended to the
        # message ("Caught DataError in DataLoader worker process 0. Original Traceback ..."): keep the sentence.
        last = message.rstrip().splitlines()[-1] if "Original Traceback" in message else message
        super().__init__(last.split(f"{type(self).__name__}: ", 1)[-1], exit_code=2)


# ---- digits ------------------------------------------------------------------------------------------


class DigitsData:
    """scikit-learn's 8x8 digits as 3-channel `size` x `size` images, in memory, split 80/20."""

    num_classes = 10

    def __init__(self, seed: int, size: int, limit: int | None = None) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images[:limit], dtype=torch.float32)[:, None] / 16.0
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        images = ((images - images.mean()) / images.std()).repeat(1, 3, 1, 1)
        labels = torch.tensor(digits.target[:limit], dtype=torch.long)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        cut = int(0.8 * len(labels))
        train, held = order[:cut], order[cut:]
        self.tensors = (images[train], labels[train], images[held], labels[held])

    def epoch(self, generator: torch.Generator, batch: int, ranks: Ranks = ONE_PROCESS) -> Iterator[Batch]:
        """One pass over the training split in global batches of `batch` (this process's slice of each);
        each step with a held-out batch for the architecture."""
        train_x, train_y, held_x, held_y = self.tensors
        order = torch.randperm(len(train_y), generator=generator)
        held_order = torch.randperm(len(held_y), generator=generator)
        for step, start in enumerate(range(0, len(order), batch)):
            pick = held_order[(step * batch) % len(held_order) :][:batch]
            chosen = order[start : start + batch]
            mine, held = rank_slice(chosen, ranks), rank_slice(pick, ranks)
            yield train_x[mine], train_y[mine], held_x[held], held_y[held], len(chosen), len(pick)

    def held_out(self, batch: int = 512) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        _, _, x, y = self.tensors
        for i in range(0, len(y), batch):
            yield x[i : i + batch], y[i : i + batch]

    @property
    def held_out_count(self) -> int:
        return len(self.tensors[3])


# ---- image folders -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    paths: tuple[Path, ...]
    labels: tuple[int, ...]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_folder(root: Path, seed: int = 0) -> tuple[list[str], Split, Split]:
    """The classes and the train and held-out splits of an image folder; DataError for one the search
    cannot use (before any training)."""
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DataError(f"The data folder {root} does not exist (or is not a folder).")
    train_root = root / "train"
    if not train_root.is_dir():
        raise DataError(f"{root} has no train/ folder: the layout is train/<class>/*.jpg (and val/<class>/*.jpg).")
    folders = _class_folders(train_root)
    per_class = {f.name: _images(f) for f in folders}
    if not any(per_class.values()):
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DataError(f"{train_root} has no images in class folders (train/<class>/*, one of {suffixes}).")
    empty = [name for name, images in per_class.items() if not images]
    if empty:
        raise DataError(f"{train_root / empty[0]} has no images: every class folder needs some, or remove it.")
    classes = sorted(per_class)
    if len(classes) < 2:
        raise DataError(f"{train_root} has one class ({classes[0]}): a classifier needs at least two.")
    val_root = root / "val"
    if val_root.is_dir():
        val = {f.name: _images(f) for f in _class_folders(val_root)}
        unknown = sorted(set(val) - set(classes))
        if unknown:
            raise DataError(f"{val_root / unknown[0]} is not a class of train/ ({', '.join(classes)}).")
        if not any(val.values()):
            raise DataError(f"{val_root} has no images: fill it or remove it (a fifth of train/ is held out then).")
        train = {name: per_class[name] for name in classes}
    else:
        rng = random.Random(seed)
        train, val = {}, {}
        for name in classes:
            images = list(per_class[name])
            rng.shuffle(images)
            cut = max(1, round(HELD_OUT * len(images))) if len(images) > 1 else 0
            val[name], train[name] = sorted(images[:cut]), sorted(images[cut:])
    for path in (p for split in (train, val) for images in split.values() for p in images):
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018 (the header is read)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise DataError(f"{path} is not a readable image ({_reason(exc)}): fix or remove it.") from None
    if not any(val.values()):  # every class of train/ has a single image, and no val/
        raise DataError(
            f"{train_root}: no image is held out to score the search (each class has one image and there is no "
            "val/): add a val/ folder, or more images per class."
        )
    index = {name: i for i, name in enumerate(classes)}

    def split(part: dict[str, list[Path]]) -> Split:
        pairs = [(p, index[name]) for name in sorted(part) for p in part[name]]
        return Split(tuple(p for p, _ in pairs), tuple(label for _, label in pairs))

    return classes, split(train), split(val)


class FolderImages(Dataset[tuple[torch.Tensor, int]]):
    """A split's images as `size` x `size` tensors: augmented for training, centre-cropped otherwise."""

    def __init__(self, split: Split, size: int, train: bool) -> None:
        self.split, self.size, self.train = split, size, train
        self.seed = 0  # an epoch's: each image's crop and flip follow from it and the image's index

    def __len__(self) -> int:
        return len(self.split.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path = self.split.paths[i]
        try:  # the scan read each header; the pixels are read only here (a truncated file fails now)
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, Image.DecompressionBombError) as exc:
            raise DataError(f"{path} is not a readable image ({_reason(exc)}): fix or remove it.") from None
        width, height = image.size
        if self.train:  # a random resized crop (8-100% of the area, aspect 3/4-4/3) and a flip
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + i) % 2**63)
            box = _random_crop(width, height, generator)
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
            if torch.rand((), generator=generator) < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:  # the shorter side to size / 0.875, then the centre
            scale = self.size / 0.875 / min(width, height)
            image = image.resize(
                (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR
            )
            left, top = (image.width - self.size) // 2, (image.height - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
        array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
        return (array - mean) / std, self.split.labels[i]


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _random_crop(width: int, height: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    area = width * height
    for _ in range(10):
        target = area * float(torch.empty(()).uniform_(0.08, 1.0, generator=generator))
        ratio = math.exp(float(torch.empty(()).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            return left, top, left + w, top + h
    side = min(width, height)  # fall back to the centre square
    return (width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2


class FolderData:
    """An image folder as the search's proxy data, loaded by `workers` processes."""

    def __init__(self, root: Path, seed: int, size: int, workers: int = 0) -> None:
        self.classes, train, held = scan_folder(root, seed)
        self.num_classes = len(self.classes)
        self.train_images = FolderImages(train, size, train=True)
        self.held_images = FolderImages(held, size, train=False)
        self.workers = workers

    @property
    def held_out_count(self) -> int:
        return len(self.held_images)

    def _loader(self, images: FolderImages, batches: list[torch.Tensor], seed: int) -> DataLoader:
        images.seed = seed
        return DataLoader(images, batch_sampler=[b.tolist() for b in batches], num_workers=self.workers)

    def epoch(self, generator: torch.Generator, batch: int, ranks: Ranks = ONE_PROCESS) -> Iterator[Batch]:
        # Seeds drawn from the search's generator: an epoch's order and crops follow from its checkpoint,
        # and are the same in every process, which loads only its slice of each global batch.
        train_seed, held_seed = (int(v) for v in torch.randint(0, 2**62, (2,), generator=generator))
        order = torch.randperm(len(self.train_images), generator=torch.Generator().manual_seed(train_seed))
        held_order = torch.randperm(len(self.held_images), generator=torch.Generator().manual_seed(held_seed))
        train = [order[start : start + batch] for start in range(0, len(order), batch)]
        if ranks.world > 1 and len(train[-1]) < ranks.world:  # a last batch some process would get none of
            train = train[:-1]
        # held-out batches go round the split, so that each is whole and every process gets some of it; no
        # longer than the split (a batch beyond it would load the same images many times over)
        held_batch = min(batch, max(len(held_order), ranks.world))
        cycled = held_order.repeat(-(-held_batch * (len(train) + 1) // max(len(held_order), 1)))
        held = [cycled[step * held_batch : (step + 1) * held_batch] for step in range(len(train))]
        train_mine, held_mine = [rank_slice(b, ranks) for b in train], [rank_slice(b, ranks) for b in held]
        loaded = zip(
            self._loader(self.train_images, train_mine, train_seed),
            self._loader(self.held_images, held_mine, held_seed),
            strict=True,
        )
        for ((x, y), (hx, hy)), chosen, pick in zip(loaded, train, held, strict=True):
            yield x, y, hx, hy, len(chosen), len(pick)

    def held_out(self, batch: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        everything = torch.arange(len(self.held_images))
        yield from self._loader(self.held_images, list(everything.split(batch)), 0)
