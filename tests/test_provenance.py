"""Run records name the package that provided their loss; leaderboards keep plugin versions apart; records written
before those keys existed still load and render the same."""

from __future__ import annotations

import dataclasses
import json

from discbench.records import RunRecord
from discbench.reporting.frame import plugin_source
from discbench.reporting.markdown import render
from tests.conftest import REPO
from tests.test_leaderboard import record


def from_plugin(seed, top1, version, hash_="a" * 16):
    r = record("cosine_hint", seed, {1: 50.0, 4: top1}, loss="cosine_hint", hash_=hash_)
    return dataclasses.replace(r, loss={"name": "cosine_hint", "version": 1, "distribution": "my-plugins",
                                        "distribution_version": version, "entry_point": "my_plugins:CosineHint"})


def test_two_versions_of_a_plugin_package_are_two_rows():
    recs = [from_plugin(0, 60.0, "0.1.0"), from_plugin(0, 70.0, "0.2.0")]
    text = render(recs)
    assert "cosine_hint (aaaaaa, my-plugins 0.1.0)" in text and "cosine_hint (aaaaaa, my-plugins 0.2.0)" in text
    assert "65.00" not in text


def test_one_version_is_one_row_with_its_plain_label():
    text = render([from_plugin(s, 60.0 + s, "0.1.0") for s in range(2)])
    assert "| cosine_hint " in text and "my-plugins" not in text and "(n=2)" in text


def test_builtins_and_old_records_are_not_split_by_discbench_version():
    old = record("l2", 0, {1: 1.0, 4: 50.0}, loss="l2")  # {"name", "version"} only, as before
    new = dataclasses.replace(record("l2", 1, {1: 1.0, 4: 52.0}, loss="l2"),
                              loss={"name": "l2", "version": 1, "distribution": "discbench",
                                    "distribution_version": "9.9", "entry_point": "discbench.losses.l2:L2"})
    assert plugin_source(old.loss) == plugin_source(new.loss) == ""
    assert "51.00 ± 1.41 (n=2)" in render([old, new])


def test_a_published_record_without_the_new_keys_loads_and_round_trips():
    path = next(iter(sorted((REPO / "results" / "runs").rglob("*.json"))))
    data = json.loads(path.read_text())
    loaded = RunRecord.from_dict(data, str(path))
    assert loaded.loss["name"] == data["loss"]["name"]
    assert RunRecord.from_dict(json.loads(json.dumps(loaded.to_dict()))) == loaded
