"""Data: the IDX and CIFAR loaders, device augmentation against a naive per-sample version, clear errors."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from discbench.data import ResidentData, load_cifar, load_idx, open_dataset, random_crop_flip
from discbench.errors import DiscbenchError
from tests.conftest import requires_fashion_mnist


@requires_fashion_mnist
def test_fashion_mnist_from_the_debian_package(bench):
    cfg = bench.resolve("none", "smallnet", "fashion-mnist", "smoke").dataset
    (xtr, ytr), (xte, yte) = load_idx(cfg, None, False)
    assert xtr.shape == (60000, 1, 28, 28) and xtr.dtype == torch.uint8
    assert xte.shape == (10000, 1, 28, 28)
    assert torch.bincount(ytr).tolist() == [6000] * 10 and torch.bincount(yte).tolist() == [1000] * 10
    # normalisation constants of bench.toml are the training split's mean and std
    x = xtr.float() / 255
    assert abs(x.mean().item() - cfg.mean[0]) < 1e-3 and abs(x.std().item() - cfg.std[0]) < 1e-3


def write_idx(folder, stem, array, magic):
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    with gzip.open(folder / f"{stem}.gz", "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_mnist(folder, n=40):
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("t10k", n // 2)):
        write_idx(folder, f"{split}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)), 2051)
        write_idx(folder, f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (count,)), 2049)


def test_idx_from_data_dir_and_errors(bench, tmp_path):
    cfg = bench.resolve("none", "smallnet", "fashion-mnist", "smoke").dataset
    fake_mnist(tmp_path)
    (xtr, _), (xte, _) = load_idx(cfg, tmp_path, False)
    assert xtr.shape == (40, 1, 28, 28) and xte.shape == (20, 1, 28, 28)
    with pytest.raises(DiscbenchError, match=r"not found: expected train-images-idx3-ubyte.gz.*apt-get install "
                                             r"dataset-fashion-mnist"):
        load_idx(cfg, tmp_path / "nowhere", False)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(DiscbenchError, match=r"t10k-labels-idx1-ubyte.gz is corrupt"):
        load_idx(cfg, tmp_path, False)
    write_idx(tmp_path, "t10k-labels-idx1-ubyte", np.zeros(5), 2049)  # 5 labels for 20 images
    with pytest.raises(DiscbenchError, match=r"image and label counts differ"):
        load_idx(cfg, tmp_path, False)


def write_cifar100(root, n_train=64, n_test=32):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        entry = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": rng.integers(0, 100, n).tolist(), b"coarse_labels": [0] * n}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    return folder


def test_cifar_loader_and_errors(bench, tmp_path):
    cfg = bench.resolve("none", "resnet18", "cifar100", "paper").dataset
    with pytest.raises(DiscbenchError, match=r"cifar100 needs a data directory: pass --data-dir"):
        load_cifar(cfg, None, False)
    with pytest.raises(DiscbenchError, match=r"cifar-100-python/train"):
        load_cifar(cfg, tmp_path, False)
    folder = write_cifar100(tmp_path)
    (xtr, ytr), (xte, yte) = load_cifar(cfg, tmp_path, False)
    assert xtr.shape == (64, 3, 32, 32) and xte.shape == (32, 3, 32, 32) and ytr.max() < 100
    raw = pickle.loads((folder / "train").read_bytes())
    assert torch.equal(xtr[5], torch.from_numpy(raw[b"data"][5].reshape(3, 32, 32)))  # channel-major rows
    (folder / "test").write_bytes(b"not a pickle")
    with pytest.raises(DiscbenchError, match=r"test is corrupt or not a CIFAR pickle"):
        load_cifar(cfg, tmp_path, False)


def naive_crop_flip(images, dy, dx, flips, padding):
    out = []
    for img, y, x, f in zip(images, dy, dx, flips, strict=True):
        padded = torch.nn.functional.pad(img, (padding,) * 4)
        crop = padded[:, y:y + img.shape[1], x:x + img.shape[2]]
        out.append(crop.flip(2) if f else crop)
    return torch.stack(out)


def test_device_augmentation_matches_a_per_sample_reference():
    images = torch.randint(0, 256, (16, 3, 9, 7), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(3)
    out = random_crop_flip(images, 2, True, gen)
    replay = torch.Generator().manual_seed(3)  # the same draws, in the same order
    dy = torch.randint(0, 5, (16,), generator=replay)
    dx = torch.randint(0, 5, (16,), generator=replay)
    flips = torch.rand(16, generator=replay) < 0.5
    assert torch.equal(out, naive_crop_flip(images, dy, dx, flips, 2))
    assert 0 < flips.sum() < 16 and (dy != 2).any()
    assert torch.equal(random_crop_flip(images, 0, False, gen), images)


def test_batches_are_reproducible_and_subsets_fixed(bench, tmp_path):
    cfg = bench.resolve("none", "smallnet", "fashion-mnist", "smoke").dataset
    fake_mnist(tmp_path, n=100)
    data = ResidentData(cfg, *load_idx(cfg, tmp_path, False), device=torch.device("cpu"))
    sub = data.subset(60, 10)
    assert (sub.num_train, sub.num_test) == (60, 10)
    assert torch.equal(sub.train_x, data.subset(60, 10).train_x)  # the same subset for every seed
    first = [b.idx for b in sub.train_epoch(16, torch.Generator().manual_seed(1))]
    again = [b.idx for b in sub.train_epoch(16, torch.Generator().manual_seed(1))]
    other = [b.idx for b in sub.train_epoch(16, torch.Generator().manual_seed(2))]
    assert len(first) == 3 and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    batch = next(sub.train_epoch(16, torch.Generator().manual_seed(1)))
    assert batch.x.dtype == torch.float32 and batch.x.shape == (16, 1, 28, 28)
    assert torch.equal(batch.y, sub.train_y[batch.idx])


def test_open_dataset_checks_shapes(bench, tmp_path):
    cfg = bench.resolve("none", "smallnet", "fashion-mnist", "smoke",
                        overrides=["dataset.image_size=32"])
    fake_mnist(tmp_path)
    with pytest.raises(DiscbenchError, match=r"images are \(1, 28, 28\), bench.toml says \(1, 32, 32\)"):
        open_dataset(cfg.dataset, cfg.recipe, torch.device("cpu"), tmp_path)


def write_images(folder, count, size, seed):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i}.JPEG")


def test_tinyimagenet_raw_layout(bench, tmp_path):
    """train/<wnid>/images/*.JPEG and the raw val/images + val_annotations.txt, decoded into uint8 tensors."""
    from discbench.data import load_tinyimagenet

    cfg = bench.resolve("none", "resnet18", "tinyimagenet", "paper", overrides=["dataset.image_size=16"]).dataset
    base = tmp_path / "tiny-imagenet-200"
    for wnid, seed in (("n01", 0), ("n02", 1)):
        write_images(base / "train" / wnid / "images", 3, 20, seed)
    write_images(base / "val" / "images", 2, 20, 2)
    (base / "val" / "val_annotations.txt").write_text("img0.JPEG\tn02\t0\t0\t1\t1\nimg1.JPEG\tn01\t0\t0\t1\t1\n")
    (xtr, ytr), (xte, yte) = load_tinyimagenet(cfg, tmp_path, False)
    assert xtr.shape == (6, 3, 16, 16) and xtr.dtype == torch.uint8 and ytr.tolist() == [0, 0, 0, 1, 1, 1]
    assert xte.shape == (2, 3, 16, 16) and yte.tolist() == [1, 0]
    with pytest.raises(DiscbenchError,
                       match=r"expected .*/train and .*/val or .*/test \(ImageFolder layout.*tiny-imagenet-200.zip"):
        load_tinyimagenet(cfg, tmp_path / "missing", False)


def test_imagenet_streams_through_image_folder(bench, tmp_path):
    cfg = bench.resolve("none", "resnet18", "imagenet", "paper",
                        overrides=["dataset.image_size=16", "recipe.train_subset=4"])
    for split, n in (("train", 3), ("val", 2)):
        for wnid, seed in (("n01", 0), ("n02", 1)):
            write_images(tmp_path / "imagenet" / split / wnid, n, 24, seed)
    data = open_dataset(cfg.dataset, cfg.recipe, torch.device("cpu"), tmp_path)
    data.workers = 0  # no worker processes in tests
    assert (data.num_train, data.num_test) == (4, 4)
    batches = list(data.train_epoch(2, torch.Generator().manual_seed(0)))
    assert len(batches) == 2 and batches[0].x.shape == (2, 3, 16, 16)
    idx = torch.cat([b.idx for b in batches]).tolist()
    assert sorted(idx) == [0, 1, 2, 3]  # positions in the fixed subset (what memory banks index), shuffled
    assert torch.cat([b.y for b in batches]).tolist() == [data.train.targets[data.train_indices[i]] for i in idx]
    x, y = next(data.test_batches(4))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1]


class _WritesAMarker:
    """A pickle payload that, if loaded with ``pickle.load``, creates a file (what an attacker's file would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickles_of_every_protocol_load(bench, tmp_path, protocol):
    cfg = bench.resolve("none", "resnet18", "cifar100", "paper").dataset
    folder = write_cifar100(tmp_path)
    for name in ("train", "test"):
        entry = pickle.loads((folder / name).read_bytes())
        (folder / name).write_bytes(pickle.dumps(entry, protocol=protocol))
    (xtr, ytr), _ = load_cifar(cfg, tmp_path, False)
    assert xtr.shape == (64, 3, 32, 32) and ytr.dtype == torch.int64


def test_a_cifar_pickle_that_carries_code_is_refused_without_running_it(bench, tmp_path):
    cfg = bench.resolve("none", "resnet18", "cifar100", "paper").dataset
    folder = write_cifar100(tmp_path)
    marker = tmp_path / "pwned"
    entry = pickle.loads((folder / "train").read_bytes())
    entry[b"batch_label"] = _WritesAMarker(marker)
    (folder / "train").write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(DiscbenchError, match=r"train is corrupt or not a CIFAR pickle \(it names io.open"):
        load_cifar(cfg, tmp_path, False)
    assert not marker.exists()
    pickle.loads((folder / "train").read_bytes())  # the same file, through pickle.load: the payload runs
    assert marker.exists()


def test_a_dataset_of_your_own_with_a_test_split(bench, tmp_path):
    """A `[datasets.NAME]` table with the resident ImageFolder layout: DIR/NAME/{train,test}/<class>/ is found (the
    usual split names are accepted), and a missing one says what to put where, not where Tiny-ImageNet is."""
    import dataclasses

    from discbench.data import load_tinyimagenet

    base = bench.resolve("none", "resnet18", "tinyimagenet", "paper", overrides=["dataset.image_size=16"]).dataset
    cfg = dataclasses.replace(base, name="leaves", num_classes=2)
    for split, count in (("train", 3), ("test", 2)):
        for k, cls in enumerate(("healthy", "rust")):
            write_images(tmp_path / "leaves" / split / cls, count, 20, k)
    (xtr, ytr), (xte, yte) = load_tinyimagenet(cfg, tmp_path, False)
    assert xtr.shape == (6, 3, 16, 16) and ytr.tolist() == [0, 0, 0, 1, 1, 1] and yte.tolist() == [0, 0, 1, 1]
    with pytest.raises(DiscbenchError, match=r"leaves not found: .*or .*/test .*put your images there") as info:
        load_tinyimagenet(cfg, tmp_path / "missing", False)
    assert "tiny-imagenet" not in str(info.value)


def _labelled(labels: list[int], bench) -> ResidentData:
    cfg = bench.resolve("none", "tinynet", "fashion-mnist", "zoo").dataset
    n = len(labels)
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 28, 28).contiguous()
    y = torch.tensor(labels)
    return ResidentData(cfg, (x, y), (x[:2], y[:2]), torch.device("cpu"))


def test_same_class_partners_are_another_sample_of_the_class_drawn_uniformly(bench):
    labels = [0, 1, 2, 0, 1, 0, 2, 0]  # class 0 at 0, 3, 5, 7; class 1 at 1, 4; class 2 at 2, 6
    data = _labelled(labels, bench)
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor([0] * 3000 + [1, 4, 2, 6] * 10)
    partners = data.same_class_partners(idx, g)
    y = torch.tensor(labels)
    assert torch.equal(y[partners], y[idx]) and not bool((partners == idx).any())
    # a two-sample class always pairs with the other sample; class 0's three others each ~1/3 of the time
    assert partners[3000:].tolist() == [4, 1, 6, 2] * 10
    counts = torch.bincount(partners[:3000], minlength=8)[[3, 5, 7]].float() / 3000
    assert bool(((counts - 1 / 3).abs() < 0.04).all()), counts
    assert torch.equal(partners, data.same_class_partners(idx, torch.Generator().manual_seed(0)))
    assert data.class_counts().tolist() == [4, 2, 2] + [0] * 7


def test_a_sample_view_is_the_training_augmentation_of_those_samples(bench):
    data = _labelled([0, 1, 2, 3], bench)
    idx = torch.tensor([3, 1])
    view = data.sample(idx, torch.Generator().manual_seed(5))
    expected = data.normalize(random_crop_flip(data.train_x[idx], data.cfg.crop_padding, data.cfg.flip,
                                               torch.Generator().manual_seed(5)))
    assert torch.equal(view, expected) and view.dtype == torch.float32
