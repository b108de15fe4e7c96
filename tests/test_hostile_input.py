"""Bad configuration values and faults before, during and after training (issue 13's findings).

Each case goes through the console entry point and must end in one line, exit status 2, no record and nothing left
in the results directory. Cases that used to fail only after training are run with the training loop
(``discbench.train.train``, as ``discbench.runner`` calls it) replaced by a sentinel: they must fail before the first
step, so the sentinel is never called.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

import discbench.runner as runner_module
from discbench.records import LABEL_CHARS, check_writable, record_path
from tests.conftest import TINY, requires_fashion_mnist
from tests.test_cli import discbench, tiny


class TrainingStarted(AssertionError):
    pass


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if training starts: every case below must be caught before it."""

    def sentinel(*args, **kwargs):
        raise TrainingStarted("training started although the input is invalid")

    monkeypatch.setattr(runner_module, "train", sentinel)  # the name run_seeds and train_teachers call


def run_smallnet(capsys, monkeypatch, res, *args, sets=()):
    """``discbench run --backbone smallnet --seeds 1`` with the tiny recipe (plus ``sets``) into ``res``."""
    return discbench(capsys, monkeypatch, "run", "--backbone", "smallnet", "--seeds", "1", "--results-dir", str(res),
                     "--quiet", *args, *tiny(*sets))


def files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


def assert_one_line_exit_2(status, err, message, res, failed_seed=False):
    """Exit 2; the error is the last line and one line (a run may print its header line before); no traceback;
    nothing in ``res``, except (``failed_seed``: the seed trained, then failed) its failure record and the claims
    lock, which ``discbench status`` reads (``discbench.claims``)."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert status == 2, err
    assert lines[-1].startswith("error: ") and message in lines[-1], err
    assert sum(line.startswith("error") for line in lines) == 1 and "Traceback" not in err, err
    left = [f for f in files_under(res) if not (failed_seed and f.endswith((".failed", "/.claims.lock")))]
    assert left == []


# (override, what the one line must say): ranges of recipe, dataset, protocol and loss values, checked at resolve
RANGE_CASES = [
    ("recipe.epochs=0", "recipe 'smoke': epochs = 0 must be >= 1; fix it in the configuration file or with --set "
                        "recipe.epochs=..."),
    ("recipe.batch_size=0", "batch_size = 0 must be >= 1"),
    ("recipe.batch_size=-4", "batch_size = -4 must be >= 1"),
    ("recipe.lr=-1", "lr = -1.0 must be > 0"),
    ("recipe.lr=nan", "lr = nan must be > 0"),
    ("recipe.lr=inf", "lr = inf must be > 0"),
    ("recipe.momentum=-0.5", "momentum = -0.5 must be in [0, 1)"),
    ("recipe.momentum=1", "momentum = 1.0 must be in [0, 1)"),
    ("recipe.gamma=-1", "gamma = -1.0 must be in (0, 1]"),
    ("recipe.weight_decay=-1e-4", "weight_decay = -0.0001 must be >= 0"),
    ("recipe.eval_every=0", "eval_every = 0 must be >= 1"),
    ("recipe.eval_batch_size=0", "eval_batch_size = 0 must be >= 1"),
    ("recipe.train_subset=-1", "train_subset = -1 must be >= 0"),
    ("recipe.test_subset=-1", "test_subset = -1 must be >= 0"),
    ("recipe.milestones=[1, 1]", "milestones = [1, 1] must be strictly increasing"),
    ("recipe.milestones=[0]", "milestones = [0] every element must be >= 1"),
    ("dataset.crop_padding=-2", "crop_padding = -2 must be >= 0"),
    ("dataset.mean=[]", "mean = [] must have at least 1 element"),
    ("dataset.mean=[0.1, 0.2]", "mean = [0.1, 0.2] must have one value per channel (1)"),
    ("dataset.std=[0.0]", "std = [0.0] every element must be > 0"),
    ("dataset.num_classes=0", "num_classes = 0 must be >= 2"),
    ("dataset.num_classes=1", "num_classes = 1 must be >= 2"),
    ("protocol.kd_temperature=0", "protocol 'self': kd_temperature = 0.0 must be > 0"),
    ("protocol.kd_weight=-1", "kd_weight = -1.0 must be in [0, 1)"),  # BYOT's alpha: CE terms weigh 1 - alpha
    ("loss.beta=-1", "loss 'mi': beta = -1.0 must be >= 0; fix it in the configuration file or with --set loss.beta"),
    ("loss.beta=nan", "loss 'mi': beta = nan must be >= 0"),
    ("loss.dim=0", "loss 'mi': dim = 0 must be >= 1"),
]
RANGE_CASES_OTHER_LOSSES = [
    ("vid", "loss.init_variance=1e-6", "loss 'vid': init_variance = 1e-06 must exceed eps (1e-05)"),
    ("crd", "loss.temperature=0", "loss 'crd': temperature = 0.0 must be > 0"),
    ("crd", "loss.momentum=1.5", "loss 'crd': momentum = 1.5 must be in [0, 1]"),
]


@pytest.mark.parametrize("override,message", RANGE_CASES, ids=[c[0] for c in RANGE_CASES])
def test_out_of_range_values_are_one_line_before_any_data_loads(tmp_path, capsys, monkeypatch, no_training,
                                                                  override, message):
    import discbench.data as data_module

    monkeypatch.setattr(data_module, "open_dataset", lambda *a, **k: pytest.fail("data loaded"))
    res = tmp_path / "runs"
    status, _, err = discbench(capsys, monkeypatch, "run", "--loss", "mi", "--backbone", "smallnet", "--seeds", "1",
                               "--results-dir", str(res), "--quiet", "--set", override)
    assert_one_line_exit_2(status, err, message, res)


@pytest.mark.parametrize("loss,override,message", RANGE_CASES_OTHER_LOSSES,
                         ids=[c[1] for c in RANGE_CASES_OTHER_LOSSES])
def test_plugin_ranges_and_constraints_are_one_line(tmp_path, capsys, monkeypatch, no_training, loss, override,
                                                    message):
    res = tmp_path / "runs"
    status, _, err = run_smallnet(capsys, monkeypatch, res, "--loss", loss, sets=[override])
    assert_one_line_exit_2(status, err, message, res)


def test_plugin_hyper_parameters_declare_their_ranges(bench):
    """Every numeric hyper-parameter of a built-in loss has a declared range (floats are at least finite)."""
    from discbench.registry import LOSSES

    undeclared = [f"{name}.{key}" for name in LOSSES.names() for key, default in LOSSES.get(name).hparams().items()
                  if isinstance(default, int | float) and not isinstance(default, bool)
                  and key not in LOSSES.get(name).ranges]
    assert undeclared == []


def test_same_schedule_is_never_two_hashes(bench):
    """[5, 1] used to be accepted under another hash than [1, 5]; now only the increasing form resolves."""
    cfg = bench.resolve("l2", "smallnet", "fashion-mnist", "smoke", overrides=["recipe.epochs=6",
                                                                              "recipe.milestones=[1, 5]"])
    assert cfg.recipe.milestones == (1, 5)
    with pytest.raises(Exception, match="strictly increasing"):
        bench.resolve("l2", "smallnet", "fashion-mnist", "smoke", overrides=["recipe.epochs=6",
                                                                            "recipe.milestones=[5, 1]"])


def test_milestones_past_the_last_epoch_are_dropped_and_noted(bench):
    """A step schedule never fires at or past its last epoch: shortening a run needs no second edit, the hash is that
    of the schedule that runs, and the configuration says what was dropped."""
    short = bench.resolve("l2", "smallnet", "fashion-mnist", "smoke", overrides=["recipe.epochs=1"])
    same = bench.resolve("l2", "smallnet", "fashion-mnist", "smoke", overrides=["recipe.epochs=1",
                                                                               "recipe.milestones=[]"])
    assert short.recipe.milestones == () and short.hash == same.hash
    assert short.notes == ("recipe.milestones [1] -> []: a milestone at or past the last epoch (1) never fires",)
    assert same.notes == () and bench.resolve("l2", "smallnet", "fashion-mnist", "smoke").notes == ()


@pytest.mark.parametrize("device,message", [
    ("banana", "--device banana: not a device; use cpu, cuda or cuda:N"),
    ("meta", "--device meta: discbench trains on cpu or cuda"),
    ("cuda:7", "--device cuda:7: "),
])
def test_bad_device_is_one_line(tmp_path, capsys, monkeypatch, no_training, device, message):
    res = tmp_path / "runs"
    status, _, err = run_smallnet(capsys, monkeypatch, res, "--loss", "l2", "--device", device)
    assert_one_line_exit_2(status, err, message, res)


@requires_fashion_mnist
def test_labels_beyond_the_class_count_fail_when_the_data_opens(tmp_path, capsys, monkeypatch, no_training):
    res = tmp_path / "runs"
    status, _, err = run_smallnet(capsys, monkeypatch, res, "--loss", "l2", sets=["dataset.num_classes=5"])
    assert_one_line_exit_2(status, err, "fashion-mnist: the training split has label 9, outside 0..4; set "
                                        "dataset.num_classes", res)


def test_unwritable_results_directory_fails_before_training(tmp_path, capsys, monkeypatch, no_training):
    """A read-only directory (root may write anywhere: it gets /proc, where nobody can create files)."""
    res = tmp_path / "runs" if os.geteuid() != 0 else Path("/proc/discbench-runs")
    if os.geteuid() != 0:
        res.mkdir()
        res.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        status, _, err = run_smallnet(capsys, monkeypatch, res, "--loss", "l2")
    finally:
        if os.geteuid() != 0:
            res.chmod(stat.S_IRWXU)
    assert_one_line_exit_2(status, err, f"cannot write records to {res}/fashion-mnist", res)


def test_results_path_under_a_file_fails_before_training(tmp_path, capsys, monkeypatch, no_training):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n")
    res = blocker / "runs"
    status, _, err = run_smallnet(capsys, monkeypatch, res, "--loss", "l2")
    assert status == 2 and "error: " in err, err
    assert blocker.read_text() == "not a directory\n"


def test_long_labels_make_file_names_that_fit(bench, tmp_path):
    """The label in a record's file name is cut (the record keeps the whole label), so names stay < 255 bytes."""
    overrides = [f"loss.dim={d}" for d in (8,)] + [f"recipe.lr=0.0{i}" for i in range(1, 2)]
    cfg = bench.resolve("mi", "smallnet", "fashion-mnist", "smoke", overrides=overrides, label="x" * 400)
    path = record_path(tmp_path, cfg, 0)
    assert len(path.name.encode()) < 255 and path.name.startswith("x" * LABEL_CHARS + "__smallnet__")
    check_writable(path)  # the directory is created, probed and removed again: nothing is left behind
    assert list(tmp_path.iterdir()) == []


def test_check_writable_rejects_names_over_the_limit(tmp_path):
    with pytest.raises(Exception, match="longer than 255 bytes; shorten --label"):
        check_writable(tmp_path / ("y" * 300 + ".json"))


@requires_fashion_mnist
def test_non_finite_weights_after_the_last_step_are_never_a_record(tmp_path, capsys, monkeypatch):
    """The loss before each update is finite; the update of the last step makes a weight NaN. The epoch-end check
    catches it before evaluation (the network would otherwise be evaluated and published)."""
    real_step = torch.optim.SGD.step

    def poisoning_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", poisoning_step)
    res = tmp_path / "runs"
    status, _, err = run_smallnet(capsys, monkeypatch, res, "--loss", "l2", sets=["recipe.train_subset=32"])  # 1 step
    assert_one_line_exit_2(status, err, "non-finite weights: 'net.", res, failed_seed=True)
    assert "is not finite after epoch 1; no record is written" in err


def test_records_are_strict_json(tmp_path):
    """A record holding NaN is refused (json.dumps(allow_nan=False)), and nothing is written."""
    from discbench.errors import DiscbenchError
    from discbench.records import write_record
    from tests.test_leaderboard import record

    rec = record("l2", 0, {1: float("nan")}, loss="l2")
    with pytest.raises(DiscbenchError, match="non-finite number"):
        write_record(tmp_path / "r.json", rec)
    assert list(tmp_path.iterdir()) == []
    write_record(tmp_path / "ok.json", record("l2", 0, {1: 60.0}, loss="l2"))
    json.loads((tmp_path / "ok.json").read_text())


def test_tiny_recipe_still_resolves(bench):
    cfg = bench.resolve("mi_x_si", "smallnet", "fashion-mnist", "smoke", overrides=TINY)
    assert cfg.recipe.epochs == 1 and cfg.recipe.milestones == ()


@pytest.mark.parametrize("env,args,message", [
    ({"DISCBENCH_IMPL": "garbage"}, ["--loss", "mi_x_si"], "DISCBENCH_IMPL='garbage' is not one of"),
    ({}, ["--loss", "none", "--backbone", "tv:vgg11"], "backbone 'tv:vgg11' at 28x28"),
])
def test_a_refusal_leaves_no_failure_record(capsys, monkeypatch, tmp_path, env, args, message):
    """A refusal (nothing trained) is one line and leaves no `.failed` file: `discbench status` keeps the seed
    pending, not failed; only a seed that trained and then failed (the case above) leaves one. The directory's lock
    file is the only thing a refusal may leave."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    res = tmp_path / "runs"
    status, _, err = run_smallnet(capsys, monkeypatch, res, *args)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert status == 2 and message in lines[-1] and "Traceback" not in err
    assert [f for f in files_under(res) if not f.endswith("/.claims.lock")] == []


@requires_fashion_mnist
def test_force_over_a_kept_checkpoint_of_a_finished_seed_trains_from_scratch(capsys, monkeypatch, tmp_path):
    """--force reruns a finished seed; its kept end-of-run checkpoint must not be resumed (which would rewrite the
    old numbers without training a step)."""
    res = tmp_path / "runs"
    status, _, err = run_smallnet(capsys, monkeypatch, res, "--loss", "none", "--keep-checkpoints")
    assert status == 0, err
    assert [f for f in files_under(res) if f.endswith(".ckpt")]  # kept

    def no_resume(*args, **kwargs):
        raise AssertionError("resumed a finished seed's checkpoint under --force")

    monkeypatch.setattr("discbench.train.restore", no_resume)
    status, _, err = run_smallnet(capsys, monkeypatch, res, "--loss", "none", "--force")
    assert status == 0, err
    assert not [f for f in files_under(res) if f.endswith(".ckpt")]  # trained, written, checkpoint removed
