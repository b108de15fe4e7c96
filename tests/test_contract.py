"""The plugin contract, parametrized over every registered loss (third-party ones included)."""

from __future__ import annotations

import pytest

from discbench.contract import CHECKS, cases
from discbench.registry import LOSSES


def params():
    for name in LOSSES.names():
        cls = LOSSES.get(name)
        for case in cases(cls):
            for check in CHECKS:
                yield pytest.param(name, case, check, id=f"{name}-{check}-{case.name}")


@pytest.mark.parametrize("name,case,check", list(params()))
def test_contract(name, case, check):
    CHECKS[check](LOSSES.get(name), case)


def test_a_broken_plugin_fails_the_contract():
    """The suite can fail: a plugin whose head gets no gradient and that leaks gradient into its target."""
    from discbench.contract import run_checks
    from tests.test_validate import LeakyHead

    results = {r.check.split(" [")[0]: r for r in run_checks(LeakyHead)}
    assert results["finite scalar"].passed and results["deterministic"].passed
    assert not results["gradients"].passed and "unused.weight" in results["gradients"].detail
