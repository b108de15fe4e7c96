"""The real CIFAR-100 loader and the resnet18 backbone, end to end for a few steps on a tiny CIFAR-format
dataset written by the test itself (python-pickle layout, as torchvision reads it)."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import discbench, records
from tests.test_data import write_cifar100


@pytest.mark.slow
def test_cifar100_resnet18_mi_x_si(tmp_path, capsys, monkeypatch):
    write_cifar100(tmp_path / "data", n_train=24, n_test=20)  # 3 steps at batch 8: the cheapest run of 3 steps
    res = tmp_path / "runs"
    sets = ["recipe.epochs=1", "recipe.batch_size=8", "recipe.train_subset=0", "recipe.test_subset=0",
            "recipe.eval_batch_size=20", "recipe.milestones=[]"]
    status, _, err = discbench(capsys, monkeypatch, "run", "--loss", "mi_x_si", "--backbone", "resnet18",
                               "--dataset", "cifar100", "--budget", "smoke", "--seeds", "1", "--quiet",
                               "--data-dir", str(tmp_path / "data"), "--results-dir", str(res),
                               *[a for s in sets for a in ("--set", s)])
    assert status == 0, err
    (path,) = records(res)
    rec = json.loads(path.read_text())
    assert rec["dataset"] == "cifar100" and rec["backbone"] == "resnet18"
    assert rec["timing"]["steps"] == 3  # 24 images at batch 8
    assert set(rec["final_top1"]) == {"net/exit1", "net/exit2", "net/exit3", "net/exit4"}
    # 20 test images: every accuracy is a multiple of 5 %
    assert all(round(v / 5, 6).is_integer() for v in rec["final_top1"].values())
    assert rec["cost"]["per_exit"]["net/exit4"]["params"] == rec["cost"]["backbone_params"]
    assert round(rec["cost"]["backbone_params"] / 1e6, 1) == 11.2
    assert all(v == v for v in rec["final_train_terms"].values())  # finite means, no NaN
