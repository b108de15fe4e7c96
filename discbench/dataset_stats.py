"""``discbench dataset stats DIR``: measure an ImageFolder dataset of your own for its ``[datasets.NAME]`` table.

The directory has the layout the resident ImageFolder loader reads (``discbench.data.load_tinyimagenet``):
``DIR/train/<class>/*.png|jpg`` and ``DIR/val/<class>/`` (or ``test/``, or Tiny-ImageNet's raw ``val/images`` with
``val_annotations.txt``). The images are listed with torchvision's ImageFolder functions and decoded with
``discbench.data.decode_image``, as that loader does, so the mean and std are of the pixels training sees. They are
streamed: one image at a time, exact integer sums of the pixel values and of their squares per channel, divided in
float64 at the end (population std, of values / 255).
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from discbench.errors import DiscbenchError
from discbench.tomlout import BARE_KEY

LAYOUT = "imagefolder-resident"
DIGITS = 4  # as bench.toml's own datasets


@dataclass(frozen=True)
class FolderStats:
    """What ``measure`` found: the splits, the classes, the images' shape and the training pixels' statistics."""

    directory: Path
    eval_split: str  # val or test
    classes: tuple[str, ...]
    train_images: int
    eval_images: int
    image_size: int
    source_channels: int  # colour channels of the files: 1 (grey) or 3; the loader decodes both to RGB
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        """The channels training sees: the resident loader converts every image to RGB."""
        return 3


def _shown(path: Path) -> str:
    text = str(path)
    return text if text.isprintable() else json.dumps(text)


def _header(path: str) -> tuple[int, int, int, str]:
    """(width, height, colour channels, mode) of an image file, read from its header (nothing is decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.width, img.height, 1 if Image.getmodebase(img.mode) == "L" else 3, img.mode  # P: colour
    except (UnidentifiedImageError, OSError) as exc:
        raise DiscbenchError(f"{path} is not a readable image ({exc.__class__.__name__}); remove or replace it") \
            from None


def _listing(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """The class folders of ``folder`` and its images, as torchvision's ImageFolder lists them; a folder without class
    folders, or a class folder without images, is one line."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        classes, class_to_idx = find_classes(folder)
    except FileNotFoundError:
        raise DiscbenchError(f"{_shown(folder)} holds no class folders: put the images into one folder per class, "
                             f"{_shown(folder)}/<class>/*.png|jpg") from None
    samples = make_dataset(folder, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    counts = np.bincount([label for _, label in samples], minlength=len(classes))
    empty = next((name for name in classes if counts[class_to_idx[name]] == 0), None)
    if empty is not None:
        raise DiscbenchError(f"class folder {_shown(folder / empty)} holds no images ({', '.join(IMG_EXTENSIONS)}): "
                             f"add its images or remove the folder")
    return classes, samples


def _eval_samples(base: Path, split: str, classes: list[str]) -> list[tuple[str, int]]:
    """The evaluation split's images, found as the resident loader finds them; its classes must be the training
    split's (the loader numbers each split's class folders on their own)."""
    annotations = base / split / "val_annotations.txt"
    if annotations.is_file():  # Tiny-ImageNet's raw layout: val/images + one "<file>\t<class>\t..." line per image
        known = {name: i for i, name in enumerate(classes)}
        samples = []
        for line in annotations.read_text().splitlines():
            if not line.strip():
                continue
            file, name = line.split("\t")[:2]
            if name not in known:
                raise DiscbenchError(f"{_shown(annotations)} names class '{name}', which {_shown(base / 'train')} "
                                     f"has no folder for")
            samples.append((str(base / split / "images" / file), known[name]))
        return samples
    eval_classes, samples = _listing(base / split)
    if eval_classes != classes:
        missing = sorted(set(classes) - set(eval_classes))
        extra = sorted(set(eval_classes) - set(classes))
        what = (f"lacks the class folder '{missing[0]}'" if missing else f"has a class folder '{extra[0]}'"
                " that train/ has not")
        raise DiscbenchError(f"{_shown(base / split)} {what}: the evaluation split needs the same class folders as "
                             f"train/ (its labels are numbered by their sorted names)")
    return samples


def measure(directory: Path | str) -> FolderStats:
    """Check the ImageFolder dataset in ``directory`` and measure its training split (see the module's docstring).
    Every image has the size and colour channels of the first training image, and is square."""
    from discbench.data import EVAL_SPLITS, decode_image

    base = Path(directory).expanduser()
    if not base.exists():
        raise DiscbenchError(f"{_shown(base)} not found: give the dataset's directory, holding train/<class>/ and "
                             f"val/<class>/ (or test/)")
    if not base.is_dir():
        raise DiscbenchError(f"{_shown(base)} is not a directory: give the dataset's directory, holding "
                             f"train/<class>/ and val/<class>/ (or test/)")
    if not (base / "train").is_dir():
        raise DiscbenchError(f"{_shown(base)} has no train/ folder: expected {_shown(base)}/train/<class>/*.png|jpg "
                             f"and {_shown(base)}/val/<class>/ (or test/), one folder per class")
    split = next((name for name in EVAL_SPLITS if (base / name).is_dir()), None)
    if split is None:
        raise DiscbenchError(f"{_shown(base)} has no {' or '.join(f'{s}/' for s in EVAL_SPLITS)} folder next to "
                             f"train/: the evaluation split, one folder per class like train/")
    classes, train = _listing(base / "train")
    if len(classes) < 2:
        raise DiscbenchError(f"{_shown(base / 'train')} has one class folder ('{classes[0]}'); a classification "
                             f"dataset needs two or more")
    evaluation = _eval_samples(base, split, classes)

    first = train[0][0]
    width, height, channels, mode = _header(first)
    if width != height:
        raise DiscbenchError(f"{first} is {width}x{height}: the resident loader takes square images (image_size x "
                             f"image_size); crop or resize them first")
    size = width

    def check(path: str) -> None:  # one size; grey and colour may mix (Tiny-ImageNet does): all decode to RGB
        w, h, _, _ = _header(path)
        if (w, h) != (size, size):
            raise DiscbenchError(f"{path} is {w}x{h}; expected {size}x{size}, as the first training image {first}: "
                                 f"resize the images to one size")

    total = np.zeros(3, dtype=np.int64)  # exact: 255^2 per pixel leaves room for 1.4e14 pixels
    squares = np.zeros(3, dtype=np.int64)
    for path, _ in train:
        check(path)
        pixels = decode_image(path, size).reshape(-1, 3).astype(np.int64)
        total += pixels.sum(axis=0)
        squares += (pixels * pixels).sum(axis=0)
    for path, _ in evaluation:
        check(path)

    n = len(train) * size * size  # pixels per channel
    mean, std = [], []
    for c, (s1, s2) in enumerate(zip(total.tolist(), squares.tolist(), strict=True)):
        mean.append(s1 / (n * 255))
        std.append(math.sqrt(n * s2 - s1 * s1) / (n * 255))  # exact integers until the square root
        if round(std[-1], DIGITS) == 0:
            raise DiscbenchError(f"channel {c} of the training images is (nearly) one value in every pixel (std "
                                 f"{std[-1]:.1e}): normalising by it would divide by zero")
    return FolderStats(directory=base.resolve(), eval_split=split, classes=tuple(classes), train_images=len(train),
                       eval_images=len(evaluation), image_size=size, source_channels=channels, mean=tuple(mean),
                       std=tuple(std))


def table(stats: FolderStats, name: str) -> str:
    """A ready-to-paste ``[datasets.NAME]`` table with every key of a dataset, after a comment saying what was
    measured and how; ``crop_padding`` and ``flip`` are not measured and say so."""
    if not name:
        raise DiscbenchError("--name must not be empty: it names the table, [datasets.NAME]")
    key = name if BARE_KEY.match(name) else json.dumps(name, ensure_ascii=False)
    colour = "RGB" if stats.source_channels == 3 else "grey (decoded to RGB, as the loader does)"

    def floats(values: tuple[float, ...]) -> str:
        return "[" + ", ".join(f"{v:.{DIGITS}f}" for v in values) + "]"

    return "\n".join([
        f"# measured by `discbench dataset stats` in {_shown(stats.directory)}: {len(stats.classes)} classes, "
        f"{stats.train_images} train / {stats.eval_images} {stats.eval_split} images, {stats.image_size}x"
        f"{stats.image_size} {colour};",
        f"# mean, std: per channel, of pixel value / 255 over every pixel of every training image as the {LAYOUT} "
        f"loader decodes it (exact sums, float64, population std)",
        f"# train on it with --dataset {shlex.quote(name)} --data-dir {shlex.quote(_shown(stats.directory))} (and "
        f"--config FILE unless this table is in ./bench.toml)",
        f"[datasets.{key}]",
        f'layout = "{LAYOUT}"',
        f"channels = {stats.channels}",
        f"image_size = {stats.image_size}",
        f"num_classes = {len(stats.classes)}",
        f"mean = {floats(stats.mean)}",
        f"std = {floats(stats.std)}",
        f"crop_padding = {stats.image_size // 8}   # not measured: image_size / 8, as CIFAR (4 at 32) and "
        f"Tiny-ImageNet (8 at 64)",
        "flip = true        # not measured: false when a mirrored image is another class (digits, text)",
    ])
