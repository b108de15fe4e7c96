"""``discbench dataset stats DIR``: the printed table's mean and std equal numpy's on the known pixels, the table parses
and resolves laid over the defaults, the loader reads the dataset into exactly that shape, and a malformed dataset is
one line with exit status 2. ``dataset --help`` imports no torch."""

from __future__ import annotations

import re
import shutil
import tomllib

import numpy as np
import pytest
import torch

from discbench.config import Bench, read_toml
from discbench.data import load_tinyimagenet, open_dataset
from tests.conftest import REPO
from tests.test_cli import discbench_in as discbench
from tests.test_cli_startup import run_cli

SIZE = 8


def save(path, pixels):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def image(seed, size=SIZE, channels=3):
    rng = np.random.default_rng(seed)
    shape = (size, size, channels) if channels > 1 else (size, size)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def build(root, train=3, evaluation=1, split="val", channels=3):
    """root/{train,split}/{cat,dog}/*.png (lossless: the decoded pixels are the saved ones); the training pixels."""
    pixels = []
    for k, cls in enumerate(("cat", "dog")):
        for i in range(train):
            pixels.append(image(10 * k + i, channels=channels))
            save(root / "train" / cls / f"{i}.png", pixels[-1])
        for i in range(evaluation):
            save(root / split / cls / f"{i}.png", image(100 + 10 * k + i, channels=channels))
    return np.stack(pixels)


def test_the_table_has_numpys_mean_and_std_and_resolves_over_the_defaults(tmp_path, capsys, monkeypatch):
    known = build(tmp_path / "leaves")  # (6, 8, 8, 3) uint8
    values = known.astype(np.float64) / 255
    status, out, err = discbench(capsys, monkeypatch, tmp_path, "dataset", "stats", "leaves")
    assert status == 0, err
    table = tomllib.loads(out)["datasets"]["leaves"]  # the name defaults to the directory's
    np.testing.assert_allclose(table["mean"], values.mean(axis=(0, 1, 2)), atol=5e-5, rtol=0)
    np.testing.assert_allclose(table["std"], values.std(axis=(0, 1, 2)), atol=5e-5, rtol=0)
    assert {k: table[k] for k in ("layout", "channels", "image_size", "num_classes")} == {
        "layout": "imagefolder-resident", "channels": 3, "image_size": SIZE, "num_classes": 2}
    defaults = read_toml(REPO / "bench.toml")["datasets"]["tinyimagenet"]
    assert set(table) == set(defaults)  # every key of the built-in ImageFolder dataset, no other
    comments = [line for line in out.splitlines() if line.startswith("#")]
    assert "2 classes, 6 train / 2 val images, 8x8 RGB" in comments[0] and "/ 255" in comments[1]

    project = tmp_path / "project.toml"
    project.write_text(out)
    cfg = Bench.load(project).resolve("none", "tinynet", "leaves", "zoo")
    assert cfg.dataset.mean == tuple(table["mean"]) and cfg.dataset.std == tuple(table["std"])
    data = open_dataset(cfg.dataset, cfg.recipe, torch.device("cpu"), data_dir=tmp_path)  # checks (C, H, W), labels
    assert data.num_train == 6 and data.num_test == 2
    assert torch.equal(data.train_x, torch.from_numpy(known).permute(0, 3, 1, 2))  # the pixels that were measured


def test_name_option_test_split_and_a_name_that_needs_quotes(tmp_path, capsys, monkeypatch):
    build(tmp_path / "photos", split="test", evaluation=2)
    status, out, err = discbench(capsys, monkeypatch, tmp_path, "dataset", "stats", str(tmp_path / "photos"),
                                 "--name", "my photos")
    assert status == 0, err
    assert '[datasets."my photos"]' in out and "6 train / 4 test images" in out
    project = tmp_path / "bench.toml"
    project.write_text(out)
    assert Bench.load(project).resolve("none", "tinynet", "my photos", "zoo").dataset.num_classes == 2


def test_grey_images_are_measured_as_the_loader_decodes_them(tmp_path, capsys, monkeypatch):
    known = build(tmp_path / "grey", channels=1)  # (6, 8, 8): mode L, decoded to three equal channels
    status, out, err = discbench(capsys, monkeypatch, tmp_path, "dataset", "stats", "grey")
    assert status == 0, err
    table = tomllib.loads(out)["datasets"]["grey"]
    assert table["channels"] == 3 and "grey (decoded to RGB" in out
    values = known.astype(np.float64) / 255
    np.testing.assert_allclose(table["mean"], [values.mean()] * 3, atol=5e-5, rtol=0)
    np.testing.assert_allclose(table["std"], [values.std()] * 3, atol=5e-5, rtol=0)


def test_grey_among_colour_images_is_measured_as_decoded_to_rgb(tmp_path, capsys, monkeypatch):
    """Tiny-ImageNet holds some grey JPEGs among colour ones; the loader decodes each to RGB, and so does the count."""
    _mixed_channels(tmp_path / "mixed")
    status, out, err = discbench(capsys, monkeypatch, tmp_path, "dataset", "stats", "mixed")
    assert status == 0, err
    table = tomllib.loads(out)["datasets"]["mixed"]
    cfg = Bench.load(_written(tmp_path, out)).resolve("none", "tinynet", "mixed", "zoo")
    data = open_dataset(cfg.dataset, cfg.recipe, torch.device("cpu"), data_dir=tmp_path)
    values = data.train_x.double() / 255  # the pixels training sees: (6, 3, 8, 8)
    np.testing.assert_allclose(table["mean"], values.mean(dim=(0, 2, 3)).numpy(), atol=5e-5, rtol=0)
    np.testing.assert_allclose(table["std"], values.std(dim=(0, 2, 3), unbiased=False).numpy(), atol=5e-5, rtol=0)


def _written(tmp_path, text):
    path = tmp_path / "project.toml"
    path.write_text(text)
    return path


def test_tinyimagenets_raw_layout_measures_the_loaders_pixels(bench, tmp_path, capsys, monkeypatch):
    """JPEGs under train/<wnid>/images/ and the raw val/images + val_annotations.txt, as the loader reads them: the
    statistics are those of the tensors the loader returns."""
    base = tmp_path / "tiny-imagenet-200"
    for k, wnid in enumerate(("n01", "n02")):
        for i in range(3):
            save(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", image(k * 10 + i, size=16))
    for i in range(3):
        save(base / "val" / "images" / f"val_{i}.JPEG", image(50 + i, size=16))
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t1\t1\nval_1.JPEG\tn01\t0\t0\t1\t1\n"
                                                      "val_2.JPEG\tn01\t0\t0\t1\t1\n")
    status, out, err = discbench(capsys, monkeypatch, tmp_path, "dataset", "stats", str(base), "--name", "tiny")
    assert status == 0, err
    table = tomllib.loads(out)["datasets"]["tiny"]
    assert table["image_size"] == 16 and table["num_classes"] == 2 and "6 train / 3 val images" in out
    cfg = bench.resolve("none", "resnet18", "tinyimagenet", "paper", overrides=["dataset.image_size=16"]).dataset
    (x, _), _ = load_tinyimagenet(cfg, tmp_path, False)
    values = x.double() / 255
    np.testing.assert_allclose(table["mean"], values.mean(dim=(0, 2, 3)).numpy(), atol=5e-5, rtol=0)
    np.testing.assert_allclose(table["std"], values.std(dim=(0, 2, 3), correction=0).numpy(), atol=5e-5, rtol=0)


def _no_val(root):
    build(root)
    shutil.rmtree(root / "val")


def _empty_class(root):
    build(root)
    (root / "train" / "eel").mkdir()


def _one_class(root):
    save(root / "train" / "cat" / "0.png", image(0))
    save(root / "val" / "cat" / "0.png", image(1))


def _mixed_sizes(root):
    build(root)
    save(root / "train" / "dog" / "1.png", image(7, size=SIZE * 2))


def _mixed_channels(root):
    build(root)
    save(root / "train" / "dog" / "2.png", image(7, channels=1))


def _mixed_in_val(root):
    build(root)
    save(root / "val" / "dog" / "0.png", image(7, size=SIZE + 1))


def _not_square(root):
    build(root)
    for path in (root / "train").rglob("*.png"):
        save(path, np.zeros((SIZE, SIZE + 2, 3), dtype=np.uint8))


def _val_classes_differ(root):
    build(root)
    (root / "val" / "dog").rename(root / "val" / "dogs")


def _unreadable(root):
    build(root)
    (root / "train" / "cat" / "1.png").write_bytes(b"not a png")


@pytest.mark.parametrize(("make", "message"), [
    (None, r"missing not found: give the dataset's directory"),
    (lambda root: root.mkdir(), r"has no train/ folder: expected .*/train/<class>/\*\.png\|jpg"),
    (_no_val, r"has no val/ or test/ folder next to train/"),
    (_empty_class, r"class folder .*/train/eel holds no images \(\.jpg, \.jpeg, \.png"),
    (_one_class, r"has one class folder \('cat'\); a classification dataset needs two or more"),
    (_mixed_sizes, r"train/dog/1\.png is 16x16; expected 8x8, as the first training image .*train/cat/0\.png"),
    (_mixed_in_val, r"val/dog/0\.png is 9x9; expected 8x8"),
    (_not_square, r"train/cat/0\.png is 10x8: the resident loader takes square images"),
    (_val_classes_differ, r"/val lacks the class folder 'dog': the evaluation split needs the same class folders"),
    (_unreadable, r"train/cat/1\.png is not a readable image"),
], ids=["missing", "no-train", "no-val", "empty-class", "one-class", "mixed-sizes", "mixed-in-val",
        "not-square", "val-classes", "unreadable"])
def test_a_malformed_dataset_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, make, message):
    root = tmp_path / ("missing" if make is None else "data")
    if make is not None:
        make(root)
    status, out, err = discbench(capsys, monkeypatch, tmp_path, "dataset", "stats", str(root))
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert re.search(message, err), err


def test_an_empty_name_is_refused(tmp_path, capsys, monkeypatch):
    build(tmp_path / "d")
    status, _, err = discbench(capsys, monkeypatch, tmp_path, "dataset", "stats", "d", "--name", "")
    assert status == 2 and "--name must not be empty" in err


@pytest.mark.parametrize("args", [["dataset", "--help"], ["dataset", "stats", "--help"]])
def test_dataset_help_imports_no_torch(args):
    proc, heavy = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert heavy == "[]"
    assert "stats" in proc.stdout
