"""Teachers end to end: train-teacher into the store, offline students that name it, and every way a stored or
imported teacher can be wrong (tampered, truncated, another dataset, not a state dict, a pickle with code)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from discbench.errors import DiscbenchError
from discbench.records import SCHEMA_VERSION
from discbench.teachers import load_checkpoint
from tests.conftest import REPO, requires_fashion_mnist
from tests.test_cli import discbench, records

TINY_RECIPE = """
[recipes.tiny]
epochs = 1
batch_size = 32
lr = 0.05
momentum = 0.9
nesterov = false
weight_decay = 5e-4
milestones = []
gamma = 0.1
train_subset = 128
test_subset = 64
eval_every = 1
eval_batch_size = 64

[suites.offline-tiny]
protocol = "offline"
datasets = ["fashion-mnist"]
backbones = ["tinynet"]
partners = ["smallnet"]
seeds = 1
budget = "tiny"
rows = [{ loss = "none", label = "Baseline" }, { loss = "mi_x_si", label = "MI×SI" }]
"""


def one_error_line(err: str) -> bool:
    """The command's failure is one line, the last it printed (a run prints its configuration line first)."""
    lines = err.strip().splitlines()
    return lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A bench.toml with a tiny recipe and an offline suite, and an empty teacher store, both under tmp_path."""
    config = tmp_path / "bench.toml"
    config.write_text((REPO / "bench.toml").read_text() + TINY_RECIPE)
    monkeypatch.setenv("DISCBENCH_TEACHERS", str(tmp_path / "teachers"))
    return {"config": str(config), "store": tmp_path / "teachers", "runs": tmp_path / "runs"}


def offline_run(capsys, monkeypatch, env, loss="crd", *extra):
    return discbench(capsys, monkeypatch, "run", "--protocol", "offline", "--loss", loss, "--backbone",
                     "tinynet", "--teacher", "smallnet", "--budget", "tiny", "--seeds", "1", "--quiet",
                     "--config", env["config"], "--results-dir", str(env["runs"]), *extra)


def train_teacher(capsys, monkeypatch, env):
    status, _, err = discbench(capsys, monkeypatch, "train-teacher", "--backbone", "smallnet", "--budget", "tiny",
                               "--quiet", "--config", env["config"], "--results-dir", str(env["runs"]))
    assert status == 0, err
    (teacher_dir,) = [p for p in env["store"].iterdir() if not p.name.startswith(".")]
    return teacher_dir


@requires_fashion_mnist
@pytest.mark.slow
def test_train_teacher_then_offline_student(env, capsys, monkeypatch):
    status, _, err = offline_run(capsys, monkeypatch, env)
    assert status == 2 and not env["runs"].exists()
    assert ("no stored teacher 'smallnet' (seed 0, budget 'tiny') for fashion-mnist" in err
            and "train it with 'discbench train-teacher --backbone smallnet --dataset fashion-mnist --budget tiny "
                f"--seed 0 --config {env['config']}'" in err and one_error_line(err))

    teacher_dir = train_teacher(capsys, monkeypatch, env)
    manifest = json.loads((teacher_dir / "manifest.json").read_text())
    assert manifest["backbone"] == "smallnet" and manifest["dataset"] == "fashion-mnist" and manifest["seed"] == 0
    assert manifest["config"]["recipe"]["train_subset"] == 128 and manifest["source"] == "trained"
    assert teacher_dir.name == f"{manifest['config_hash']}-seed0"
    state = torch.load(teacher_dir / "weights.pt", weights_only=True)
    assert "head.2.weight" in state  # the backbone's own state dict
    status, out, _ = discbench(capsys, monkeypatch, "teacher", "list")
    assert status == 0 and manifest["teacher_id"] in out and manifest["sha256"][:16] in out

    status, _, err = offline_run(capsys, monkeypatch, env)
    assert status == 0, err
    (path,) = [p for p in records(env["runs"]) if "/offline/" in str(p)]
    rec = json.loads(path.read_text())
    assert rec["schema"] == SCHEMA_VERSION and rec["partner"] == "smallnet" and rec["baseline"] is False
    assert rec["teacher"]["teacher_id"] == manifest["teacher_id"] and rec["teacher"]["sha256"] == manifest["sha256"]
    assert rec["teacher"]["top1"] == manifest["top1"] and rec["teacher"]["store"] == str(env["store"])
    assert rec["config"]["teacher"]["teacher_id"] == manifest["teacher_id"]  # the teacher is part of the hash
    assert [c["network"] for c in rec["classifiers"]] == ["student"] and "student/exit4" in rec["final_top1"]
    # RepDistiller's CRD is -r 1 -a 0 -b 0.8: no KD term
    assert {"ce@student", "crd@student.4"} <= set(rec["final_train_terms"]) and "kd@student" not in rec[
        "final_train_terms"]

    status, out, _ = discbench(capsys, monkeypatch, "leaderboard", "--results-dir", str(env["runs"]), "--out",
                               str(env["runs"].parent / "LB.md"))
    assert status == 0 and f"smallnet ({manifest['top1']:.2f}) → tinynet" in out


@requires_fashion_mnist
@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "another dataset", "remove"])
def test_a_damaged_teacher_is_refused(env, capsys, monkeypatch, damage):
    teacher_dir = train_teacher(capsys, monkeypatch, env)
    weights, manifest_path = teacher_dir / "weights.pt", teacher_dir / "manifest.json"
    blob = bytearray(weights.read_bytes())
    if damage == "flip a byte":
        blob[len(blob) // 2] ^= 0xFF
        weights.write_bytes(bytes(blob))
    elif damage == "truncate":
        weights.write_bytes(bytes(blob[: len(blob) // 3]))
    elif damage == "another dataset":
        manifest = json.loads(manifest_path.read_text())
        manifest_path.write_text(json.dumps({**manifest, "dataset": "cifar10"}))
    else:
        weights.unlink()
    status, _, err = offline_run(capsys, monkeypatch, env)
    expected = {"flip a byte": "the file was changed or truncated", "truncate": "the file was changed or truncated",
                "another dataset": "was trained for dataset = 'cifar10', not 'fashion-mnist'",
                "remove": "weights.pt is missing"}[damage]
    assert status == 2 and expected in err and one_error_line(err)
    assert not (env["runs"] / "fashion-mnist" / "tiny" / "offline").exists()  # no record


@requires_fashion_mnist
@pytest.mark.slow
def test_offline_sweep_trains_its_missing_teacher(env, capsys, monkeypatch):
    status, out, err = discbench(capsys, monkeypatch, "sweep", "--suite", "offline-tiny", "--quiet", "--config",
                                 env["config"], "--results-dir", str(env["runs"]))
    assert status == 0, err
    assert "stored teacher smallnet" in err and "MI×SI" in out and "→ tinynet" in out
    assert len([p for p in env["store"].iterdir() if not p.name.startswith(".")]) == 1


class RunsCode:
    """A pickle payload that would create a file when unpickled by a full ``pickle.load``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_with_code_is_refused_and_never_executed(tmp_path, env, capsys, monkeypatch):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"model": RunsCode(marker)}, f, protocol=2)
    with pytest.raises(DiscbenchError, match="not a loadable state dict"):
        load_checkpoint(evil)
    status, _, err = discbench(capsys, monkeypatch, "teacher", "import", str(evil), "--backbone", "resnet20",
                               "--config", env["config"])
    assert status == 2 and "weights_only=True refused it" in err and one_error_line(err)
    assert not marker.exists() and not env["store"].exists()


def test_a_checkpoint_that_is_not_a_state_dict(tmp_path, env, capsys, monkeypatch):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    status, _, err = discbench(capsys, monkeypatch, "teacher", "import", str(path), "--backbone", "resnet20",
                               "--config", env["config"])
    assert status == 2 and "does not hold a state dict" in err and not env["store"].exists()


@pytest.mark.slow
def test_repdistiller_teacher_import_then_offline_on_cifar100(tmp_path, env, capsys, monkeypatch):
    """A RepDistiller-format checkpoint (keys and shapes of its resnet56, from tests/data/repdistiller_manifest.json)
    is imported, listed, verified and distilled from: MUSE Table 7(b)'s first column, a few steps on a tiny
    CIFAR-100-format dataset the test writes."""
    from tests.test_cifar_backbones import random_repdistiller_state
    from tests.test_data import write_cifar100

    checkpoint = tmp_path / "ckpt_epoch_240.pth"
    from discbench.registry import BACKBONES

    state = random_repdistiller_state("resnet56")  # RepDistiller's keys and shapes; values of a freshly built network:
    fresh = BACKBONES.get("resnet56")(in_channels=3, num_classes=100, image_size=32)
    for key, value in fresh.from_repdistiller(state).items():  # the mapping hands back RepDistiller's tensors
        value.copy_(fresh.state_dict()[key])
    torch.save({"model": state, "accuracy": torch.tensor(72.34), "epoch": 240}, checkpoint)
    status, out, err = discbench(capsys, monkeypatch, "teacher", "import", str(checkpoint), "--backbone", "resnet56",
                                 "--dataset", "cifar100", "--config", env["config"])
    assert status == 0, err
    (teacher_dir,) = [p for p in env["store"].iterdir() if not p.name.startswith(".")]
    manifest = json.loads((teacher_dir / "manifest.json").read_text())
    assert manifest["source"] == "repdistiller" and manifest["budget"] == "imported"
    assert manifest["top1"] == pytest.approx(72.34) and manifest["checkpoint"]["epoch"] == 240
    status, out, _ = discbench(capsys, monkeypatch, "teacher", "list")
    assert "resnet56" in out and "72.34" in out and "repdistiller" in out

    write_cifar100(tmp_path / "data", n_train=32, n_test=16)
    sets = ["recipe.epochs=1", "recipe.batch_size=16", "recipe.train_subset=0", "recipe.test_subset=0",
            "recipe.eval_batch_size=16", "recipe.milestones=[]", "protocol.teacher_budget=imported"]
    status, _, err = discbench(capsys, monkeypatch, "run", "--protocol", "offline", "--loss", "mi_x_si", "--backbone",
                               "resnet20", "--teacher", "resnet56", "--dataset", "cifar100", "--seeds", "1",
                               "--quiet", "--config", env["config"], "--data-dir", str(tmp_path / "data"),
                               "--results-dir", str(env["runs"]), *[a for s in sets for a in ("--set", s)])
    assert status == 0, err
    (path,) = records(env["runs"])
    rec = json.loads(path.read_text())
    assert rec["teacher"]["source"] == "repdistiller" and rec["teacher"]["top1"] == pytest.approx(72.34)
    assert rec["cost"]["teacher_params"] == 861_620 and rec["timing"]["steps"] == 2
    assert {"mi@student.1", "si@student.3", "kd@student"} <= set(rec["final_train_terms"])


# -- untrusted manifests and unusable stores (issue 21's second hostile pass) ----------------------------------------
GOOD_MANIFEST = {"teacher_id": "abc-seed0", "backbone": "smallnet", "dataset": "fashion-mnist", "num_classes": 10,
                 "in_channels": 1, "image_size": 28, "budget": "smoke", "seed": 0, "top1": 91.5, "source": "trained",
                 "sha256": "0" * 64}


@pytest.mark.parametrize("text,message", [
    ("not json {", "is not readable JSON"),
    ("[" * 100_000 + "]" * 100_000, "too deeply nested"),
    (json.dumps({**GOOD_MANIFEST, "top1": "91.5"}), "'top1' must be a top-1 in [0, 100] or null, got '91.5'"),
    (json.dumps({**GOOD_MANIFEST, "top1": float("nan")}), "'top1' must be a top-1 in [0, 100] or null, got nan"),
    (json.dumps({**GOOD_MANIFEST, "seed": "0"}), "'seed' must be an integer >= 0"),
    (json.dumps({k: v for k, v in GOOD_MANIFEST.items() if k != "sha256"}), "has no 'sha256'"),
    (json.dumps([1, 2]), "is not a teacher manifest"),
])
def test_a_manifest_that_lies_is_refused_in_one_line_and_listed_as_skipped(env, capsys, monkeypatch, text, message):
    from discbench.teachers import TeacherStore

    folder = env["store"] / "abc-seed0"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(text)
    with pytest.raises(DiscbenchError, match="store (it|the teacher) again") as info:
        TeacherStore(env["store"]).manifest("abc-seed0")
    assert message in str(info.value) and "\n" not in str(info.value)
    status, out, err = discbench(capsys, monkeypatch, "teacher", "list")
    assert status == 0 and "no valid teachers" in out and message in err and "Traceback" not in err


def test_a_teacher_store_that_is_a_file_is_one_line_before_anything_trains(env, tmp_path, capsys, monkeypatch):
    store = tmp_path / "store-file"
    store.write_text("")
    monkeypatch.setenv("DISCBENCH_TEACHERS", str(store))
    status, _, err = discbench(capsys, monkeypatch, "teacher", "list")
    assert status == 2 and "is a file, not a directory" in err and one_error_line(err)

    def never(*args, **kwargs):
        raise AssertionError("trained although the teacher could not be stored")

    monkeypatch.setattr("discbench.runner.train", never)
    status, _, err = discbench(capsys, monkeypatch, "train-teacher", "--backbone", "smallnet", "--budget", "tiny",
                               "--quiet", "--config", env["config"], "--results-dir", str(env["runs"]))
    assert status == 2 and "is a file, not a directory" in err and one_error_line(err)


@pytest.mark.parametrize("accuracy", [float("nan"), 1e9, -3.0])
def test_an_imported_accuracy_that_is_no_top1_is_refused_and_nothing_stored(tmp_path, env, capsys, monkeypatch,
                                                                           accuracy):
    from tests.test_cifar_backbones import random_repdistiller_state

    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model": random_repdistiller_state("resnet56"), "accuracy": accuracy}, checkpoint)
    status, _, err = discbench(capsys, monkeypatch, "teacher", "import", str(checkpoint), "--backbone", "resnet56",
                               "--dataset", "cifar100", "--config", env["config"])
    assert status == 2 and "'top1' must be a top-1 in [0, 100]" in err and one_error_line(err)
    assert not env["store"].exists() or not [p for p in env["store"].iterdir()]
