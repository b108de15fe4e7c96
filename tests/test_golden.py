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
    """Encoders re-evaluated from the seed-0 weights by hand, the JSD critic by loops (not discbench.kernels), over
    the K locations per image that the plugin's forward draws next from torch's generator (every location when the
    map has at most K): uniform, without replacement: the k largest of H*W uniform numbers (MUSE version 2)."""
    cls = LOSSES.get(name)
    for case in cases(cls):
        plugin = build(cls, case)
        k = plugin.locations
        s, t = inputs(case)
        b, c, h, w = s.shape
        rows = s.permute(0, 2, 3, 1).reshape(b, h * w, c)
        if h * w > k:
            picked = torch.rand(b, h * w).topk(k, dim=1, sorted=False).indices
            rows = torch.stack([rows[i, picked[i]] for i in range(b)])
        local = encode_by_hand(plugin.local_encoder, rows.reshape(-1, c)).view(b, rows.shape[1], -1)
        mi = si = None
        if plugin.mi_global_encoder is not None:
            mi = jsd_loss_by_loops(local, encode_by_hand(plugin.mi_global_encoder, t.mean(dim=(2, 3))))
        if plugin.si_global_encoder is not None:
            si = jsd_loss_by_loops(local, encode_by_hand(plugin.si_global_encoder, s.mean(dim=(2, 3))))
        assert golden(name)[case.name] == pytest.approx(combine(mi, si), rel=1e-5)


# -- the zoo's stored values by hand (float64, written from each plugin's docstring, not by calling its helpers) -----
def block_mean(x: torch.Tensor, side: int) -> torch.Tensor:
    """Average pooling of a (B, C, H, W) map to side x side when side divides H and W (adaptive pooling then)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, side, h // side, side, w // side).mean(dim=(3, 5))


def matched(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The larger map pooled to the smaller (the contract's cases have sizes that divide each other)."""
    side = min(s.shape[-1], t.shape[-1])
    return block_mean(s, side), block_mean(t, side)


def softplus(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().double() for k, v in module.state_dict().items()}


def batch_norm_train(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    """Training-mode BN of a (B, C, H, W) map: per-channel batch mean and biased variance."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / (var + eps).sqrt() * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)


def conv1x1(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    y = torch.einsum("bchw,oc->bohw", x, w.flatten(1))
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def test_at_golden_by_hand():
    """mean over (B, HW) of (q_s/|q_s| - q_t/|q_t|)^2 with q = mean_c A^2 (p = 2) of the size-matched maps."""
    for case in cases(LOSSES.get("at")):
        s, t = matched(*inputs(case))
        qs, qt = (x.pow(2).mean(dim=1).flatten(1) for x in (s, t))
        qs, qt = qs / qs.norm(dim=1, keepdim=True), qt / qt.norm(dim=1, keepdim=True)
        assert golden("at")[case.name] == pytest.approx((qs - qt).pow(2).mean().item(), rel=1e-5)


def channel_sets(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """NST's samples: every channel's flattened map of the size-matched pair, unit-normalised. (B, C, HW) each."""
    s, t = matched(*inputs(case))
    x, y = s.flatten(2), t.flatten(2)
    return x / x.norm(dim=2, keepdim=True), y / y.norm(dim=2, keepdim=True)


def mmd2_by_loops(x: torch.Tensor, y: torch.Tensor, k) -> float:
    """Biased MMD^2 of one image's sample sets by explicit double sums. x (N, D), y (M, D)."""
    def mean_k(a, b):
        return sum(k(a[i], b[j]) for i in range(len(a)) for j in range(len(b))) / (len(a) * len(b))

    return mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)


def test_mmd_golden_by_hand():
    """NST: per image, MMD^2 of the channel sets under k(a, b) = (a . b)^2, averaged over the batch."""
    for case in cases(LOSSES.get("mmd")):
        x, y = channel_sets(case)
        per_image = [mmd2_by_loops(x[i], y[i], lambda a, b: float(a @ b) ** 2) for i in range(len(x))]
        assert golden("mmd")[case.name] == pytest.approx(sum(per_image) / len(per_image), rel=1e-5)


def test_mmd_rbf_golden_by_hand():
    """Gaussian kernel, sigma^2 = the lower median squared distance over distinct pairs of the pooled set, per image."""
    for case in cases(LOSSES.get("mmd_rbf")):
        x, y = channel_sets(case)
        per_image = []
        for i in range(len(x)):
            z = torch.cat([x[i], y[i]])
            d2 = sorted(float((z[a] - z[b]).pow(2).sum()) for a in range(len(z)) for b in range(a + 1, len(z)))
            sigma2 = d2[(len(d2) - 1) // 2]
            per_image.append(mmd2_by_loops(x[i], y[i], lambda a, b, s2=sigma2: math.exp(-float((a - b).pow(2).sum())
                                                                                         / (2 * s2))))
        assert golden("mmd_rbf")[case.name] == pytest.approx(sum(per_image) / len(per_image), rel=1e-5)


def test_dml_golden_by_hand():
    """DML Eq. 3 at T = 1: mean_b sum_k p_peer (log p_peer - log p_self)."""
    assert LOSSES.get("dml").hparams()["temperature"] == 1.0
    for case in cases(LOSSES.get("dml")):
        s, t = inputs(case)
        log_ps, log_pt = log_softmax_by_hand(s), log_softmax_by_hand(t)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean().item()
        assert golden("dml")[case.name] == pytest.approx(kl, rel=1e-5)


def fitnet_regressor_by_hand(x: torch.Tensor, p: dict, ratio: float, eps: float) -> torch.Tensor:
    """The regressor's conv for the contract's three reduction ratios, by explicit sums; then BN (train) and ReLU."""
    w = p["regressor.conv.weight"]
    if ratio == 1:  # 1x1 conv
        y = conv1x1(x, w)
    elif ratio > 1:  # k x k conv with stride k on non-overlapping patches
        k = int(ratio)
        b, c, h, wd = x.shape
        patches = x.reshape(b, c, h // k, k, wd // k, k)
        y = torch.einsum("bcyixj,ocij->boyx", patches, w)
    else:  # ratio 1/2: transposed conv, kernel 4, stride 2, padding 1: out[2 iy - 1 + ky] += w[.., ky] x[iy]
        b, c, h, wd = x.shape
        y = torch.zeros(b, w.shape[1], 2 * h, 2 * wd, dtype=x.dtype)
        for iy in range(h):
            for ix in range(wd):
                for ky in range(4):
                    for kx in range(4):
                        oy, ox = 2 * iy - 1 + ky, 2 * ix - 1 + kx
                        if 0 <= oy < 2 * h and 0 <= ox < 2 * wd:
                            y[:, :, oy, ox] += x[:, :, iy, ix] @ w[:, :, ky, kx]
    return batch_norm_train(y, p["regressor.bn.weight"], p["regressor.bn.bias"], eps).clamp(min=0)


def test_fitnet_golden_by_hand():
    """mean((r(source) - target)^2), r = conv (by the reduction ratio), BN, ReLU (FitNets Eq. 3, RepDistiller)."""
    cls = LOSSES.get("fitnet")
    for case in cases(cls):
        plugin = build(cls, case)
        s, t = inputs(case)
        ratio = case.target.reduction / case.source.reduction
        hint = fitnet_regressor_by_hand(s, weights(plugin), ratio, plugin.regressor.bn.eps)
        assert golden("fitnet")[case.name] == pytest.approx((hint - t).pow(2).mean().item(), rel=1e-5)


def test_vid_golden_by_hand():
    """mean over (B, C_t, h, w) of 1/2 [(mu - t)^2 / sigma_c^2 + log sigma_c^2], mu three 1x1 convs with ReLUs,
    sigma_c^2 = log(1 + exp(alpha_c)) + eps, on the size-matched pair."""
    cls = LOSSES.get("vid")
    for case in cases(cls):
        plugin = build(cls, case)
        p = weights(plugin)
        s, t = matched(*inputs(case))
        mu = conv1x1(conv1x1(conv1x1(s, p["regressor.0.weight"]).clamp(min=0), p["regressor.2.weight"]).clamp(min=0),
                     p["regressor.4.weight"])
        var = (torch.log1p(torch.exp(p["log_scale"])) + plugin.eps).view(1, -1, 1, 1)
        nll = 0.5 * ((mu - t) ** 2 / var + var.log())
        assert golden("vid")[case.name] == pytest.approx(nll.mean().item(), rel=1e-5)


def mlp_discriminator(p: dict, v: torch.Tensor) -> torch.Tensor:
    """Linear, LeakyReLU(0.2), Linear from the weights ``p``. (B, C) -> (B,)."""
    h = v @ p["discriminator.0.weight"].T + p["discriminator.0.bias"]
    h = torch.where(h > 0, h, 0.2 * h)
    return (h @ p["discriminator.2.weight"].T + p["discriminator.2.bias"]).squeeze(1)


def test_adversarial_golden_by_hand():
    """BCE(D(pool t), 1) + BCE(D(P pool s), 0), D = Linear, LeakyReLU(0.2), Linear (the reversal is the identity
    in the forward pass)."""
    cls = LOSSES.get("adversarial")
    for case in cases(cls):
        p = weights(build(cls, case))
        s, t = inputs(case)

        fake = s.mean(dim=(2, 3)) @ p["projection.weight"].T + p["projection.bias"]
        loss = softplus(-mlp_discriminator(p, t.mean(dim=(2, 3)))).mean() + softplus(mlp_discriminator(p, fake)).mean()
        assert golden("adversarial")[case.name] == pytest.approx(loss.item(), rel=1e-5)


def map_discriminator(p: dict, x: torch.Tensor) -> torch.Tensor:
    """AFD's critic from the weights ``p``: 1x1 conv, LeakyReLU, 3x3 stride-2 conv (padding 1, by its 9 taps),
    LeakyReLU, spatial mean, linear. (B, C, H, W) -> (B,)."""
    h = conv1x1(x, p["discriminator.body.0.weight"], p["discriminator.body.0.bias"])
    h = torch.where(h > 0, h, 0.2 * h)
    padded = torch.nn.functional.pad(h, (1, 1, 1, 1))
    side = (h.shape[-1] + 1) // 2
    w3 = p["discriminator.body.2.weight"]
    out = torch.zeros(h.shape[0], w3.shape[0], side, side, dtype=h.dtype)
    for ky in range(3):
        for kx in range(3):
            window = padded[:, :, ky:ky + 2 * side:2, kx:kx + 2 * side:2]  # (B, hidden, side, side)
            out += torch.einsum("bchw,oc->bohw", window, w3[:, :, ky, kx])
    out = out + p["discriminator.body.2.bias"].view(1, -1, 1, 1)
    out = torch.where(out > 0, out, 0.2 * out).mean(dim=(2, 3))
    return (out @ p["discriminator.body.6.weight"].T + p["discriminator.body.6.bias"]).squeeze(1)


def test_afd_golden_by_hand():
    """L_D + L_G = mean (1 - D(peer))^2 + mean D(fake)^2 + mean (1 - D(fake))^2 (LSGAN), fake = ReLU(BN(1x1 conv))
    of the size-matched own map; D = 1x1 conv, LeakyReLU, 3x3 stride-2 conv (padding 1), LeakyReLU, mean, linear."""
    cls = LOSSES.get("afd")
    for case in cases(cls):
        plugin = build(cls, case)
        p = weights(plugin)
        s, t = matched(*inputs(case))
        assert case.source.channels != case.target.channels  # the transfer layer exists in every contract case
        fake = batch_norm_train(conv1x1(s, p["transfer.0.weight"]), p["transfer.1.weight"], p["transfer.1.bias"],
                                plugin.transfer[1].eps).clamp(min=0)

        d_real, d_fake = map_discriminator(p, t), map_discriminator(p, fake)
        loss = (1 - d_real).pow(2).mean() + d_fake.pow(2).mean() + (1 - d_fake).pow(2).mean()
        assert golden("afd")[case.name] == pytest.approx(loss.item(), rel=1e-5)


def test_mimkd_golden_by_hand():
    """InfoNCE by loops: mean over (b, n) of log sum_c exp(s[b, c, n]) - s[b, b, n], s = <E_L(l), E_G(g)> / sqrt(D)."""
    cls = LOSSES.get("mimkd")
    for case in cases(cls):
        plugin = build(cls, case)
        s, t = inputs(case)
        b, c, h, w = s.shape
        local = encode_by_hand(plugin.local_encoder, s.permute(0, 2, 3, 1).reshape(b * h * w, c)).view(b, h * w, -1)
        glob = encode_by_hand(plugin.global_encoder, t.mean(dim=(2, 3))) / math.sqrt(plugin.dim)
        terms = []
        for i in range(b):
            scores = torch.stack([local[i] @ glob[j] for j in range(b)])  # (B, N): location n of i against each j
            terms.append(scores.exp().sum(dim=0).log() - scores[i])
        assert golden("mimkd")[case.name] == pytest.approx(torch.cat(terms).mean().item(), rel=1e-5)


def crd_embed(p: dict, x: torch.Tensor, side: str) -> torch.Tensor:
    """CRD's head g: pooled map, linear, L2 normalisation. (B, C, H, W) -> (B, dim)."""
    v = x.mean(dim=(2, 3)) @ p[f"embed_{side}.linear.weight"].T + p[f"embed_{side}.linear.bias"]
    return v / v.norm(dim=1, keepdim=True)


def test_crd_golden_by_hand():
    """NCE of both anchor sides (CRD §3.1 as RepDistiller): banks, negatives and Z replayed from the seed-0 global
    RNG in the order the plugin draws them (heads at construction, then the two banks, then the negatives)."""
    from discbench.contract import BATCH, DATASET_SIZE, context

    cls = LOSSES.get("crd")
    for case in cases(cls):
        plugin = build(cls, case)  # leaves the global RNG where the plugin's first forward starts drawing
        n, dim, tau = DATASET_SIZE, plugin.dim, plugin.temperature
        bound = 1.0 / math.sqrt(dim / 3)
        bank_s = ((torch.rand(n, dim) * 2 - 1) * bound).double()
        bank_t = ((torch.rand(n, dim) * 2 - 1) * bound).double()
        k = min(plugin.nce_k, n - 1)
        r = torch.randint(0, n - 1, (BATCH, k))
        gen = torch.Generator().manual_seed(0)  # the contract's inputs, then its context from the same generator
        s, t = (x.double() for x in (sample(case.source, gen), sample(case.target, gen)))
        anchors = context(gen).indices
        negatives = r + (r >= anchors[:, None]).long()  # uniform over the N - 1 other indices
        p = weights(plugin)

        total = 0.0
        for v, bank in ((crd_embed(p, s, "source"), bank_t), (crd_embed(p, t, "target"), bank_s)):
            scores = torch.stack([torch.stack([v[i] @ bank[j] for j in [int(anchors[i]), *negatives[i].tolist()]])
                                  for i in range(BATCH)]) / tau  # (B, 1+K), column 0 the positive
            log_z = torch.logsumexp(scores.flatten(), 0) - math.log(scores.numel()) + math.log(n)
            log_p, c = scores - log_z, math.log(k / (n - 1))
            total += (softplus(c - log_p[:, 0]) + softplus(log_p[:, 1:] - c).sum(dim=1)).mean().item()
        assert golden("crd")[case.name] == pytest.approx(total, rel=1e-5)


def test_kdcl_golden_by_hand():
    """KDCL-MinLogit (Guo et al. 2020): z_t[b, c] = min_k (z_k[b, c] - z_k[b, y_b]), then T^2 KL(p_t || p_self) at
    T = 3, by loops over samples and classes."""
    from discbench.contract import context, sample

    temperature = LOSSES.get("kdcl").hparams()["temperature"]
    for case in cases(LOSSES.get("kdcl")):
        gen = torch.Generator().manual_seed(0)
        s, t = sample(case.source, gen).double(), sample(case.target, gen).double()
        labels = context(gen).labels.tolist()
        total = 0.0
        for b, y in enumerate(labels):
            ensemble = [min(float(z[b, c] - z[b, y]) for z in (s, t)) for c in range(s.shape[1])]
            log_pt = log_softmax_by_hand(torch.tensor([ensemble], dtype=torch.float64) / temperature)[0]
            log_ps = log_softmax_by_hand(s[b:b + 1] / temperature)[0]
            total += float((log_pt.exp() * (log_pt - log_ps)).sum())
        assert golden("kdcl")[case.name] == pytest.approx(temperature**2 * total / len(labels), rel=1e-5)
