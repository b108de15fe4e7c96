"""Golden values (tests/golden/losses.json): stored values are reproduced, every built-in loss has them, and the
stored values themselves agree with computations written independently of the plugins (by hand, float64)."""

from __future__ import annotations

import math

import pytest
import torch

from discbench.contract import Case, build, cases, sample
from discbench.registry import LOSSES
from tests.golden_values import ATOL, RTOL, builtin_names, compute, load, update_command

STORED = load()


def stored_entries():
    for name, versions in sorted(STORED.items()):
        for version, values in sorted(versions.items()):
            yield pytest.param(name, version, values, id=f"{name}-v{version}")


@pytest.mark.parametrize("name,version,values", list(stored_entries()))
def test_stored_values_are_reproduced(name, version, values):
    assert name in LOSSES, f"golden values for '{name}', which is not a registered loss: remove its entry"
    current = LOSSES.get(name).version
    assert str(current) == version, (
        f"'{name}' is now version {current} but its golden values are for v{version}: check the new values "
        f"independently, then `{update_command(name)}` (replaces the v{version} entry)")
    now = compute(name)
    assert set(now) == set(values), f"shape cases changed: stored {sorted(values)}, now {sorted(now)}"
    for case, value in values.items():
        assert math.isclose(now[case], value, rel_tol=RTOL, abs_tol=ATOL), (
            f"{name} v{version} [{case}]: stored {value!r}, computed {now[case]!r}. If the change is intended, "
            f"bump the plugin's version, review the new value and `{update_command(name)}`")


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_loss_has_golden_values(name):
    version = str(LOSSES.get(name).version)
    entry = STORED.get(name, {}).get(version)
    assert entry is not None, (
        f"no golden values for '{name}' v{version}. Run `{update_command(name)}` from the repository root, check "
        f"the printed values against an independent computation (a closed form, a hand-written formula: see "
        f"tests/test_golden.py), then commit tests/golden/losses.json")
    missing = [c.name for c in cases(LOSSES.get(name)) if c.name not in entry]
    assert not missing, f"'{name}' v{version} lacks golden values for {missing}: `{update_command(name)}`"


# -- the stored values against independent computations ----------------------------------------------------------
def inputs(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs ``discbench.contract.forward`` feeds under seed 0, in float64."""
    gen = torch.Generator().manual_seed(0)
    source = sample(case.source, gen)
    target = sample(case.target, gen)
    return source.double(), target.double()


def golden(name: str) -> dict[str, float]:
    version = str(LOSSES.get(name).version)
    if version not in STORED.get(name, {}):
        pytest.skip(f"no golden values for {name} v{version} yet")
    return STORED[name][version]


def test_l2_golden_by_hand():
    """|| mean_hw(source) - mean_hw(target) ||^2 summed over channels, averaged over the batch."""
    for case in cases(LOSSES.get("l2")):
        s, t = inputs(case)
        b, c = s.shape[:2]
        total = 0.0
        for i in range(b):
            for k in range(c):
                d = s[i, k].sum().item() / s[i, k].numel() - t[i, k].sum().item() / t[i, k].numel()
                total += d * d
        assert golden("l2")[case.name] == pytest.approx(total / b, rel=1e-5)


def log_softmax_by_hand(z: torch.Tensor) -> torch.Tensor:
    m = z.max(dim=1, keepdim=True).values
    return z - m - (z - m).exp().sum(dim=1, keepdim=True).log()


def test_kd_golden_by_hand():
    """T^2 * mean_b sum_k p_t (log p_t - log p_s) at T = 4 (Hinton et al. 2015, §2), the default of ``kd``."""
    temperature = LOSSES.get("kd").hparams()["temperature"]
    assert temperature == 4.0
    for case in cases(LOSSES.get("kd")):
        s, t = inputs(case)
        log_ps, log_pt = log_softmax_by_hand(s / temperature), log_softmax_by_hand(t / temperature)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean().item()
        assert golden("kd")[case.name] == pytest.approx(temperature**2 * kl, rel=1e-5)


def encode_by_hand(enc: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MUSE's InfoMaxEncoder from its weights, float64: LN(W2 relu(BN_train(W1 x)) + b2 + Ws x). (M, C) -> (M, D)."""
    bn = enc.block[1]
    p = {k: v.detach().double() for k, v in enc.state_dict().items()}
    h = x @ p["block.0.weight"].T
    mean, var = h.mean(0), ((h - h.mean(0)) ** 2).mean(0)  # training-mode BN: biased batch variance
    h = (h - mean) / (var + bn.eps).sqrt() * p["block.1.weight"] + p["block.1.bias"]
    h = h.clamp(min=0) @ p["block.3.weight"].T + p["block.3.bias"]
    y = h + x @ p["shortcut.weight"].T
    mu, v = y.mean(1, keepdim=True), ((y - y.mean(1, keepdim=True)) ** 2).mean(1, keepdim=True)
    return (y - mu) / (v + enc.norm.eps).sqrt() * p["norm.weight"] + p["norm.bias"]


def jsd_loss_by_loops(local: torch.Tensor, glob: torch.Tensor) -> float:
    """MUSE Eq. 5 as a loss: mean softplus(-T) over positive (image b, location n, global b) pairs plus mean
    softplus(T) over negative pairs (global c != b), T = <l, g> / sqrt(D). Shape: local (B, N, D), glob (B, D)."""
    b, n, d = local.shape
    pos, neg = [], []
    for i in range(b):
        for c in range(b):
            scores = local[i] @ glob[c] / math.sqrt(d)  # (N,): location j of image i against the global view of c
            if c == i:
                pos.append(torch.log1p(torch.exp(-scores)))
            else:
                neg.append(torch.log1p(torch.exp(scores)))
    pos_mean = torch.cat(pos).mean().item()
    return pos_mean + (torch.cat(neg).mean().item() if neg else 0.0)


@pytest.mark.parametrize("name,combine", [
    ("mi", lambda mi, si: mi),
    ("si", lambda mi, si: si),
    ("mi_plus_si", lambda mi, si: mi + si),  # Eq. 4
    ("mi_x_si", lambda mi, si: mi * si),  # Eq. 6
])
def test_muse_golden_by_hand(name, combine):
    """Encoders re-evaluated from the seed-0 weights by hand, the JSD critic by loops (not discbench.kernels)."""
    cls = LOSSES.get(name)
    for case in cases(cls):
        plugin = build(cls, case)
        s, t = inputs(case)
        b, c, h, w = s.shape
        local = encode_by_hand(plugin.local_encoder, s.permute(0, 2, 3, 1).reshape(b * h * w, c)).view(b, h * w, -1)
        mi = si = None
        if plugin.mi_global_encoder is not None:
            mi = jsd_loss_by_loops(local, encode_by_hand(plugin.mi_global_encoder, t.mean(dim=(2, 3))))
        if plugin.si_global_encoder is not None:
            si = jsd_loss_by_loops(local, encode_by_hand(plugin.si_global_encoder, s.mean(dim=(2, 3))))
        assert golden(name)[case.name] == pytest.approx(combine(mi, si), rel=1e-5)
