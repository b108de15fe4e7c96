"""The protocol contract (``discbench validate --protocol``), parametrized over the protocol registry: every protocol
builds, declares its classifiers truthfully, steps to a finite loss, trains every parameter it holds, repeats under a
seed and counts its cost, with each method defined for it that runs no plugin. And the checks catch what they
claim to catch."""

from __future__ import annotations

import pytest
import torch

from discbench.protocol_check import CHECKS, protocol_cases, run_protocol_checks
from discbench.registry import PROTOCOLS


@pytest.mark.parametrize("protocol", PROTOCOLS.names())
def test_every_protocol_keeps_the_contract(bench, protocol):
    cases = protocol_cases(bench, protocol)
    assert cases, f"protocol '{protocol}' has no plugin-free method in bench.toml to check it with"
    results = list(run_protocol_checks(cases))
    failed = [f"{r.check}: {r.detail}" for r in results if not r.passed]
    assert not failed, failed
    assert len(results) == len(CHECKS) * len(cases)


def test_a_parameter_that_never_trains_fails_the_gradient_check(bench, monkeypatch):
    cls = PROTOCOLS.get("self")
    build = cls.__init__

    def with_dead_weight(self, cfg, teacher=None):
        build(self, cfg, teacher)
        self.unused = torch.nn.Linear(3, 3)

    monkeypatch.setattr(cls, "__init__", with_dead_weight)
    results = {r.check.split(" [")[0]: r for r in run_protocol_checks(protocol_cases(bench, "self")[:1])}
    assert not results["gradients"].passed and "unused.weight" in results["gradients"].detail
    assert results["step"].passed


def test_predict_that_disagrees_with_the_declared_classifiers_fails(bench, monkeypatch):
    cls = PROTOCOLS.get("self")
    predict = cls.predict
    monkeypatch.setattr(cls, "predict",
                        lambda self, x: {**predict(self, x), "net/exit9": predict(self, x)["net/exit4"]})
    results = {r.check.split(" [")[0]: r for r in run_protocol_checks(protocol_cases(bench, "self")[:1])}
    assert not results["classifiers"].passed and "net/exit9" in results["classifiers"].detail
