"""Datasets: loaders by on-disk layout, held on the device as uint8 and augmented there in batches.

Small datasets (Fashion-MNIST, CIFAR, Tiny-ImageNet) are loaded once as uint8 tensors on the training device and
augmented per batch on that device (random crop with zero padding, horizontal flip), reproducibly under a
``torch.Generator`` seeded with the run's seed (airbench's approach, instead of a per-sample PIL DataLoader).
ImageNet streams through ``torchvision.datasets.ImageFolder`` and a DataLoader.

Nothing is downloaded unless the caller passes ``download=True`` (torchvision's downloaders, for machines with
internet). A missing or corrupt dataset raises ``DiscbenchError`` naming the expected files and how to get them.
"""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from discbench.config import DatasetConfig, RecipeConfig
from discbench.errors import DiscbenchError
from discbench.registry import DATASETS

DEFAULT_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SUBSET_SEED = 20221130  # fixed: every run of every seed sees the same subset


@dataclass
class Batch:
    """One training batch on the device. Shape: x (B, C, H, W) float, y (B,) int64, idx (B,) int64."""

    x: Tensor
    y: Tensor
    idx: Tensor


def data_root(data_dir: str | os.PathLike | None) -> Path | None:
    """The user's data directory: ``--data-dir``, else ``$DISCBENCH_DATA``, else None."""
    root = data_dir or os.environ.get("DISCBENCH_DATA")
    return Path(root).expanduser() if root else None


# -- augmentation on the device --------------------------------------------------------------------------------------
def random_crop_flip(images: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Random crop with zero padding and random horizontal flip of a uint8 batch, all on its device.

    Shape: images (B, C, H, W) -> (B, C, H, W).
    """
    b, c, h, w = images.shape
    device = images.device
    out = images
    if padding:
        padded = F.pad(images, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]  # (B, 1, 1, W)
        bidx = torch.arange(b, device=device)[:, None, None, None]
        cidx = torch.arange(c, device=device)[None, :, None, None]
        out = padded[bidx, cidx, rows, cols]
    if flip:
        mask = torch.rand(b, generator=generator, device=device) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(3), out)
    return out


class Normalize:
    """uint8 (B, C, H, W) -> float normalised with the dataset's mean and std."""

    def __init__(self, cfg: DatasetConfig, device: torch.device):
        self.mean = torch.tensor(cfg.mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(cfg.std, device=device).view(1, -1, 1, 1) * 255

    def __call__(self, images: Tensor) -> Tensor:
        return (images.float() - self.mean) / self.std


class ResidentData:
    """A dataset held on the device as uint8; batches are augmented and normalised on the device."""

    resident = True  # a protocol's extra views (``Protocol.views``) can draw any training sample

    def __init__(self, cfg: DatasetConfig, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
                 device: torch.device):
        self.cfg = cfg
        self.train_x, self.train_y = (t.to(device) for t in train)
        self.test_x, self.test_y = (t.to(device) for t in test)
        self.device = device
        self.normalize = Normalize(cfg, device)

    @property
    def num_train(self) -> int:
        return len(self.train_y)

    @property
    def num_test(self) -> int:
        return len(self.test_y)

    def subset(self, train: int, test: int) -> ResidentData:
        """A fixed subset (the same for every seed): ``train`` and ``test`` samples, 0 for all."""

        def pick(x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor]:
            if not n or n >= len(y):
                return x, y
            perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SUBSET_SEED))[:n].sort().values
            perm = perm.to(x.device)
            return x[perm], y[perm]

        return ResidentData(self.cfg, pick(self.train_x, self.train_y, train), pick(self.test_x, self.test_y, test),
                            self.device)

    def epoch_order(self, generator: torch.Generator) -> Tensor:
        """The epoch's sample order: a permutation of 0..num_train-1 drawn from ``generator``."""
        return torch.randperm(self.num_train, generator=generator, device=self.device)

    def train_epoch(self, batch_size: int, generator: torch.Generator, order: Tensor | None = None, start: int = 0,
                    rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Shuffled, augmented batches of one epoch; the last incomplete batch is dropped.

        ``order`` is the epoch's permutation (drawn from ``generator`` when None) and ``start`` the first step: a
        resumed run continues an epoch at the exact step with the generator state it had there. ``batch_size`` is
        the global batch; with ``world_size`` > 1 rank ``rank`` gets its contiguous slice of every global batch,
        augmented as part of the whole batch, so the ranks' slices together are the one-process batch.
        """
        order = self.epoch_order(generator) if order is None else order
        per_rank = batch_size // world_size
        for step in range(start, self.steps_per_epoch(batch_size)):
            idx = order[step * batch_size:(step + 1) * batch_size]
            images = random_crop_flip(self.train_x[idx], self.cfg.crop_padding, self.cfg.flip, generator)
            mine = slice(rank * per_rank, (rank + 1) * per_rank)
            yield Batch(self.normalize(images[mine]), self.train_y[idx][mine], idx[mine])

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.num_train // batch_size

    # -- what a protocol's extra views draw on (``discbench.api.Protocol.views``) ------------------------------------
    def augment(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The dataset's training augmentation (random crop with zero padding, flip) of a uint8 batch."""
        return random_crop_flip(images, self.cfg.crop_padding, self.cfg.flip, generator)

    def sample(self, idx: Tensor, generator: torch.Generator) -> Tensor:
        """Training samples ``idx`` as a training batch sees them: freshly augmented and normalised.

        Shape: idx (B,) -> (B, C, H, W) float.
        """
        return self.normalize(self.augment(self.train_x[idx], generator))

    def class_counts(self) -> Tensor:
        """Training samples per class. Shape: (num_classes,) int64."""
        return torch.bincount(self.train_y, minlength=self.cfg.num_classes)

    def same_class_partners(self, idx: Tensor, generator: torch.Generator) -> Tensor:
        """For each training index, another training sample of the same class, drawn uniformly (CS-KD's pairs).

        A sample at position p among the n_c samples of its class c gets the sample at position (p + 1 + r) mod n_c
        with r uniform in 0..n_c - 2: every other sample of c with probability 1 / (n_c - 1), never itself. A class
        with one sample pairs it with itself (``Protocol.check_data`` refuses such data where a method needs pairs).

        Shape: idx (B,) -> (B,) int64.
        """
        order = torch.argsort(self.train_y, stable=True)  # training indices grouped by class
        counts = self.class_counts()
        starts = torch.cumsum(counts, 0) - counts  # where each class begins in ``order``
        position = torch.empty_like(order)
        position[order] = torch.arange(len(order), device=order.device)
        y = self.train_y[idx]
        n = counts[y]
        rank = position[idx] - starts[y]  # the sample's position within its class
        r = (torch.rand(len(idx), generator=generator, device=idx.device) * (n - 1).clamp(min=1)).long()
        partner_rank = torch.where(n > 1, (rank + 1 + r) % n, rank)
        return order[starts[y] + partner_rank]

    def test_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, self.num_test, batch_size):
            yield self.normalize(self.test_x[start:start + batch_size]), self.test_y[start:start + batch_size]


# -- loaders by layout -----------------------------------------------------------------------------------------------
Arrays = tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]


def _read_idx(path: Path, magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DiscbenchError(f"{path} is corrupt ({exc}); reinstall the dataset or delete the file") from exc
    header = np.frombuffer(raw[:4], dtype=">u4")
    if len(raw) < 8 or header[0] != magic:
        raise DiscbenchError(f"{path} is not an IDX file with magic {magic}; reinstall the dataset")
    ndim = magic & 0xFF
    dims = np.frombuffer(raw[4:4 + 4 * ndim], dtype=">u4").astype(int)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DiscbenchError(f"{path} is truncated: {data.size} bytes for shape {tuple(dims)}; reinstall the dataset")
    return data.reshape(dims)


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@DATASETS.register("idx")
def load_idx(cfg: DatasetConfig, root: Path | None, download: bool) -> Arrays:
    """MNIST-format IDX files (gzipped or not): Debian's ``dataset-fashion-mnist`` or torchvision's raw folder."""
    candidates = [DEFAULT_FASHION_MNIST] if root is None else [root, root / cfg.name, root / "FashionMNIST" / "raw"]
    if download and root is not None:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)

    def find(folder: Path, stem: str) -> Path | None:
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
        return None

    for folder in candidates:
        files = [find(folder, stem) for stem in IDX_FILES]
        if all(files):
            break
    else:
        where = " or ".join(str(c) for c in candidates)
        raise DiscbenchError(
            f"{cfg.name} not found: expected {', '.join(s + '.gz' for s in IDX_FILES)} in {where}; "
            f"install it with 'apt-get install dataset-fashion-mnist', or pass --data-dir DIR (with --download on a "
            f"machine with internet)"
        )
    xtr, ytr, xte, yte = (_read_idx(f, m) for f, m in zip(files, (2051, 2049, 2051, 2049), strict=True))
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise DiscbenchError(f"{cfg.name} in {folder}: image and label counts differ; reinstall the dataset")
    as_tensors = [torch.from_numpy(a.copy()) for a in (xtr, ytr, xte, yte)]
    return (as_tensors[0][:, None], as_tensors[1].long()), (as_tensors[2][:, None], as_tensors[3].long())


CIFAR_FILES = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", "CIFAR10"),
    100: ("cifar-100-python", ["train"], ["test"], b"fine_labels", "CIFAR100"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Reads only what a CIFAR pickle holds: dicts, lists, bytes, str, numbers and numpy arrays.

    ``pickle.load`` calls any global a file names, so a file in a data directory could run code when the dataset is
    opened. This unpickler resolves exactly the globals that numpy's array pickles use (protocols 2 to 5, numpy 1
    and 2 module names) and ``_codecs.encode`` (protocol 2's bytes); any other global is refused before it is called.
    """

    ALLOWED = frozenset({
        ("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR pickle never holds (refused, "
                                         f"not run)")
        return super().find_class(module, name)


@DATASETS.register("cifar-pickle")
def load_cifar(cfg: DatasetConfig, root: Path | None, download: bool) -> Arrays:
    """CIFAR-10/100 in the python-pickle layout that torchvision reads (``<dir>/cifar-100-python/train``...)."""
    folder_name, train_files, test_files, label_key, tv_name = CIFAR_FILES[cfg.num_classes]
    if root is None:
        raise DiscbenchError(
            f"{cfg.name} needs a data directory: pass --data-dir DIR (or set DISCBENCH_DATA) where DIR/{folder_name}/ "
            f"holds {', '.join(train_files + test_files)} from https://www.cs.toronto.edu/~kriz/cifar.html "
            f"(or add --download on a machine with internet)"
        )
    if download:
        import torchvision.datasets

        getattr(torchvision.datasets, tv_name)(str(root), train=True, download=True)
    folder = root if (root / train_files[0]).is_file() else root / folder_name

    def read(names: list[str]) -> tuple[Tensor, Tensor]:
        xs, ys = [], []
        for name in names:
            path = folder / name
            if not path.is_file():
                raise DiscbenchError(
                    f"{cfg.name} not found: expected {path} (the python version of {folder_name} from "
                    f"https://www.cs.toronto.edu/~kriz/cifar.html, extracted into --data-dir), or add --download"
                )
            try:
                with open(path, "rb") as f:
                    entry = _CifarUnpickler(f, encoding="bytes").load()
                data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                labels = np.asarray(entry[label_key], dtype=np.int64)
            except Exception as exc:
                raise DiscbenchError(f"{path} is corrupt or not a CIFAR pickle ({exc}); download it again") from exc
            if len(data) != len(labels):
                raise DiscbenchError(f"{path}: {len(data)} images but {len(labels)} labels; download it again")
            xs.append(data)
            ys.append(labels)
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    return read(train_files), read(test_files)


IMAGE_FOLDER_SOURCES = {  # where to get each ImageFolder dataset (neither can be downloaded by torchvision)
    "tiny-imagenet-200": "http://cs231n.stanford.edu/tiny-imagenet-200.zip (unzip it into DIR)",
    "imagenet": "https://image-net.org/download.php (ILSVRC2012 train and val, after registering; val sorted into "
                "one folder per wnid)",
}


BUILT_IN_FOLDERS = {"tinyimagenet": "tiny-imagenet-200", "imagenet": "imagenet"}  # dataset name -> its folder
EVAL_SPLITS = ("val", "test")  # the evaluation split's folder: the first of these that exists


def _image_folder_root(cfg: DatasetConfig, root: Path | None) -> tuple[Path, str]:
    """(the dataset's folder, its evaluation split's name): ``DIR/<folder>/`` or ``DIR`` itself, holding ``train/``
    and ``val/`` (or ``test/``), one folder per class. The folder is Tiny-ImageNet's or ImageNet's usual name for
    those datasets, the dataset's own name for a dataset of your own (a ``[datasets.NAME]`` table)."""
    folder_name = BUILT_IN_FOLDERS.get(cfg.name, cfg.name)
    if root is None:
        raise DiscbenchError(f"{cfg.name} needs a data directory: pass --data-dir DIR where DIR/{folder_name}/train "
                             f"and DIR/{folder_name}/val (or test) hold one folder per class")
    base = root / folder_name if (root / folder_name).is_dir() else root
    split = next((name for name in EVAL_SPLITS if (base / name).is_dir()), None)
    if not (base / "train").is_dir() or split is None:
        source = IMAGE_FOLDER_SOURCES.get(folder_name)
        how = f"get it from {source}" if source else "put your images there, one folder per class"
        raise DiscbenchError(f"{cfg.name} not found: expected {base}/train and {base}/val or {base}/test "
                             f"(ImageFolder layout, one folder per class); {how}")
    return base, split


def decode_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """One image as the resident ImageFolder loader holds it: RGB, resized to ``size`` x ``size`` (a copy when it is
    that size already). Shape: (size, size, 3) uint8. ``discbench dataset stats`` measures these pixels."""
    from PIL import Image

    with Image.open(path) as img:
        return np.array(img.convert("RGB").resize((size, size)), dtype=np.uint8)


@DATASETS.register("imagefolder-resident")
def load_tinyimagenet(cfg: DatasetConfig, root: Path | None, download: bool) -> Arrays:
    """Tiny-ImageNet: ``train/<wnid>/images/*.JPEG`` and either ``val/<wnid>/`` or the raw ``val/images`` with
    ``val/val_annotations.txt``; decoded once into uint8 tensors."""
    from torchvision.datasets import ImageFolder

    base, split = _image_folder_root(cfg, root)
    train = ImageFolder(str(base / "train"))
    annotations = base / split / "val_annotations.txt"
    if annotations.is_file():
        val = [(str(base / split / "images" / line.split("\t")[0]), train.class_to_idx[line.split("\t")[1]])
               for line in annotations.read_text().splitlines() if line.strip()]
    else:
        val = ImageFolder(str(base / split)).samples

    def decode(samples: list[tuple[str, int]]) -> tuple[Tensor, Tensor]:
        size = cfg.image_size
        x = torch.empty(len(samples), 3, size, size, dtype=torch.uint8)
        for i, (path, _) in enumerate(samples):
            x[i] = torch.from_numpy(decode_image(path, size)).permute(2, 0, 1)
        return x, torch.tensor([label for _, label in samples], dtype=torch.int64)

    return decode(train.samples), decode(val)


class _OrderSampler:
    """A sampler whose indices are set before each epoch, so one DataLoader (and its workers) serves every epoch."""

    def __init__(self):
        self.indices: list[int] = []

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class StreamedImageFolder:
    """ImageNet-scale data: ImageFolder + DataLoader with PIL augmentation (RandomResizedCrop, flip).

    Samples are addressed by their position in the (sub)set, 0..num_train-1: that is what ``Batch.idx`` holds and
    what memory banks (CRD) are indexed with; ``train_indices`` maps a position to the ImageFolder's index. The
    DataLoaders are built once and keep their workers alive across epochs (``persistent_workers``); the training
    loader is rebuilt only for a new run (a new data generator). The epoch's order comes from the run's generator
    (reproduced on resume); the PIL augmentation draws from the workers' own RNGs, seeded from torch's global RNG
    when the loader starts, so it is reproducible for an uninterrupted run but not across a resume.
    """

    resident = False  # samples stream from disk: no extra views (``Protocol.views``)

    def __init__(self, cfg: DatasetConfig, base: Path, device: torch.device, workers: int | None = None,
                 split: str = "val"):
        from torchvision import transforms
        from torchvision.datasets import ImageFolder

        norm = transforms.Normalize(cfg.mean, cfg.std)
        size = cfg.image_size
        train_tf = [transforms.RandomResizedCrop(size)] + ([transforms.RandomHorizontalFlip()] if cfg.flip else [])
        self.train = ImageFolder(str(base / "train"), transforms.Compose([*train_tf, transforms.ToTensor(), norm]))
        self.test = ImageFolder(str(base / split), transforms.Compose(
            [transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size), transforms.ToTensor(), norm]))
        self.device = device
        self.workers = min(8, os.cpu_count() or 1) if workers is None else workers
        self.train_indices: list[int] = list(range(len(self.train)))
        self.test_indices: list[int] = list(range(len(self.test)))
        self._sampler = _OrderSampler()
        self._loader = None
        self._loader_key: tuple | None = None
        self._test_loader = None
        self._test_batch: int | None = None

    @property
    def num_train(self) -> int:
        return len(self.train_indices)

    @property
    def num_test(self) -> int:
        return len(self.test_indices)

    def subset(self, train: int, test: int) -> StreamedImageFolder:
        gen = torch.Generator().manual_seed(SUBSET_SEED)
        if train and train < len(self.train):
            self.train_indices = torch.randperm(len(self.train), generator=gen)[:train].sort().values.tolist()
        if test and test < len(self.test):
            self.test_indices = torch.randperm(len(self.test), generator=gen)[:test].sort().values.tolist()
        return self

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.num_train // batch_size

    def _loader_kwargs(self) -> dict:
        return {"num_workers": self.workers, "persistent_workers": self.workers > 0,
                "pin_memory": self.device.type == "cuda"}

    def epoch_order(self, generator: torch.Generator) -> Tensor:
        """The epoch's order of positions 0..num_train-1, drawn from ``generator``."""
        return torch.randperm(self.num_train, generator=generator, device=generator.device).cpu()

    def train_epoch(self, batch_size: int, generator: torch.Generator, order: Tensor | None = None, start: int = 0,
                    rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Batches of one epoch from step ``start``; ``batch_size`` is global, rank ``rank`` of ``world_size`` gets
        its contiguous slice of every global batch (as ``ResidentData.train_epoch``)."""
        from torch.utils.data import DataLoader

        order = (self.epoch_order(generator) if order is None else order).cpu()
        per_rank = batch_size // world_size
        steps = self.steps_per_epoch(batch_size)
        positions = [p for step in range(start, steps)
                     for p in order[step * batch_size + rank * per_rank:step * batch_size + (rank + 1) * per_rank]
                     .tolist()]
        key = (generator, per_rank)  # held, so a later run's generator can never be mistaken for this one
        if self._loader is None or self._loader_key is None or self._loader_key[0] is not generator \
                or self._loader_key[1] != per_rank:
            self._loader = DataLoader(self.train, batch_size=per_rank, sampler=self._sampler, drop_last=True,
                                      **self._loader_kwargs())
            self._loader_key = key
        self._sampler.indices = [self.train_indices[p] for p in positions]
        for i, (x, y) in enumerate(self._loader):
            idx = torch.tensor(positions[i * per_rank:(i + 1) * per_rank])
            yield Batch(x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True),
                        idx.to(self.device))

    def test_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        from torch.utils.data import DataLoader, Subset

        if self._test_loader is None or self._test_batch != batch_size:
            self._test_loader = DataLoader(Subset(self.test, self.test_indices), batch_size=batch_size,
                                           **self._loader_kwargs())
            self._test_batch = batch_size
        for x, y in self._test_loader:
            yield x.to(self.device), y.to(self.device)


@DATASETS.register("imagefolder")
def load_imagenet(cfg: DatasetConfig, root: Path | None, download: bool) -> Callable[[torch.device], object]:
    """ImageNet in ImageFolder layout (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``), streamed."""
    base, split = _image_folder_root(cfg, root)
    return lambda device: StreamedImageFolder(cfg, base, device, split=split)


def open_dataset(cfg: DatasetConfig, recipe: RecipeConfig, device: torch.device,
                 data_dir: str | os.PathLike | None = None,
                 download: bool = False) -> ResidentData | StreamedImageFolder:
    """Load ``cfg`` with its layout's loader, move it to ``device`` and cut the recipe's fixed subsets."""
    loaded = DATASETS.get(cfg.layout)(cfg, data_root(data_dir), download)
    source = loaded(device) if callable(loaded) else ResidentData(cfg, *loaded, device=device)
    expected = (cfg.channels, cfg.image_size, cfg.image_size)
    if isinstance(source, ResidentData) and tuple(source.train_x.shape[1:]) != expected:
        raise DiscbenchError(f"{cfg.name}: images are {tuple(source.train_x.shape[1:])}, bench.toml says "
                             f"{expected}")
    check_labels(cfg, source)
    return source.subset(recipe.train_subset, recipe.test_subset)


def check_labels(cfg: DatasetConfig, source: ResidentData | StreamedImageFolder) -> None:
    """Every label is a class index below ``num_classes`` (checked once, when the dataset is opened)."""
    if isinstance(source, ResidentData):
        for split, y in (("training", source.train_y), ("test", source.test_y)):
            low, high = (int(y.min()), int(y.max())) if len(y) else (0, 0)
            if low < 0 or high >= cfg.num_classes:
                bad = low if low < 0 else high
                raise DiscbenchError(f"{cfg.name}: the {split} split has label {bad}, outside 0..{cfg.num_classes - 1}"
                                     f"; set dataset.num_classes to the number of classes ({high + 1} or more)")
    elif len(source.train.classes) > cfg.num_classes:
        raise DiscbenchError(f"{cfg.name}: {len(source.train.classes)} class folders in the training split but "
                             f"num_classes = {cfg.num_classes}; set dataset.num_classes accordingly")
