"""``discbench validate --loss NAME``: one line per contract check, a summary, and exit status 0 / 1 / 2."""

from __future__ import annotations

import pytest
import torch

from discbench.api import Discrepancy, LossOutput, Tap
from discbench.contract import cases
from discbench.registry import LOSSES
from tests.test_cli import discbench


def check_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(("PASS ", "FAIL "))]


def test_a_builtin_passes(capsys, monkeypatch):
    status, out, err = discbench(capsys, monkeypatch, "validate", "--loss", "l2")
    assert status == 0, err
    lines = check_lines(out)
    n_checks = 3 * len(cases(LOSSES.get("l2")))  # finite scalar, gradients, deterministic per shape case
    assert len(lines) == n_checks and all(line.startswith("PASS ") for line in lines)
    assert any("gradients [exit (same shape)]" in line and "target detached" in line for line in lines)
    assert out.splitlines()[0].startswith("l2 v1 (built-in (discbench.losses.l2)): tap 'exit'")
    assert out.strip().splitlines()[-1] == f"l2: {n_checks}/{n_checks} checks passed"


class LeakyHead(Discrepancy):
    """A broken plugin: its head never gets a gradient and it leaks gradient into a target it claims to detach."""

    name = "leaky_head_for_tests"
    tap = Tap.LOGITS
    detaches_target = True

    def __init__(self, source, target):
        super().__init__(source, target)
        self.unused = torch.nn.Linear(3, 3)

    def forward(self, source, target, ctx):
        return LossOutput((source.mean() - target.mean()) ** 2)


@pytest.fixture
def leaky_plugin():
    LOSSES.add(LeakyHead.name, LeakyHead, origin="test fixture")
    yield LeakyHead.name
    LOSSES.unregister(LeakyHead.name)


def test_a_broken_plugin_fails_with_exit_1(capsys, monkeypatch, leaky_plugin):
    status, out, _ = discbench(capsys, monkeypatch, "validate", "--loss", leaky_plugin)
    assert status == 1
    lines = check_lines(out)
    assert [line.split()[0] for line in lines] == ["PASS", "FAIL", "PASS"]  # finite, gradients, deterministic
    assert "parameters without gradient: unused.weight, unused.bias" in lines[1]
    assert out.strip().splitlines()[-1] == f"{leaky_plugin}: 2/3 checks passed, 1 failed"


def test_unknown_loss_is_exit_2(capsys, monkeypatch):
    status, out, err = discbench(capsys, monkeypatch, "validate", "--loss", "mi_si")
    assert status == 2 and not check_lines(out)
    assert err.strip().splitlines()[-1].startswith("error: unknown loss 'mi_si'; did you mean 'mi_x_si'")
