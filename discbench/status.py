"""``discbench status``: where every (configuration, seed) of a suite stands, read from the results directory.

done (a record of the configuration's request hash and the seed exists), running (a live claim: where and since
when), failed (the failure record's one-line reason; the next run or sweep retries it) or pending (nothing yet, a
checkpoint to resume from, or a stale claim that the next run takes over). Reads files only: no torch, no training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from discbench.claims import describe, read_json, stale_reason
from discbench.records import collect, seed_files


@dataclass(frozen=True)
class SeedStatus:
    label: str
    backbone: str
    dataset: str
    seed: int
    state: str  # done | running | failed | pending
    detail: str = ""


def _recorded(results_dir: Path) -> set[tuple[str, int]]:
    """(request hash, seed) of every valid record under ``results_dir`` (``discbench.records.collect``)."""
    if not results_dir.is_dir():
        return set()
    return {(r.request_hash, r.seed) for r in collect([results_dir]).records}


def suite_status(runs, results_dir: Path, stale_after: float) -> list[SeedStatus]:
    """Where every (configuration, seed) of a suite's ``runs`` (``discbench.suites.runs``) stands."""
    recorded = _recorded(Path(results_dir))
    now = time.time()
    rows = []
    for run in runs:
        cfg = run.cfg
        for seed in run.seeds:
            files = seed_files(results_dir, cfg, seed)
            base = (cfg.label, cfg.backbone, cfg.dataset.name, seed)
            if (cfg.request_hash, seed) in recorded:
                rows.append(SeedStatus(*base, "done"))
                continue
            claim = read_json(files.claim)
            if claim is not None:
                reason = stale_reason(claim, stale_after, now)
                if reason is None:
                    rows.append(SeedStatus(*base, "running", f"on {describe(claim, now)}"))
                    continue
            failure = read_json(files.failed)
            if failure:
                where = f" (on {failure.get('host')}, {failure.get('time')})" if failure.get("host") else ""
                rows.append(SeedStatus(*base, "failed", f"{failure.get('reason', '?')}{where}"))
                continue
            details = []
            if claim is not None:
                details.append(f"stale claim, {reason}")
            if files.checkpoint.exists():
                saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(files.checkpoint.stat().st_mtime))
                details.append(f"resumes from the checkpoint of {saved}")
            rows.append(SeedStatus(*base, "pending", "; ".join(details)))
    return rows
