"""TOML out: ``discbench config show`` prints configurations as TOML, and ``config init`` writes a starting file.

``dumps`` writes the subset of TOML that bench.toml uses (tables, arrays, strings, numbers, booleans); reading the
result with ``tomllib`` gives the same data back (a test checks it on the whole default configuration).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    if value is None:
        return '""'  # TOML has no null; none of bench.toml's values is one
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _tables_in_array(value: Any) -> bool:
    return isinstance(value, list | tuple) and value and all(_is_table(v) for v in value)


def dumps(data: Mapping[str, Any], prefix: str = "") -> str:
    """``data`` as TOML: plain keys first, then one ``[table]`` per nested table (arrays of tables inline)."""
    lines = []
    for key, value in data.items():
        if not _is_table(value):
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in data.items():
        if _is_table(value):
            name = f"{prefix}.{_key(key)}" if prefix else _key(key)
            body = dumps(value, name)
            if any(not _is_table(v) for v in value.values()) or not value:
                lines += ["", f"[{name}]"]
            lines += [body] if body else []
    return "\n".join(lines).strip("\n")


STARTER = '''# A project configuration for discbench. Everything set here is laid over discbench's defaults (datasets,
# recipes, protocols, methods and suites shipped with the package), table by table and key by key: set only what you
# change.
# `discbench config show` prints the merged configuration; `discbench config show --loss mi_x_si ...` one resolved
# run. discbench finds this file as ./bench.toml, through $DISCBENCH_CONFIG, or with --config PATH.

# A recipe of your own (or change one of the defaults: [recipes.smoke] epochs = 4).
[recipes.mine]
epochs = 30
batch_size = 64
lr = 0.05
momentum = 0.9
nesterov = false
weight_decay = 5e-4
milestones = [20, 25]
gamma = 0.1
train_subset = 0       # 0: the whole training split
test_subset = 0
eval_every = 5
eval_batch_size = 500

# Your own dataset, as one folder per class (`discbench dataset stats DIR` prints its mean and std):
# [datasets.my-data]
# layout = "imagefolder-resident"   # decoded once and held in memory; "imagefolder" streams it from disk
# channels = 3
# image_size = 64
# num_classes = 10
# mean = [0.5, 0.5, 0.5]
# std = [0.25, 0.25, 0.25]
# crop_padding = 4
# flip = true

# A method's weight (the feature term's beta, or a plugin hyper-parameter):
# [methods.mi_x_si]
# loss.beta = 0.05

# A suite: rows x backbones x datasets under one protocol (`discbench sweep --suite mine`).
[suites.mine]
protocol = "self"
datasets = ["fashion-mnist"]
backbones = ["smallnet"]
seeds = 3
budget = "mine"
rows = [
    { loss = "none", label = "Baseline" },
    { loss = "l2", label = "BYOT" },
    { loss = "mi_x_si", label = "MI×SI" },
]
'''
