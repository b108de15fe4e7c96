"""bench.toml -> RunConfig: types, overrides, errors, hashing."""

from __future__ import annotations

from pathlib import Path

import pytest

from discbench import suites
from discbench.config import Bench, parse_override, read_toml
from discbench.errors import DiscbenchError


def test_paper_recipe_is_muse_section_4_1(bench):
    cifar = bench.resolve("mi_x_si", "resnet18", "cifar100", "paper")
    r = cifar.recipe
    assert (r.epochs, r.batch_size, r.lr, r.momentum, r.weight_decay, r.milestones, r.gamma) == (
        200, 128, 0.1, 0.9, 5e-4, (75, 130, 180), 0.1)
    assert bench.resolve("mi_x_si", "resnet18", "tinyimagenet", "paper").recipe.batch_size == 64
    imagenet = bench.resolve("mi_x_si", "resnet18", "imagenet", "paper").recipe
    assert (imagenet.epochs, imagenet.batch_size, imagenet.weight_decay, imagenet.milestones) == (
        90, 256, 1e-4, (30, 60))


def test_dataset_shapes(bench):
    shapes = {name: (bench.resolve("l2", "resnet18", name, "paper").dataset) for name in bench.names("datasets")}
    assert (shapes["fashion-mnist"].channels, shapes["fashion-mnist"].image_size,
            shapes["fashion-mnist"].num_classes) == (1, 28, 10)
    assert (shapes["cifar100"].channels, shapes["cifar100"].image_size, shapes["cifar100"].num_classes) == (3, 32, 100)
    assert (shapes["tinyimagenet"].image_size, shapes["tinyimagenet"].num_classes) == (64, 200)


def test_overrides_are_typed(bench):
    cfg = bench.resolve("mi_x_si", "smallnet", "fashion-mnist", "smoke",
                        overrides=["recipe.lr=1", "loss.dim=32", "loss.beta=0.5", "protocol.kd_weight=0",
                                   "recipe.milestones=[1, 2]", "recipe.epochs=3"])
    assert cfg.recipe.lr == 1.0 and isinstance(cfg.recipe.lr, float)
    assert cfg.loss.hparams["dim"] == 32 and cfg.loss.beta == 0.5
    assert cfg.protocol.kd_weight == 0.0 and cfg.recipe.milestones == (1, 2)
    with pytest.raises(DiscbenchError, match=r"recipe 'smoke'\.epochs: expected int, got 'ten'"):
        bench.resolve("l2", "smallnet", "fashion-mnist", "smoke", overrides=["recipe.epochs=ten"])
    with pytest.raises(DiscbenchError, match=r"expected int, got 1.5"):
        bench.resolve("mi", "smallnet", "fashion-mnist", "smoke", overrides=["loss.dim=1.5"])
    with pytest.raises(DiscbenchError, match=r"expected bool"):
        bench.resolve("l2", "smallnet", "fashion-mnist", "smoke", overrides=["protocol.exits=1"])


def test_unknown_keys_list_the_valid_ones(bench):
    with pytest.raises(DiscbenchError, match=r"unknown key 'lrate' \(did you mean 'lr'\?\); valid keys: epochs, "):
        bench.resolve("l2", "smallnet", "fashion-mnist", "smoke", overrides=["recipe.lrate=0.1"])
    with pytest.raises(DiscbenchError, match=r"loss 'mi': unknown key 'width'; valid keys: beta, dim"):
        bench.resolve("mi", "smallnet", "fashion-mnist", "smoke", overrides=["loss.width=3"])
    with pytest.raises(DiscbenchError, match=r"section one of dataset, recipe, protocol, loss, runtime"):
        parse_override("optim.lr=3")
    with pytest.raises(DiscbenchError, match=r"expected section.key=value"):
        parse_override("recipe.lr")


@pytest.mark.parametrize("kind,args,match", [
    ("loss", ("mi_si", "smallnet", "fashion-mnist", "smoke"), r"unknown loss 'mi_si'; did you mean 'mi_x_si'"),
    ("backbone", ("l2", "resnet19", "fashion-mnist", "smoke"), r"unknown backbone 'resnet19'; did you mean 'resnet18'"),
    ("dataset", ("l2", "smallnet", "cifar1000", "smoke"), r"unknown dataset 'cifar1000'; did you mean 'cifar100'"),
    ("budget", ("l2", "smallnet", "fashion-mnist", "smokey"), r"unknown budget 'smokey'; did you mean 'smoke'"),
])
def test_unknown_names(bench, kind, args, match):
    with pytest.raises(DiscbenchError, match=match):
        bench.resolve(*args)


def test_baselines_are_protocol_switches(bench):
    none = bench.resolve("none", "smallnet", "fashion-mnist", "smoke")
    ce = bench.resolve("ce", "smallnet", "fashion-mnist", "smoke")
    ce_kd = bench.resolve("ce_kd", "smallnet", "fashion-mnist", "smoke")
    assert none.loss.name == ce.loss.name == ce_kd.loss.name == ""
    assert not none.protocol.exits and ce.protocol.exits and ce.protocol.kd_weight == 0
    assert ce_kd.protocol.kd_weight > 0
    assert len({none.hash, ce.hash, ce_kd.hash}) == 3
    with pytest.raises(DiscbenchError, match="no discrepancy to configure"):
        bench.resolve("ce", "smallnet", "fashion-mnist", "smoke", overrides=["loss.beta=1"])


def test_hash_ignores_label_and_follows_every_value(bench):
    a = bench.resolve("l2", "smallnet", "fashion-mnist", "smoke")
    assert a.hash == bench.resolve("l2", "smallnet", "fashion-mnist", "smoke", label="other").hash
    assert a.hash == bench.resolve("l2", "smallnet", "fashion-mnist", "smoke").hash
    assert len(a.hash) == 16
    changed = [bench.resolve("l2", "smallnet", "fashion-mnist", "smoke", overrides=[o]).hash
               for o in ("recipe.lr=0.07", "loss.beta=1", "dataset.flip=false", "runtime.compile=true")]
    assert len({a.hash, *changed}) == 5
    assert a.label == "l2"
    assert bench.resolve("l2", "smallnet", "fashion-mnist", "smoke", overrides=["recipe.lr=0.07"]).label == \
        "l2 [recipe.lr=0.07]"


def test_frozen(bench):
    cfg = bench.resolve("l2", "smallnet", "fashion-mnist", "smoke")
    with pytest.raises(AttributeError):
        cfg.recipe.lr = 3.0


def test_malformed_bench_toml(tmp_path):
    bad = tmp_path / "bench.toml"
    bad.write_text("[recipes.smoke\nepochs = 1\n")
    with pytest.raises(DiscbenchError, match=r"bench.toml is not valid TOML"):
        Bench.load(bad)
    bad.write_text("[datasets]\n[recipes]\n[protocols]\n")
    # A project file is laid over the package defaults, which hold every table; the merged tables are what is checked.
    assert isinstance(Bench.load(bad).data["runtime"], dict)
    with pytest.raises(DiscbenchError, match=r"missing table \[runtime\]"):
        Bench(read_toml(bad), [bad])
    with pytest.raises(DiscbenchError, match=r"not found"):
        Bench.load(tmp_path / "missing.toml")


def test_missing_key_in_bench_toml(bench, tmp_path):
    import tomllib

    text = (bench.path).read_text().replace("eval_every = 1          #", "#")
    path = tmp_path / "bench.toml"
    path.write_text(text)
    assert "eval_every" not in tomllib.loads(text)["recipes"]["paper"]
    # Laid over the package defaults, the key comes from the defaults; the file's tables alone miss it.
    assert Bench.load(path).resolve("l2", "resnet18", "cifar100", "paper").recipe.eval_every == 1
    with pytest.raises(DiscbenchError, match=r"recipe 'paper': missing key 'eval_every'"):
        Bench(read_toml(path), [path]).resolve("l2", "resnet18", "cifar100", "paper")


def test_demo_suite(bench):
    suite = suites.load(bench, "demo")
    assert [r.loss for r in suite.rows] == ["none", "ce", "ce_kd", "l2", "mi", "si", "mi_plus_si", "mi_x_si"]
    assert suite.seeds == 3 and suite.budget == "smoke" and suite.datasets == ("fashion-mnist",)


def test_suites_extend_other_suites(tmp_path):
    text = (REPO_BENCH := Path(__file__).resolve().parents[1] / "bench.toml").read_text()
    path = tmp_path / "bench.toml"
    path.write_text(text + '\n[suites.a]\nextends = "b"\n[suites.b]\nextends = "a"\n')
    with pytest.raises(DiscbenchError, match=r"suite 'a': 'extends' goes round in a circle: a -> b -> a"):
        suites.load(Bench.load(path), "a")
    smoke = suites.load(Bench.load(REPO_BENCH), "table5-smoke")
    assert smoke.name == "table5-smoke" and smoke.budget == "smoke" and len(smoke.rows) == 16


@pytest.mark.parametrize("value,integer,expected", [
    (3, False, True), (3.5, False, True), (-2, True, True), (3.0, True, False), (True, False, False),
    (float("nan"), False, False), (float("inf"), False, False), ("3", False, False), (None, False, False),
])
def test_is_number_is_a_finite_real_never_a_bool(value, integer, expected):
    from discbench.ranges import is_number

    assert is_number(value, integer) is expected
