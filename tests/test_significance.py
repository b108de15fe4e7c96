"""Significance (Welch), cost by device and ranks across protocols in the rendered leaderboard."""

from __future__ import annotations

import dataclasses
import math
import statistics

import pytest

from discbench.leaderboard import across_protocols, cost_frame, records_frame, render
from discbench.stats import kendall, welch
from tests.test_leaderboard import record


def welch_by_hand(a, b, confidence=0.95):
    """Welch's interval from its definition: standard error sqrt(s_a²/n_a + s_b²/n_b), Welch-Satterthwaite degrees
    of freedom, Student's t quantile (scipy.stats.t.ppf: a different function from the ttest_ind under test)."""
    from scipy.stats import t

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    d = statistics.mean(a) - statistics.mean(b)
    q = t.ppf(0.5 + confidence / 2, df)
    return d, d - q * se, d + q * se


@pytest.mark.parametrize("a, b", [([81.2, 80.9, 81.5], [80.1, 80.6, 80.4]), ([70.0, 72.0, 71.0, 75.0], [69.0, 69.5]),
                                  ([1.0, 2.0, 3.0], [1.5, 2.5, 3.5, 4.5, 5.5])])
def test_welch_interval_matches_its_definition(a, b):
    res = welch(a, b)
    d, lo, hi = welch_by_hand(a, b)
    assert (res.diff, res.low, res.high) == pytest.approx((d, lo, hi), rel=1e-9)
    assert res.significant == (lo > 0 or hi < 0)


def test_welch_golden_value():
    """Golden value (reviewed): difference 0.8333, standard error 0.2261, 3.88 Welch-Satterthwaite degrees of freedom,
    interval [0.1981, 1.4686]; its t quantile (half-width / se = 2.810) lies between the printed tables' two-sided
    95 % values for 4 and 3 degrees of freedom (2.776 and 3.182)."""
    res = welch([81.2, 80.9, 81.5], [80.1, 80.6, 80.4])
    assert (res.diff, res.low, res.high) == pytest.approx((0.83333, 0.19808, 1.46858), abs=1e-5)
    q = (res.high - res.diff) / 0.2260777
    assert 2.776 < q < 3.182 and res.significant


def test_welch_without_interval():
    assert welch([70.0], [60.0, 61.0]).short() == "Δ +9.50 (no CI: n<2)"
    assert welch([70.0, 70.0], [60.0, 60.0]).short() == "Δ +10.00 (no CI: no variance)"


def test_kendall_identical_and_reversed():
    assert kendall([1, 2, 3, 4], [10, 20, 30, 40])[0] == pytest.approx(1.0)
    assert kendall([1, 2, 3, 4], [4, 3, 2, 1])[0] == pytest.approx(-1.0)
    assert math.isnan(kendall([1], [2])[0])


def runs(label, values, loss="x", hash_=None, seed_from=0, **kw):
    return [record(label, s, {4: v}, loss=loss, hash_=hash_ or (label[0] * 16), **kw)
            for s, v in enumerate(values, start=seed_from)]


def table6(text):
    return text.split("Last module")[1].split("### Cost")[0]


def test_cells_carry_delta_to_the_baseline_with_marks_legend_and_runner_up():
    recs = runs("none", [70.0, 70.2, 69.8], loss="", hash_="0" * 16)
    recs += runs("big", [80.0, 80.3, 79.7], hash_="1" * 16)  # far above: significant
    recs += runs("near", [70.1, 70.9, 69.2], hash_="2" * 16)  # within noise
    text = table6(render(recs))
    big = next(line for line in text.splitlines() if line.startswith("| big"))
    d = welch([80.0, 80.3, 79.7], [70.0, 70.2, 69.8])
    assert f"Δ +10.00 [{d.low:+.2f}, {d.high:+.2f}]†" in big and "(n=3)" in big
    near = next(line for line in text.splitlines() if line.startswith("| near"))
    assert "Δ +0.07 [" in near and "†" not in near
    none = next(line for line in text.splitlines() if line.startswith("| none"))
    assert "70.00 ± 0.20 (n=3)" in none and "Δ" not in none
    assert "baseline row `none`" in text and "Welch" in text
    assert "best `big` vs runner-up `near`" in text and "is significantly better than the runner-up" in text


def test_a_best_row_within_noise_of_the_runner_up_is_said_so():
    recs = runs("none", [70.0, 71.0, 69.0], loss="", hash_="0" * 16) + runs("a", [70.5, 71.5, 69.0], hash_="1" * 16)
    text = table6(render(recs))
    assert "best `a` vs runner-up `none`" in text and "**not significantly better than the runner-up**" in text


def test_per_module_cells_are_compared_with_the_baseline_column():
    recs = runs("none", [70.0, 70.2, 69.8], loss="", hash_="0" * 16)
    recs += [record("mi", s, {1: 60.0 + s, 4: 71.0 + s}, loss="mi", hash_="1" * 16) for s in range(3)]
    text = render(recs).split("Per module")[1].split("Last module")[0]
    d1 = welch([60.0, 61.0, 62.0], [70.0, 70.2, 69.8])
    assert d1.short() in text and "Baseline column" in text


def with_hw(rec, device, model="Intel Xeon X", threads=2, steps_per_second=2.0, peak=None):
    hw = {"device": device, "cpu_model": model, "cpu_vector_extensions": ["avx2"], "torch_threads": threads,
          "gpu_name": "NVIDIA H100" if device.startswith("cuda") else None, "gpu_driver": "550", "cuda": "12.4"}
    cost = dict(rec.cost, peak_memory=peak) if peak else rec.cost
    return dataclasses.replace(rec, hardware=hw, timing=dict(rec.timing, steps_per_second=steps_per_second),
                               cost=cost)


def test_step_time_is_relative_to_the_baseline_on_the_same_device_only():
    recs = [with_hw(r, "cpu", steps_per_second=10.0) for r in runs("none", [70, 71], loss="", hash_="0" * 16)]
    recs += [with_hw(r, "cpu", steps_per_second=4.0, peak={"kind": "cpu_process_peak_rss", "bytes": 300 * 2**20})
             for r in runs("mi", [72, 73], hash_="1" * 16)]
    recs += [with_hw(r, "cuda:0", steps_per_second=100.0) for r in runs("mi", [72, 73], hash_="1" * 16, seed_from=2)]
    costs = cost_frame(records_frame(recs)).set_index(["label", "device"])
    cpu = next(k for k in costs.index if k[0] == "mi" and "Xeon" in k[1])
    gpu = next(k for k in costs.index if k[0] == "mi" and "H100" in k[1])
    assert costs.loc[cpu, "relative"] == pytest.approx(10.0 / 4.0)  # 250 ms vs 100 ms per step
    assert costs.loc[cpu, "peak"] == "300 MiB (CPU process peak RSS)"
    assert costs.loc[gpu, "relative"] is None or math.isnan(costs.loc[gpu, "relative"])  # no none on the GPU
    text = render(recs).split("### Cost")[1]
    assert "×2.50" in text and "— (no baseline on this device)" in text and "not recorded" in text
    assert "Intel Xeon X (avx2), 2 threads" in text and "NVIDIA H100 (driver 550, CUDA 12.4)" in text


def test_ranks_across_protocols_and_kendall_tau():
    recs = []
    means = {"self": {"a": 80, "b": 75, "c": 70}, "online": {"a": 60, "b": 65, "c": 70}}
    for protocol, table in means.items():
        partner = None if protocol == "self" else "resnet18"
        networks = ("net",) if protocol == "self" else ("net1", "net2")
        for i, (label, value) in enumerate(table.items()):
            top1 = {4: value} if protocol == "self" else {"net1": value, "net2": value}
            recs += [record(label, s, top1, hash_=f"{protocol[0]}{i}" * 8, protocol=protocol, partner=partner,
                            networks=networks) for s in range(2)]
    text = across_protocols(records_frame(recs))
    assert "| a        | 1 (80.00)" in text and "3 (60.00)" in text
    assert "τ = -1.00" in text and "over 3 methods run under both" in text
    assert "No records under `offline`" in text
    only_self = across_protocols(records_frame([r for r in recs if r.protocol == "self"]))
    assert "Only protocol `self` has records here" in only_self and "`online` or `offline`" in only_self
