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
import tempfile
from pathlib import Path

import pytest
import torch

import discbench.runner as runner_module
from discbench.records import LABEL_CHARS, check_writable, record_path
from tests.conftest import TINY, requires_fashion_mnist
from tests.test_cli import discbench, discbench_in, tiny


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
    check_writable(path)  # the probe goes into the deepest folder that exists and is removed: nothing is left behind
    assert list(tmp_path.iterdir()) == []


def test_check_writable_never_removes_a_folder_another_process_is_creating(tmp_path, monkeypatch):
    """Four sweeps on one results directory: while one probes, another creates the same folders for its claim. The
    probe must not remove them under it (it did: `cannot write in the results directory`, exit 2, once in CI)."""
    path = tmp_path / "runs" / "fashion-mnist" / "tiny" / "self" / "L2__tinynet__0123__seed0.json"
    probe = tempfile.mkstemp

    def probe_while_another_process_creates_the_folders(*args, **kwargs):
        path.parent.mkdir(parents=True, exist_ok=True)  # the other sweep, about to write its claim there
        return probe(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", probe_while_another_process_creates_the_folders)
    check_writable(path)
    assert path.parent.is_dir()


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


# -- the hostile-input audit's cases that had no test of their own ----------------------------------------------------
# Cases that still fail the promise (one line, exit 2, nothing half-written) are marked xfail(strict=True): they pass
# while the fault is there and fail once it is fixed, so the marker is then removed.
def one_line(err: str) -> bool:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return bool(lines) and lines[-1].startswith("error: ") and "Traceback" not in err \
        and sum(line.startswith("error") for line in lines) == 1


def deep_json() -> str:
    return "[" * 100_000 + "]" * 100_000


def test_a_cifar_pickle_that_carries_code_is_one_line_through_the_cli(tmp_path, capsys, monkeypatch, no_training):
    """Case 1 through `discbench run`: the payload is refused by the unpickler, never run, and nothing is left."""
    import pickle

    from tests.test_data import _WritesAMarker, write_cifar100

    folder = write_cifar100(tmp_path / "data")
    marker = tmp_path / "pwned"
    entry = pickle.loads((folder / "train").read_bytes())
    entry[b"batch_label"] = _WritesAMarker(marker)
    (folder / "train").write_bytes(pickle.dumps(entry, protocol=2))
    res = tmp_path / "runs"
    status, _, err = discbench(capsys, monkeypatch, "run", "--loss", "none", "--backbone", "tinynet", "--dataset",
                               "cifar100", "--data-dir", str(tmp_path / "data"), "--seeds", "1", "--quiet",
                               "--results-dir", str(res), *tiny())
    assert status == 2 and one_line(err) and "which a CIFAR pickle never holds (refused, not run)" in err, err
    assert not marker.exists()
    assert [f for f in files_under(res) if not f.endswith("/.claims.lock")] == []


def test_publish_from_a_glob_inside_its_own_records_keeps_them(tmp_path, capsys, monkeypatch):
    from tests.test_leaderboard import record
    from tests.test_records import write

    runs = tmp_path / "runs"
    for seed in range(3):
        write(runs, record("none", seed, {4: 70.0 + seed}, loss="", hash_="b" * 16))
    site = tmp_path / "site"
    status, _, err = discbench(capsys, monkeypatch, "publish", "--results-dir", str(runs), "--out", str(site))
    assert status == 0, err
    before = {p.name: p.read_bytes() for p in (site / "records").iterdir()}
    assert before
    status, _, err = discbench(capsys, monkeypatch, "publish", "--results-dir", str(site / "record[s]"), "--out",
                               str(site))
    assert {p.name: p.read_bytes() for p in (site / "records").iterdir()} == before
    assert status == 2 and one_line(err)


@pytest.mark.parametrize("claim", [
    {"pid": 2**31},
    {"pid": 10**23},
    {"started": 1e308},
    {"started": -1e20},
    {"pid": "12", "heartbeat": None},
])
def test_a_claim_with_out_of_range_numbers_is_read_without_an_exception(claim):
    """Case 10: what `run` (stale_reason) and `status` (stale_reason, describe) do with a claim someone wrote."""
    import socket
    import time

    from discbench import claims

    content = {"host": socket.gethostname(), "pid": 1, "started": time.time(), "heartbeat": time.time(),
               "token": "x", "job": None, **claim}
    claims.stale_reason(content, 600)
    claims.describe(content)


@pytest.mark.parametrize("data", [b"\xff\xfe{", deep_json().encode()], ids=["not-utf8", "deep"])
def test_an_unreadable_claim_file_is_stale_not_a_traceback(tmp_path, data):
    from discbench import claims

    path = tmp_path / "h__seed0.claim"
    path.write_bytes(data)
    assert claims.read_json(path) == {}


def test_a_string_where_a_number_belongs_is_refused_and_the_leaderboard_renders(tmp_path, capsys, monkeypatch):
    """Case 12: strings in final_top1, seed and timing fail the schema (one line each); the table is still drawn."""
    from tests.test_leaderboard import record
    from tests.test_records import write

    runs = tmp_path / "runs"
    paths = [write(runs, record("none", seed, {4: 70.0 + seed}, loss="", hash_="b" * 16)) for seed in range(4)]
    for path, edit in zip(paths[1:], (lambda d: d["final_top1"].update({"net/exit4": "71.0"}),
                                      lambda d: d.update(seed="2"),
                                      lambda d: d["timing"].update(steps_per_second="fast")), strict=True):
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    status, out, err = discbench(capsys, monkeypatch, "check-records", str(runs))
    assert status == 1 and "1 valid runs, 3 invalid" in out.splitlines()[-1], out
    assert sum("is not of type" in line for line in out.splitlines()) == 3
    status, out, err = discbench(capsys, monkeypatch, "leaderboard", "--results-dir", str(runs))
    assert status == 0 and "Traceback" not in err and "70.00" in out, err


@pytest.mark.parametrize("edit", [
    lambda d: d["cost"].update(per_exit={"net/exit4": {"params": "308538", "flops": 1}}),
    lambda d: d["best_top1"].update({"net/exit4": "x"}),
    lambda d: d["cost"].update(backbone_params="308538"),
    lambda d: d.update(epochs=[{"epoch": "1"}]),
], ids=["cost.per_exit.params", "best_top1", "cost.backbone_params", "epochs.epoch"])
def test_a_string_in_cost_or_best_top1_is_refused(tmp_path, capsys, monkeypatch, edit):
    from tests.test_leaderboard import record
    from tests.test_records import write

    path = write(tmp_path / "runs", record("none", 0, {4: 70.0}, loss="", hash_="b" * 16))
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    status, out, _ = discbench(capsys, monkeypatch, "check-records", str(tmp_path / "runs"))
    assert status == 1 and "0 valid runs, 1 invalid" in out.splitlines()[-1], out


def test_a_deeply_nested_record_is_one_invalid_line(tmp_path, capsys, monkeypatch):
    from tests.test_leaderboard import record
    from tests.test_records import write

    runs = tmp_path / "runs"
    path = write(runs, record("none", 0, {4: 70.0}, loss="", hash_="b" * 16))
    (path.parent / "deep.json").write_text(deep_json())
    status, out, err = discbench(capsys, monkeypatch, "check-records", str(runs))
    assert status == 1 and "1 valid runs, 1 invalid" in out.splitlines()[-1]
    status, out, err = discbench(capsys, monkeypatch, "leaderboard", "--results-dir", str(runs))
    assert status == 0 and "Traceback" not in err and "deep.json" in err


def test_a_deeply_nested_bench_toml_is_one_line(tmp_path, capsys, monkeypatch, no_training):
    config = tmp_path / "bench.toml"
    config.write_text("[recipes.x]\nepochs = " + deep_json() + "\n")
    status, _, err = discbench(capsys, monkeypatch, "list", "budgets", "--config", str(config))
    assert status == 2 and one_line(err), err[-500:]


def _nan_teacher_store(tmp_path, top1):
    """A store holding tinynet's zoo teacher whose manifest says ``top1``: the id a student looks up, bad weights."""
    from discbench.config import Bench
    from discbench.teachers import teacher_config

    tcfg = teacher_config(Bench.load(None), "tinynet", "fashion-mnist", "zoo")
    folder = tmp_path / "teachers" / f"{tcfg.hash}-seed0"
    folder.mkdir(parents=True)
    (folder / "weights.pt").write_bytes(b"not read")
    manifest = {"teacher_id": folder.name, "backbone": "tinynet", "dataset": "fashion-mnist", "num_classes": 10,
                "in_channels": 1, "image_size": 28, "budget": "zoo", "seed": 0, "top1": top1, "source": "trained",
                "sha256": "0" * 64}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder.parent


def offline_student(capsys, monkeypatch, tmp_path, store, *extra):
    return discbench(capsys, monkeypatch, "run", "--protocol", "offline", "--loss", "kd", "--backbone", "tinynet",
                     "--teacher", "tinynet", "--budget", "zoo", "--seeds", "1", "--quiet", "--device", "cpu",
                     "--teacher-store", str(store), "--results-dir", str(tmp_path / "runs"), *tiny(), *extra)


@pytest.mark.parametrize("top1", [float("nan"), "91.0", 1e9])
def test_a_teacher_whose_accuracy_is_no_top1_is_refused_before_the_student_trains(tmp_path, capsys, monkeypatch,
                                                                                  no_training, top1):
    """Case 16 through `run`: the manifest is checked when the student looks its teacher up."""
    store = _nan_teacher_store(tmp_path, top1)
    status, _, err = offline_student(capsys, monkeypatch, tmp_path, store)
    assert status == 2 and one_line(err) and "'top1' must be a top-1 in [0, 100] or null" in err, err
    assert [f for f in files_under(tmp_path / "runs") if f.endswith((".json", ".failed"))] == []


def test_an_unreadable_teacher_weights_file_is_one_line(tmp_path, capsys, monkeypatch, no_training):
    """Case 27 (root reads every file: the failing open is simulated there)."""
    store = _nan_teacher_store(tmp_path, 90.0)
    weights = next(store.glob("*/weights.pt"))
    if os.geteuid() == 0:
        import builtins

        def unreadable(path, *args, **kwargs):  # the open() of discbench.teachers fails as chmod 0 would for a user
            if Path(path).name == "weights.pt":
                raise PermissionError(13, "Permission denied", str(path))
            return builtins.open(path, *args, **kwargs)

        monkeypatch.setattr("discbench.teachers.open", unreadable, raising=False)
    else:
        weights.chmod(0)
    status, _, err = offline_student(capsys, monkeypatch, tmp_path, store)
    assert status == 2 and one_line(err) and "weights.pt" in err, err


def test_a_read_only_teacher_store_refuses_train_teacher_and_lists(tmp_path, capsys, monkeypatch, no_training):
    """Cases 18 and 26: train-teacher is refused in one line before it trains; `teacher list` only reads. (Root
    writes anywhere: it gets a store under /proc, where nobody can create a directory.)"""
    store = tmp_path / "teachers"
    store.mkdir()
    store.chmod(stat.S_IRUSR | stat.S_IXUSR)
    unwritable = store if os.geteuid() != 0 else Path("/proc/discbench-teachers")
    try:
        status, _, err = discbench(capsys, monkeypatch, "train-teacher", "--backbone", "tinynet", "--budget", "zoo",
                                   "--quiet", "--teacher-store", str(unwritable), "--results-dir",
                                   str(tmp_path / "runs"), *tiny())
        assert status == 2 and one_line(err) and f"cannot store teachers in {unwritable}" in err, err
        status, out, err = discbench(capsys, monkeypatch, "teacher", "list", "--teacher-store", str(store))
        assert status == 0 and "no teachers" in out and err == "", err
    finally:
        store.chmod(stat.S_IRWXU)
    assert files_under(tmp_path / "runs") == [] and list(store.iterdir()) == []


def test_a_peer_without_stages_is_one_line_before_training(tmp_path, capsys, monkeypatch, no_training):
    """Case 21: refused in one line and nothing trains (see the next test for when)."""
    res = tmp_path / "runs"
    status, _, err = discbench(capsys, monkeypatch, "run", "--protocol", "online", "--loss", "dml", "--backbone",
                               "tinynet", "--peer", "tv:vit_b_16", "--seeds", "1", "--quiet", "--device", "cpu",
                               "--results-dir", str(res), *tiny())
    assert status == 2 and one_line(err) and "backbone 'tv:vit_b_16' has no usable stages" in err, err
    assert [f for f in files_under(res) if not f.endswith("/.claims.lock")] == []


def test_a_peer_without_stages_is_refused_before_the_data_opens(tmp_path, capsys, monkeypatch, no_training):
    import discbench.data as data_module

    def data_opened(*args, **kwargs):
        raise AssertionError("the data opened before the peer was checked")

    monkeypatch.setattr(data_module, "open_dataset", data_opened)
    status, _, err = discbench(capsys, monkeypatch, "run", "--protocol", "online", "--loss", "dml", "--backbone",
                               "tinynet", "--peer", "tv:vit_b_16", "--seeds", "1", "--quiet", "--device", "cpu",
                               "--results-dir", str(tmp_path / "runs"), *tiny())
    assert status == 2 and "no usable stages" in err


def test_an_absurd_seed_count_is_refused(tmp_path, capsys, monkeypatch, no_training):
    """Case 24."""
    res = tmp_path / "runs"
    status, _, err = discbench(capsys, monkeypatch, "run", "--loss", "none", "--backbone", "tinynet", "--seeds",
                               "100000000000000000000000", "--results-dir", str(res))
    assert status == 2 and "Invalid value for '--seeds'" in err and "Traceback" not in err
    assert not res.exists()


def test_leaderboard_figures_into_an_unwritable_directory_is_one_line(tmp_path, capsys, monkeypatch):
    """Case 29 with --figures (root writes anywhere: it gets /proc)."""
    from tests.conftest import REPO

    out = tmp_path / "ro" if os.geteuid() != 0 else Path("/proc/discbench-board")
    if os.geteuid() != 0:
        out.mkdir()
        out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        status, _, err = discbench(capsys, monkeypatch, "leaderboard", "--results-dir", str(REPO / "results" / "runs"),
                                   "--budget", "zoo", "--figures", "--out", str(out / "x.md"))
    finally:
        if os.geteuid() != 0:
            out.chmod(stat.S_IRWXU)
    assert status == 2 and one_line(err), err[-500:]


def test_leaderboard_into_an_unwritable_directory_is_one_line(tmp_path, capsys, monkeypatch):
    """Case 29 without --figures."""
    from tests.conftest import REPO

    out = tmp_path / "ro" if os.geteuid() != 0 else Path("/proc/discbench-board")
    if os.geteuid() != 0:
        out.mkdir()
        out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        status, _, err = discbench(capsys, monkeypatch, "leaderboard", "--results-dir", str(REPO / "results" / "runs"),
                                   "--budget", "zoo", "--out", str(out / "x.md"))
    finally:
        if os.geteuid() != 0:
            out.chmod(stat.S_IRWXU)
    assert status == 2 and one_line(err) and f"cannot write {out / 'x.md'}" in err, err


@pytest.mark.parametrize("how", ["--config", "DISCBENCH_CONFIG", "./bench.toml"])
@pytest.mark.parametrize("fault,message", [("unreadable", "cannot read"), ("latin-1", "is not UTF-8 text")])
def test_a_bench_toml_that_cannot_be_read_is_one_line_each_way(tmp_path, capsys, monkeypatch, no_training, how,
                                                               fault, message):
    """Cases 30 and 31. Root reads every file, so "unreadable" makes reading bench.toml fail with EACCES."""
    from tests.test_cli import discbench_in

    config = (tmp_path / "bench.toml").resolve()
    config.write_bytes(b'[recipes.x]\ndescription = "caf\xe9"\n' if fault == "latin-1" else b"")
    if fault == "unreadable":
        real = Path.read_text

        def read_text(self, *args, **kwargs):
            if self.resolve() == config:  # the user's file, not discbench's own defaults (also bench.toml)
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "read_text", read_text)
    monkeypatch.delenv("DISCBENCH_CONFIG", raising=False)
    if how == "DISCBENCH_CONFIG":
        monkeypatch.setenv("DISCBENCH_CONFIG", str(config))
    args = ["--config", str(config)] if how == "--config" else []
    res = tmp_path / "runs"
    status, _, err = discbench_in(capsys, monkeypatch, tmp_path, "run", "--loss", "none", "--backbone", "tinynet",
                                  "--seeds", "1", "--quiet", "--results-dir", str(res), *args)
    assert status == 2 and one_line(err) and message in err and "bench.toml" in err, err
    assert not res.exists()


def test_slurm_options_without_the_slurm_launcher_are_refused(tmp_path, capsys, monkeypatch, no_training):
    """Case 33."""
    res = tmp_path / "runs"
    for args, message in ((["--partition", "x"], "--partition applies to --launcher slurm only"),
                          (["--launcher", "local", "--mem", "32G"], "--mem applies to --launcher slurm only")):
        status, _, err = discbench(capsys, monkeypatch, "sweep", "--suite", "demo", "--results-dir", str(res),
                                   "--quiet", *args)
        assert status == 2 and one_line(err) and message in err, err
    assert files_under(res) == []


def test_an_unknown_torchvision_backbone_leaves_no_failure_record(tmp_path, capsys, monkeypatch, no_training):
    """Case 35 through `run` (validate has its own test)."""
    res = tmp_path / "runs"
    status, _, err = run_smallnet(capsys, monkeypatch, res, "--loss", "none", "--backbone", "tv:not_a_model")
    assert status == 2 and one_line(err) and "torchvision has no classification model 'not_a_model'" in err, err
    assert [f for f in files_under(res) if not f.endswith("/.claims.lock")] == []


def test_check_of_a_missing_file_is_one_line_not_a_diff(tmp_path, capsys, monkeypatch):
    """Case 36: exit 1 (the check fails), one line, no diff on stdout, nothing written."""
    from tests.conftest import REPO

    missing = tmp_path / "MISSING.md"
    status, out, err = discbench(capsys, monkeypatch, "leaderboard", "--check", "--out", str(missing),
                                 "--results-dir", str(REPO / "results" / "runs"), "--budget", "zoo")
    assert status == 1 and out == "" and len(err.strip().splitlines()) == 1 and "does not exist" in err, err
    assert not missing.exists()


@requires_fashion_mnist
def test_train_teacher_takes_set_and_writes_into_the_users_runs(tmp_path, capsys, monkeypatch):
    """Case 39: `--set` shrinks the teacher's recipe; its record lands in ./runs of the working directory, never in
    the repository's results/runs."""
    from tests.conftest import REPO
    from tests.test_cli import discbench_in

    published = sorted((REPO / "results" / "runs").rglob("*"))
    status, _, err = discbench_in(capsys, monkeypatch, tmp_path, "train-teacher", "--backbone", "tinynet", "--budget",
                                  "zoo", "--quiet", "--device", "cpu", "--teacher-store", str(tmp_path / "t"),
                                  *tiny())
    assert status == 0, err
    (manifest,) = (tmp_path / "t").glob("*/manifest.json")
    assert json.loads(manifest.read_text())["config"]["recipe"]["train_subset"] == 128
    assert [f for f in files_under(tmp_path / "runs") if f.endswith(".json")]
    assert sorted((REPO / "results" / "runs").rglob("*")) == published


@requires_fashion_mnist
def test_an_offline_baseline_needs_no_stored_teacher(tmp_path, capsys, monkeypatch, no_training):
    """Case 40: `--protocol offline --loss none` names its table's teacher but reaches training with an empty
    store (the sentinel is that training)."""
    with pytest.raises(TrainingStarted):
        discbench(capsys, monkeypatch, "run", "--protocol", "offline", "--loss", "none", "--backbone", "tinynet",
                  "--teacher", "smallnet", "--budget", "zoo", "--seeds", "1", "--quiet", "--device", "cpu",
                  "--teacher-store", str(tmp_path / "empty"), "--results-dir", str(tmp_path / "runs"), *tiny())
    assert not (tmp_path / "empty").exists() or list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("what", ["datasets", "protocols"])
def test_list_datasets_and_protocols_import_no_torch(what):
    """Case 43."""
    from tests.test_cli_startup import run_cli

    proc, heavy = run_cli("list", what)
    assert proc.returncode == 0, proc.stderr
    assert heavy == "[]"


def test_the_plugin_example_ci_pipes_nothing_into_grep_q():
    """Case 44: `discbench list losses | tee /dev/stderr | grep -q` fails under pipefail when grep exits first."""
    from tests.conftest import REPO

    example = REPO / "examples" / "discbench-plugin-example"
    for path in [example / "ci.sh", *sorted((example / ".github").rglob("*.yml"))]:
        for line in path.read_text().splitlines():
            code = line.split("#", 1)[0]
            assert "tee /dev/stderr" not in code and not ("|" in code and "grep -q" in code), f"{path}: {line}"


def test_a_sweep_without_its_data_is_one_line_before_any_pre_flight(tmp_path, capsys, monkeypatch):
    """Case 41, sweep half: `sweep --suite table1` (CIFAR-100) without --data-dir said so only after pre-flighting
    its 32 rows (20 s); the data of the rows to run now opens first."""
    def no_preflight(*_, **__):
        raise AssertionError("the pre-flight ran before the data was checked")

    monkeypatch.setattr(runner_module, "preflight", no_preflight)
    monkeypatch.delenv("DISCBENCH_DATA", raising=False)
    status, _, err = discbench(capsys, monkeypatch, "sweep", "--suite", "table1", "--results-dir",
                               str(tmp_path / "runs"), "--quiet")
    assert status == 2 and one_line(err) and "cifar100 needs a data directory" in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))


def test_a_directory_named_bench_toml_in_the_working_directory_is_one_line(tmp_path, capsys, monkeypatch):
    """A ./bench.toml that is a directory was silently passed over (the run trained with the defaults)."""
    (tmp_path / "bench.toml").mkdir()
    monkeypatch.delenv("DISCBENCH_CONFIG", raising=False)
    status, _, err = discbench_in(capsys, monkeypatch, tmp_path, "list", "budgets")
    assert status == 2 and one_line(err) and "bench.toml is a directory" in err, err
