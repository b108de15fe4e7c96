"""This package's own tests: discbench's contract suite on its loss, its registration, and a closed form.

Run them in the plugin's CI next to ``discbench validate --loss cosine_hint`` (see ci.sh)."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import torch
from discbench_plugin_example import CosineHint

from discbench.api import FeatureSpec
from discbench.contract import context, run_checks


def test_contract_suite():
    results = list(run_checks(CosineHint))
    assert results and all(r.passed for r in results), [r for r in results if not r.passed]


def test_entry_point_is_the_class_under_its_own_name():
    (ep,) = [ep for ep in entry_points(group="discbench.losses") if ep.name == CosineHint.name]
    assert ep.load() is CosineHint


def test_a_scaled_copy_scores_zero_and_the_negation_two():
    loss = CosineHint(FeatureSpec(4, 1), FeatureSpec(4, 1))
    with torch.no_grad():
        loss.regressor.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
    ctx = context(torch.Generator().manual_seed(0))
    x = torch.randn(2, 4, 3, 3)
    assert loss(x, 2.0 * x, ctx).loss.item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x, -x, ctx).loss.item() == pytest.approx(2.0, abs=1e-6)
