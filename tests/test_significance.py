"""Significance (Welch), cost by device and ranks across protocols in the rendered leaderboard."""

from __future__ import annotations

import dataclasses
import math
import statistics

import pytest

from discbench.reporting import frame, tables
from discbench.reporting.markdown import across_protocols, render
from discbench.reporting.stats import detectable, kendall, paired, pooled_std, seeds_for, welch
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
    costs = {(r.label, r.device): r for r in tables.costs(frame.frame(recs)).rows}
    cpu = next(k for k in costs if k[0] == "mi" and "Xeon" in k[1])
    gpu = next(k for k in costs if k[0] == "mi" and "H100" in k[1])
    assert costs[cpu].relative == pytest.approx(10.0 / 4.0)  # 250 ms vs 100 ms per step
    assert costs[cpu].peak_text() == "300 MiB (CPU process peak RSS)"
    assert costs[gpu].relative is None  # no none on the GPU
    # CPU and GPU records are two environments: one table holds both only when mixing is asked for
    text = render(recs, mix=True).split("### Cost")[1]
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
    text = across_protocols(frame.frame(recs))
    assert "| a        | 1 (80.00)" in text and "3 (60.00)" in text
    assert "τ = -1.00" in text and "over 3 methods run under both" in text
    assert "No records under `offline`" in text
    only_self = across_protocols(frame.frame([r for r in recs if r.protocol == "self"]))
    assert "Only protocol `self` has records here" in only_self and "`online` or `offline`" in only_self


# -- paired differences, pooled sigma, detectable differences and seeds needed ----------------------------------------
def paired_by_hand(a, b, confidence=0.95):
    """The paired interval from its definition: the per-seed differences' mean ± t(n-1) quantile x their standard
    error (scipy.stats.t.ppf, not the ttest_rel under test)."""
    from scipy.stats import t

    diffs = [x - y for x, y in zip(a, b, strict=True)]
    d, se = statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
    q = t.ppf(0.5 + confidence / 2, len(diffs) - 1)
    return d, d - q * se, d + q * se


@pytest.mark.parametrize("a, b", [([81.2, 80.9, 81.5], [80.1, 80.6, 80.4]), ([70.0, 72.0, 71.0, 75.0],
                                                                            [69.0, 71.5, 70.8, 73.9])])
def test_paired_interval_matches_its_definition_and_ttest_rel(a, b):
    from scipy.stats import ttest_rel

    res = paired(a, b)
    d, lo, hi = paired_by_hand(a, b)
    assert (res.diff, res.low, res.high) == pytest.approx((d, lo, hi), rel=1e-9)
    ci = ttest_rel(a, b).confidence_interval(0.95)
    assert (res.low, res.high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert res.significant == (lo > 0 or hi < 0)


def test_paired_interval_is_narrower_than_welch_when_seeds_move_together():
    a, b = [70.0, 72.0, 71.0, 75.0], [69.0, 71.5, 70.8, 73.9]  # seed k of both rows high or low together
    p, w = paired(a, b), welch(a, b)
    assert p.diff == pytest.approx(w.diff) and p.high - p.low < (w.high - w.low) / 5
    assert p.significant and not w.significant


def test_paired_edge_cases():
    assert math.isnan(paired([70.0], [69.0]).low)  # one pair: no interval
    same = paired([70.0, 71.0], [69.0, 70.0])  # the same difference on every seed: no spread, no interval
    assert same.diff == pytest.approx(1.0) and not same.has_interval
    with pytest.raises(ValueError, match="different lengths"):
        paired([1.0, 2.0], [1.0])


def test_pooled_std_by_hand():
    groups = [[70.0, 71.0, 72.5], [60.0, 60.4], [80.0]]  # the one-seed group adds nothing
    ss = 2 * statistics.variance(groups[0]) + 1 * statistics.variance(groups[1])
    sigma, dof = pooled_std(groups)
    assert dof == 3 and sigma == pytest.approx(math.sqrt(ss / 3), rel=1e-12)
    assert pooled_std([[1.0], [2.0]]) == (pytest.approx(math.nan, nan_ok=True), 0)


def t_power(diff, sigma, n, alpha=0.05):
    """Power of the two-sided two-sample t-test (n per group, equal variances) from the noncentral t distribution
    (scipy.stats.nct), independent of statsmodels."""
    from scipy.stats import nct, t

    df = 2 * n - 2
    nc = diff / (sigma * math.sqrt(2.0 / n))
    crit = t.ppf(1 - alpha / 2, df)
    return nct.sf(crit, df, nc) + nct.cdf(-crit, df, nc)


NORMAL = 2.8015851  # z(0.975) + z(0.8) = 1.959964 + 0.841621


@pytest.mark.parametrize("sigma, n", [(0.5, 3), (1.2, 5), (0.8, 10)])
def test_detectable_difference_has_80_percent_power(sigma, n):
    d = detectable(sigma, n)
    assert t_power(d, sigma, n) == pytest.approx(0.8, abs=1e-4)
    # the normal approximation (z quantiles, closed form) is a lower bound that the t-test's small n exceeds
    assert d > NORMAL * sigma * math.sqrt(2.0 / n)


def test_detectable_difference_tends_to_the_normal_approximation():
    sigma, n = 0.7, 400
    assert detectable(sigma, n) == pytest.approx(NORMAL * sigma * math.sqrt(2.0 / n), rel=2e-3)
    assert math.isnan(detectable(0.7, 1)) and math.isnan(detectable(math.nan, 5)) and math.isnan(detectable(0.0, 5))


@pytest.mark.parametrize("diff, sigma", [(0.5, 0.3), (0.5, 0.6), (1.0, 1.5), (0.1, 0.4)])
def test_seeds_for_is_the_smallest_n_with_80_percent_power(diff, sigma):
    n = seeds_for(diff, sigma)
    assert n == int(n) and n >= 2
    assert t_power(diff, sigma, int(n)) >= 0.8 - 1e-9
    if n > 2:
        assert t_power(diff, sigma, int(n) - 1) < 0.8
    # within two seeds of the normal approximation's closed form 2 (z_a + z_b)^2 sigma^2 / diff^2
    assert abs(n - 2 * NORMAL**2 * sigma**2 / diff**2) <= 2.0 or n == 2
    assert seeds_for(0.5, 0.0) == 2 and math.isnan(seeds_for(0.5, math.nan))


def test_power_line_of_a_table_from_its_pooled_sigma():
    none, mi = [70.0, 70.6, 69.5], [71.0, 72.1, 71.4]
    recs = runs("none", none, loss="", hash_="0" * 16) + runs("mi", mi, hash_="1" * 16)
    text = table6(render(recs))
    sigma = math.sqrt((2 * statistics.variance(none) + 2 * statistics.variance(mi)) / 4)
    d = detectable(sigma, 3)
    assert t_power(d, sigma, 3) == pytest.approx(0.8, abs=1e-4)
    assert (f"Power: seed σ pooled over the cells {sigma:.2f} pp (4 degrees of freedom); at n = 3 seeds per row a "
            f"difference of {d:.2f} pp is detected with 80 % power") in text
    assert f"a 0.5 pp difference needs {seeds_for(0.5, sigma):.0f} seeds per row" in text


def fingerprinted(rec, init):
    """``rec`` with the fingerprints of a run whose network started from ``init`` and whose first epoch's order is
    the seed's."""
    return dataclasses.replace(rec, fingerprints={"init": {"net": init}, "data": f"order{rec.seed}"})


def test_paired_delta_only_where_the_fingerprints_prove_pairing():
    none, mi = [70.0, 70.9, 69.6], [70.6, 71.3, 70.3]
    base = [fingerprinted(r, f"w{r.seed}") for r in runs("none", none, loss="", hash_="0" * 16)]
    paired_runs = [fingerprinted(r, f"w{r.seed}") for r in runs("mi", mi, hash_="1" * 16)]
    row = next(line for line in table6(render(base + paired_runs)).splitlines() if line.startswith("| mi "))
    _, lo, hi = paired_by_hand(mi, none)
    assert f"· paired [{lo:+.2f}, {hi:+.2f}]" in row and welch(mi, none).short() in row
    assert "Paired intervals: 1 of 1 Δ cells" in render(base + paired_runs)
    other_start = [fingerprinted(r, f"v{r.seed}") for r in runs("mi", mi, hash_="1" * 16)]  # other initial weights
    for recs in (base + other_start, runs("none", none, loss="", hash_="0" * 16) + runs("mi", mi, hash_="1" * 16)):
        row = next(line for line in table6(render(recs)).splitlines() if line.startswith("| mi "))
        assert "paired" not in row and welch(mi, none).short() in row
