"""The generic registry: decorators, duplicates, did-you-mean, lazy entry points."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from discbench.errors import DiscbenchError
from discbench.registry import BACKBONES, DATASETS, LOSSES, PROTOCOLS, Registry


def test_builtins_are_registered():
    assert {"l2", "mi", "si", "mi_plus_si", "mi_x_si", "kd"} <= set(LOSSES.names())
    assert {"resnet18", "resnet34", "resnet50", "smallnet"} <= set(BACKBONES.names())
    assert {"idx", "cifar-pickle", "imagefolder", "imagefolder-resident"} <= set(DATASETS.names())
    assert "self" in PROTOCOLS.names()
    assert LOSSES.origins()["mi_x_si"] == "built-in (discbench.losses.muse)"


def test_duplicates_raise():
    reg = Registry("widget")

    @reg.register("a")
    class A:
        pass

    with pytest.raises(DiscbenchError, match="duplicate widget name 'a'"):
        reg.register("a")(type("B", (), {}))


def test_name_attribute_must_match():
    reg = Registry("widget")
    with pytest.raises(TypeError, match="its 'name' attribute says 'b'"):
        reg.register("a")(type("B", (), {"name": "b"}))


def test_unknown_name_suggests():
    reg = Registry("widget")
    for name in ("alpha", "beta", "gamma"):
        reg.register(name)(type(name, (), {}))
    with pytest.raises(DiscbenchError, match=r"unknown widget 'alpah'; did you mean 'alpha'\? valid: alpha, beta"):
        reg.get("alpah")
    with pytest.raises(DiscbenchError, match=r"unknown widget 'zzz' valid: alpha, beta, gamma"):
        reg.get("zzz")


class _FakeDist:
    name = "fake-dist"


def test_entry_points_load_lazily(monkeypatch):
    loaded = []

    class Lazy:
        name = "lazy_loss"  # an entry point's class must carry its entry point's name

    ep = EntryPoint(name="lazy_loss", value="somewhere:Lazy", group="test.group")
    monkeypatch.setattr(EntryPoint, "dist", _FakeDist(), raising=False)
    monkeypatch.setattr(EntryPoint, "load", lambda self: loaded.append(self.name) or Lazy)
    monkeypatch.setattr("discbench.registry.entry_points", lambda group: [ep] if group == "test.group" else [])
    reg = Registry("loss", entry_point_group="test.group")
    assert reg.names() == ["lazy_loss"] and loaded == []  # listed without importing
    assert "fake-dist" in reg.origins()["lazy_loss"]
    assert reg.get("lazy_loss") is Lazy and loaded == ["lazy_loss"]
    assert Lazy.name == "lazy_loss"


def test_entry_point_clashing_with_builtin_is_skipped_with_a_warning(monkeypatch, capsys):
    ep = EntryPoint(name="dup", value="x:y", group="test.group")
    monkeypatch.setattr(EntryPoint, "dist", _FakeDist(), raising=False)
    monkeypatch.setattr("discbench.registry.entry_points", lambda group: [ep])
    reg = Registry("loss", entry_point_group="test.group")
    D = reg.register("dup")(type("D", (), {}))
    assert reg.names() == ["dup"] and reg.get("dup") is D  # the built-in is kept
    (warning,) = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith("warning: loss 'dup' of package fake-dist (entry point 'dup = x:y') is skipped")
    assert "rename that entry point in fake-dist's" in warning and reg.warnings == [warning.removeprefix("warning: ")]
