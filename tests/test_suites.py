"""The ablation suites of bench.toml (MUSE Tables 5 and 6): every row resolves on every backbone, dataset and budget,
and each row switches the exit terms exactly as the paper's row name says."""

from __future__ import annotations

import pytest

from discbench import suites
from discbench.config import Bench
from discbench.errors import DiscbenchError
from discbench.protocols.self_distillation import SelfDistillation
from tests.conftest import REPO

BENCH = Bench.load(REPO / "bench.toml")
PAPER_SUITES = ("table5", "table6")
SUITES = (*PAPER_SUITES, *(f"{name}-smoke" for name in PAPER_SUITES))

# Row names of the paper (MUSE, Tables 5 and 6), in its order.
TABLE5 = ["Baseline", "CE", "CE + KD", "L2", "L2 + CE", "L2 + CE + KD", "MI", "SI", "MI + CE", "MI + CE + KD",
          "(MI+SI)", "(MI×SI)", "(MI+SI) + CE", "(MI×SI) + CE", "(MI+SI) + CE + KD", "(MI×SI) + CE + KD"]
TABLE6 = ["Baseline", "L2", "MMD", "adversarial", "VID", "MI+SI", "MI×SI"]
# The discrepancy each paper name stands for ("" for none: the baselines).
LOSS_OF = {"Baseline": "", "CE": "", "L2": "l2", "MI": "mi", "SI": "si", "(MI+SI)": "mi_plus_si",
           "(MI×SI)": "mi_x_si", "MI+SI": "mi_plus_si", "MI×SI": "mi_x_si", "MMD": "mmd", "adversarial": "adversarial",
           "VID": "vid"}


def rows():
    for name in SUITES:
        suite = suites.load(BENCH, name)
        for row in suite.rows:
            yield pytest.param(suite, row, id=f"{name}-{row.label}")


def needs_loss(loss: str) -> None:
    if loss not in BENCH.method_names():
        pytest.skip(f"loss '{loss}' is not registered yet (its plugin is being written); the suite cannot run")


@pytest.mark.parametrize("suite,row", list(rows()))
def test_every_row_resolves(suite, row):
    """On the suite's datasets and backbones, under its own budget and under --budget smoke."""
    needs_loss(row.loss)
    for dataset in suite.datasets:
        for backbone in suite.backbones:
            for budget in {suite.budget, "smoke"}:
                cfg = BENCH.resolve(row.loss, backbone, dataset, budget, suite.protocol,
                                    (*suite.overrides, *row.overrides), row.label)
                assert cfg.label == row.label and cfg.budget == budget
    if suite.name.endswith("-smoke"):  # SmallNet builds in milliseconds: build the run's modules, plugins included
        cfg = BENCH.resolve(row.loss, suite.backbones[0], suite.datasets[0], suite.budget, suite.protocol,
                            (*suite.overrides, *row.overrides), row.label)
        system = SelfDistillation(cfg)
        assert len(system.discrepancies) == (3 if cfg.loss.name else 0)


@pytest.mark.parametrize("name", PAPER_SUITES)
def test_the_cpu_variant_has_the_same_rows(name):
    paper, smoke = suites.load(BENCH, name), suites.load(BENCH, f"{name}-smoke")
    assert smoke.rows == paper.rows and smoke.protocol == paper.protocol
    assert (paper.datasets, paper.backbones, paper.budget) == (("cifar100",), ("resnet18", "efficientnet_b0"), "paper")
    assert (smoke.datasets, smoke.backbones, smoke.budget) == (("fashion-mnist",), ("smallnet",), "smoke")


def resolved_rows(name: str):
    suite = suites.load(BENCH, name)
    for row in suite.rows:
        needs_loss(row.loss)
        yield row.label, BENCH.resolve(row.loss, suite.backbones[0], suite.datasets[0], suite.budget, suite.protocol,
                                       (*suite.overrides, *row.overrides), row.label)


@pytest.mark.parametrize("name", ["table5", "table5-smoke"])
def test_table5_rows_switch_ce_and_kd_as_named(name):
    """"X + CE + KD": discrepancy X with CE and KD at exits 1..3; no "CE" / "KD" in the name: that weight is 0."""
    assert [row.label for row in suites.load(BENCH, name).rows] == TABLE5
    for label, cfg in resolved_rows(name):
        terms = label.split(" + ")
        p = cfg.protocol
        assert cfg.loss.name == LOSS_OF[terms[0]], label
        if label == "Baseline":  # the plain network: no exits at all
            assert not p.exits, label
            continue
        assert p.exits, label
        assert p.exit_ce_weight == (1.0 if "CE" in terms else 0.0), label
        assert (p.kd_weight > 0) == ("KD" in terms), label


@pytest.mark.parametrize("name", ["table6", "table6-smoke"])
def test_table6_rows_have_ce_and_no_kd(name):
    assert [row.label for row in suites.load(BENCH, name).rows] == TABLE6
    for label, cfg in resolved_rows(name):
        p = cfg.protocol
        assert cfg.loss.name == LOSS_OF[label], label
        if label == "Baseline":
            assert not p.exits, label
        else:
            assert p.exits and p.exit_ce_weight == 1.0 and p.kd_weight == 0.0, label


# MUSE Table 7: rows and columns as the paper prints them; the smoke variants keep the rows.
TABLE7A = ["Baseline", "KD", "DML", "KDCL", "AFD", "MI+SI", "MI×SI"]
TABLE7A_PAIRS = [("resnet20", "resnet20"), ("resnet56", "resnet56"), ("resnet20", "resnet56"),
                 ("shufflenet_v1", "wrn_40_2")]
TABLE7B = ["Baseline", "KD", "FitNets", "VID", "CRD", "MIMKD", "MI+SI", "MI×SI"]
TABLE7B_PAIRS = [("resnet20", "resnet56"), ("resnet32", "resnet110")]  # (student, teacher)
LOSS_OF_7 = {"Baseline": "", "KD": "", "DML": "dml", "KDCL": "kdcl", "AFD": "afd", "MI+SI": "mi_plus_si",
             "MI×SI": "mi_x_si", "FitNets": "fitnet", "VID": "vid", "CRD": "crd", "MIMKD": "mimkd"}


@pytest.mark.parametrize("name,labels,pairs", [("table7a", TABLE7A, TABLE7A_PAIRS),
                                               ("table7b", TABLE7B, TABLE7B_PAIRS)])
def test_table7_rows_columns_and_weights(name, labels, pairs):
    paper, smoke = suites.load(BENCH, name), suites.load(BENCH, f"{name}-smoke")
    assert [row.label for row in paper.rows] == labels and smoke.rows == paper.rows
    assert paper.columns() == pairs and (paper.datasets, paper.budget) == (("cifar100",), "paper")
    assert smoke.datasets == ("fashion-mnist",) and smoke.budget == "smoke" and smoke.protocol == paper.protocol
    assert len({b == p for b, p in smoke.columns()}) == (2 if name == "table7a" else 1)  # 7a: identical and different
    for suite in (paper, smoke):
        configs = suites.configs(BENCH, suite)
        assert len(configs) == len(suite.rows) * len(suite.columns()) * len(suite.datasets)
        for cfg in configs:
            p, label = cfg.protocol, cfg.label
            assert cfg.loss.name == LOSS_OF_7[label], label
            assert cfg.is_baseline == (label == "Baseline"), label
            if name == "table7a":  # KD between the peers, except where DML or KDCL replaces it
                assert (p.kd_weight > 0) == (label not in ("Baseline", "DML", "KDCL")), label
            else:  # RepDistiller: KD is -r 0.1 -a 0.9; FitNets, VID, CRD (and MIMKD) -a 0; MUSE keeps KD
                assert (p.ce_weight, p.kd_weight > 0) == ((0.1, True) if label in ("KD", "MI+SI", "MI×SI")
                                                          else (1.0, False)), label
    offline = suites.configs(BENCH, paper)[0]
    if name == "table7b":  # RepDistiller's CIFAR-100 recipe is the offline protocol's paper recipe
        r = offline.recipe
        assert (r.epochs, r.batch_size, r.lr, r.milestones, r.weight_decay) == (240, 64, 0.05, (150, 180, 210), 5e-4)
    else:  # online follows MUSE §4.1
        assert offline.recipe.epochs == 200 and offline.recipe.milestones == (75, 130, 180)


def test_zoo_smoke_suites_hold_every_loss_once_per_protocol_that_defines_it(bench):
    """`zoo-smoke`, `zoo-smoke-online` and `zoo-smoke-offline` run every registered loss (built-in) under each
    protocol it supports, each protocol's baselines, and the methods of the protocols of its family (CS-KD, ONE,
    DDGSD and FRSKD in the self tables), each under its own protocol: adding a method without it joining fails here."""
    from discbench.registry import LOSSES, PROTOCOLS

    for name, protocol in (("zoo-smoke", "self"), ("zoo-smoke-online", "online"), ("zoo-smoke-offline", "offline")):
        suite = suites.load(bench, name)
        assert suite.protocol == protocol and suite.seeds == 1
        rows = [(row.loss, suite.protocol_of(row)) for row in suite.rows]
        assert len(rows) == len(set(rows))
        family = [p for p in PROTOCOLS.names() if PROTOCOLS.get(p).table_protocol() == protocol]
        expected = {(loss, protocol) for loss in LOSSES.names()
                    if protocol in (LOSSES.get(loss).protocols or (protocol,))}
        expected |= {(m, p) for m in bench.method_names() for p in family if p in bench.method(m).protocols}
        assert set(rows) == expected, name
    assert {p for _, p in rows} == {"offline"}
    self_rows = {(row.loss, suites.load(bench, "zoo-smoke").protocol_of(row))
                 for row in suites.load(bench, "zoo-smoke").rows}
    assert {("cs_kd", "cs_kd"), ("one", "one"), ("ddgsd", "ddgsd"), ("frskd", "frskd"), ("l2", "self")} <= self_rows


def test_the_command_line_and_every_suite_resolve_a_method_to_the_same_hash(bench):
    """Issue 18: `discbench run --protocol P --loss X` (its resolve call, partner options as the CLI passes them) and
    every suite row naming (P, X) give the same configuration hash, for every registered loss and baseline under
    every protocol that defines it. A suite's or row's `set` (an ablation such as Table 5's "without CE at the
    exits", or a teacher budget) is what `run --set` gives alike; suites.check_row refuses a `set` that restates or
    changes a method's declared weights."""
    from discbench.registry import LOSSES, PROTOCOLS

    covered = set()
    for name in bench.data.get("suites", {}):
        suite = suites.load(bench, name)
        for run in suites.runs(bench, suite):
            cfg = run.cfg
            row = next(r for r in suite.rows if r.label == cfg.label)
            partner = {"peer": None, "teacher": None}
            protocol = suite.protocol_of(row)
            key = PROTOCOLS.get(protocol).partner
            if key:
                partner[key] = getattr(cfg.protocol, key)
            if not row.protocol:  # `run` without --protocol picks the method's own protocol (cs_kd for cs_kd)
                assert bench.home_protocol(row.loss) == protocol or protocol != "self", (name, row.label)
            cli = bench.resolve(row.loss, cfg.backbone, cfg.dataset.name, cfg.budget, protocol,
                                (*suite.overrides, *row.overrides), None, partner=partner)
            assert cli.hash == cfg.hash and cli.request_hash == cfg.request_hash, (name, row.label, cfg.backbone)
            covered.add((row.loss, protocol))
    every = {(m, p) for m in bench.method_names() for p in bench.method(m).protocols}
    assert {(m, p) for m in LOSSES.names() for p in bench.method(m).protocols} <= every
    assert every <= covered  # the zoo suites name every one of them


def test_list_suites_gives_each_suites_size_as_its_runs_count_it(capsys, monkeypatch):
    """`discbench list suites` reads the tables and the catalog (no torch) and its run counts are what the suites
    train (suites.runs, with the registries)."""
    from tests.test_cli import discbench

    status, out, _ = discbench(capsys, monkeypatch, "list", "suites")
    assert status == 0
    lines, described = {}, {}
    for line in out.splitlines()[1:]:  # each suite: "name  description", then its size on an indented line
        if not line.startswith(" "):
            name = line.split()[0]
            described[name] = line.split(None, 1)[1]
        else:
            lines[name] = line.strip()
    assert set(lines) == set(BENCH.names("suites"))
    for name in ("demo", "signal-offline", "zoo-smoke", "zoo-smoke-online", "zoo-smoke-offline", "table7a", "table2"):
        suite = suites.load(BENCH, name)
        n = sum(len(r.seeds) for r in suites.runs(BENCH, suite))
        assert lines[name].endswith(f"= {n} runs"), lines[name]
        assert described[name] == suite.description
    assert "offline, budget signal: 5 rows x 1 column(s) x 1 dataset(s) x 5 seed(s) = 25 runs" in \
        lines["signal-offline"]


def test_table2_sets_the_self_distillation_methods_beside_muse_each_under_its_own_protocol(bench):
    """MUSE Table 2's columns, in its order, each method under the protocol that defines it, all in one self table
    (methods as columns), the `paper` recipe for every column; the smoke variant keeps the rows."""
    suite = suites.load(bench, "table2")
    assert [r.label for r in suite.rows] == ["Baseline", "CS-KD", "ONE", "DDGSD", "BYOT", "FRSKD", "MI+SI", "MI×SI"]
    assert [suite.protocol_of(r) for r in suite.rows] == ["self", "cs_kd", "one", "ddgsd", "self", "frskd", "self",
                                                           "self"]
    assert suite.layout == "methods-columns" and suite.backbones == ("resnet18", "densenet121") and suite.seeds == 3
    cfgs = suites.configs(bench, suite)
    assert {c.recipe for c in cfgs} == {cfgs[0].recipe}  # only the method changes
    smoke = suites.load(bench, "table2-smoke")
    assert [(r.label, smoke.protocol_of(r)) for r in smoke.rows] == [(r.label, suite.protocol_of(r))
                                                                     for r in suite.rows]


def test_a_row_under_a_protocol_of_another_family_is_refused(bench, tmp_path):
    project = tmp_path / "bench.toml"
    project.write_text('[suites.mixed]\nprotocol = "online"\ndatasets = ["fashion-mnist"]\nbackbones = ["tinynet"]\n'
                       'partners = ["tinynet"]\nseeds = 1\nbudget = "zoo"\n'
                       'rows = [{ loss = "cs_kd", protocol = "cs_kd" }]\n')
    with pytest.raises(DiscbenchError, match="protocol 'cs_kd' does not join the 'online' tables; protocols that do: "
                                             "online"):
        suites.load(Bench.load(project), "mixed")
