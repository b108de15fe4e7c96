"""The README's plugin example is real code: it registers, passes the contract and trains its head."""

from __future__ import annotations

import re

from discbench.contract import run_checks
from discbench.registry import LOSSES
from tests.conftest import REPO


def test_readme_plugin_example_passes_the_contract():
    text = (REPO / "README.md").read_text().split("## Writing a loss plugin", 1)[1]
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {"__name__": "readme_example"}
    try:
        exec(compile(code, "README.md", "exec"), namespace)
        cls = LOSSES.get("cosine_hint")
        results = list(run_checks(cls))
        assert results and all(r.passed for r in results), [r for r in results if not r.passed]
        assert cls.hparams() == {"eps": 1e-8}
    finally:
        LOSSES.unregister("cosine_hint")
