"""One training step of discbench against a reference step written independently from the methods' definitions.

Each test builds a discbench run from bench.toml (``Bench.resolve`` with ``--set``-style overrides), runs the
protocol's forward, ``total.backward()`` and one ``torch.optim.SGD`` step with the recipe's momentum and weight decay,
exactly as ``discbench.train`` does, and compares it with a reference step computed here from the papers and from
the public code the published numbers were run with:

- offline (RepDistiller, github.com/HobbitLong/RepDistiller at b84f547c5db6a35318d4671d7d5c4de74c822403: Tian,
  Krishnan and Isola, "Contrastive Representation Distillation", ICLR 2020): ``train_student.py`` builds the heads
  and the optimizer over ``trainable_list``, ``helper/loops.py:train_distill`` computes
  ``loss = gamma * CE + alpha * KD(T = 4) + beta * loss_kd`` with ``-r``/``-a``/``-b`` from
  ``scripts/run_cifar_distill.sh`` (KD: Hinton et al. 2015; FitNets: Romero et al., ICLR 2015; AT: Zagoruyko and
  Komodakis, ICLR 2017; NST: Huang and Wang, arXiv:1707.01219; VID: Ahn et al., CVPR 2019; CRD);
- online: DML (Zhang, Xiang, Hospedales and Lu, "Deep Mutual Learning", CVPR 2018, Eq. 1-5; AberHu's
  github.com/AberHu/Knowledge-Distillation-Zoo ``train_dml.py`` at 65470c846c1300d555815da26999cbe2b51fc815) and
  KDCL-MinLogit (Guo et al., "Online Knowledge Distillation via Collaborative Learning", CVPR 2020; no public code);
- self: BYOT (Zhang et al., "Be Your Own Teacher", ICCV 2019; github.com/luanyunteng/pytorch-be-your-own-teacher
  ``train.py`` at 8045079f9933b3dd694dee5294faac0bd8d54fab).

The reference networks are a CIFAR ResNet written here in RepDistiller's layout (``feat[0..4]``: stem, three stages,
pooled vector) and BYOT's exit branches; they receive discbench's initial weights through ``state_dict`` so both sides
start identical, and see the same batch (for CRD, the same negative indices: discbench's ``CRD.draw_negatives`` is
replaced on the instance). Checked, in float64: the total loss, every trainable gradient (and that both sides train
the same set of tensors), every parameter and buffer after the step (BatchNorm running statistics, the frozen
teacher, CRD's memory banks and Z). Tolerance 1e-10 relative (max |a - b| / max |b| per tensor), except where a
plugin computes its term in float32 whatever its input (fitnet, at, mmd, vid, l2 cast with ``.float()``): there the
float32 floor applies (``FP32_FLOOR``).

Every case runs the method as bench.toml's ``[methods.<loss>]`` declares it for the protocol (issue 18: the same
configuration from ``discbench run`` as from a suite); the only overrides are sizes (CRD's negatives, BYOT's batch in
l2's per-sample weight) and ablations (RepDistiller's CRD+KD run, -a 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discbench.api import LossContext
from discbench.config import Bench, RunConfig
from discbench.protocols.base import build_backbone
from discbench.registry import PROTOCOLS

REPO = Path(__file__).resolve().parents[1]
F64 = torch.float64
BATCH = 4
CLASSES = 100
FLOAT64_TOL = 1e-10
FP32_FLOOR = 5e-6  # a term computed in float32: 3e-8..9e-7 measured (fitnet, at, mmd, vid), backward included
N_DATA = 6000  # training-set size seen by CRD's memory banks
NCE_K = 4096  # CRD negatives (RepDistiller's 16384 needs N > 16384 and changes nothing but sizes)


# -- reference networks (RepDistiller models/resnet.py layout; BYOT models/resnet.py exits) ---------------------------
class RefBlock(nn.Module):
    """CIFAR basic block, post-activation: relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class RefResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs, widths 16/16/32/64; forward returns ``([f0, f1, f2, f3, f4], logits)`` as
    RepDistiller's ``model(x, is_feat=True)``: f0 the stem, f1..f3 the stages, f4 the 8x8-average-pooled vector."""

    def __init__(self, depth: int, num_classes: int = CLASSES):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(*(RefBlock(16, 16, 1) for _ in range(n)))
        self.layer2 = nn.Sequential(RefBlock(16, 32, 2), *(RefBlock(32, 32, 1) for _ in range(n - 1)))
        self.layer3 = nn.Sequential(RefBlock(32, 64, 2), *(RefBlock(64, 64, 1) for _ in range(n - 1)))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(f0)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = F.avg_pool2d(f3, 8).flatten(1)
        return [f0, f1, f2, f3, f4], self.fc(f4)


def resnet_renames(ours: str, ref: str) -> list[tuple[str, str]]:
    """discbench's CIFAR ResNet keys (prefix ``ours``) -> RefResNet keys (prefix ``ref``)."""
    return [(f"{ours}stages.0.0.", f"{ref}conv1."), (f"{ours}stages.0.1.", f"{ref}bn1."),
            (f"{ours}stages.1.", f"{ref}layer1."), (f"{ours}stages.2.", f"{ref}layer2."),
            (f"{ours}stages.3.", f"{ref}layer3."), (f"{ours}head.2.", f"{ref}fc.")]


def byot_branch(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """BYOT's ``branchBottleNeck``: 1x1 conv to cout/4, BN, ReLU, k x k conv stride k, BN, ReLU, 1x1 conv to cout,
    BN, ReLU. BYOT's convolutions carry biases; each is followed by a training-mode BN that cancels it, so they are
    left out (discbench's exits have none)."""
    mid = cout // 4
    return nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                         nn.Conv2d(mid, mid, kernel, kernel, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                         nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class RefBYOT(nn.Module):
    """A CIFAR ResNet with BYOT's exits after the stem and the first two stages (discbench's modules 1..3; BYOT's
    ImageNet-style ResNets place them after layer1..3): ``bottleneck{i}_1`` then global pooling (``middle{i}_fea``)
    and ``middle_fc{i}``; the last exit is the network's own head (``final_fea`` = its pooled vector)."""

    def __init__(self, depth: int):
        super().__init__()
        self.body = RefResNet(depth)
        for i, (cin, k) in enumerate(((16, 4), (16, 4), (32, 2)), start=1):
            setattr(self, f"bottleneck{i}_1", byot_branch(cin, 64, k))
            setattr(self, f"middle_fc{i}", nn.Linear(64, CLASSES))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor], Tensor, list[Tensor]]:
        feats, out = self.body(x)
        middle_out, middle_fea = [], []
        for i, f in enumerate(feats[:3], start=1):
            fea = F.adaptive_avg_pool2d(getattr(self, f"bottleneck{i}_1")(f), 1)  # (B, 64, 1, 1)
            middle_fea.append(fea)
            middle_out.append(getattr(self, f"middle_fc{i}")(fea.flatten(1)))
        return out, middle_out, feats[4][:, :, None, None], middle_fea


# -- reference heads and losses ---------------------------------------------------------------------------------------
def hinton_kd(z_s: Tensor, z_t: Tensor, t: float) -> Tensor:
    """KL(softmax(z_t / T) || softmax(z_s / T)) summed over classes and batch, times T^2 / B (RepDistiller
    ``DistillKL``; Hinton et al. 2015 §2)."""
    log_p_t = F.log_softmax(z_t / t, dim=1)
    return (log_p_t.exp() * (log_p_t - F.log_softmax(z_s / t, dim=1))).sum() * t * t / z_s.shape[0]


class ConvReg(nn.Module):
    """FitNets' regressor for two maps of equal size, as RepDistiller's ``ConvReg`` (kernel 1 + s_H - t_H = 1),
    then BN and ReLU. RepDistiller's conv has a bias that the training-mode BN cancels; left out."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def pool_to_smaller(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """RepDistiller's AT/NST/VID spatial match: the map with the larger side is average-pooled to the other's."""
    if s.shape[2] > t.shape[2]:
        s = F.adaptive_avg_pool2d(s, t.shape[2:])
    elif s.shape[2] < t.shape[2]:
        t = F.adaptive_avg_pool2d(t, s.shape[2:])
    return s, t


def at_loss(s: Tensor, t: Tensor, p: float = 2.0) -> Tensor:
    """Attention transfer as RepDistiller runs it: mean over (B, HW) of the squared difference of the L2-normalised
    channel means of A^p (Zagoruyko and Komodakis Eq. 2 with squared, averaged differences)."""
    s, t = pool_to_smaller(s, t)

    def attention(f: Tensor) -> Tensor:
        q = f.pow(p).mean(1).flatten(1)
        return q / q.norm(dim=1, keepdim=True)

    return (attention(s) - attention(t)).pow(2).mean()


def nst_loss(s: Tensor, t: Tensor) -> Tensor:
    """NST: biased MMD^2 with the polynomial kernel (a.b)^2 between the L2-normalised channel maps of each image,
    averaged over the batch, the target's self-term detached (Huang and Wang Eq. 2; RepDistiller ``full_loss``)."""
    s, t = pool_to_smaller(s, t)
    s = s.flatten(2) / s.flatten(2).norm(dim=2, keepdim=True)  # (B, C_s, HW)
    t = t.flatten(2) / t.flatten(2).norm(dim=2, keepdim=True)

    def k(a: Tensor, b: Tensor) -> Tensor:
        return torch.einsum("bic,bjc->bij", a, b).pow(2).mean()

    return k(t, t).detach() + k(s, s) - 2 * k(s, t)


class VIDHead(nn.Module):
    """VID's Gaussian: mean from three bias-free 1x1 convs with ReLUs (C_s -> C_t -> C_t -> C_t), variance
    softplus(alpha_c) + eps per channel, initialised to 5 (Ahn et al. Eq. 5-6; RepDistiller ``VIDLoss(s, t, t)``)."""

    def __init__(self, cin: int, cout: int, init_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        self.regressor = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(),
                                       nn.Conv2d(cout, cout, 1, bias=False), nn.ReLU(),
                                       nn.Conv2d(cout, cout, 1, bias=False))
        self.log_scale = nn.Parameter(torch.full((cout,), math.log(math.exp(init_var - eps) - 1.0)))
        self.eps = eps

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        s, t = pool_to_smaller(s, t)
        var = (torch.log(1 + torch.exp(self.log_scale)) + self.eps).view(1, -1, 1, 1)
        return (0.5 * ((self.regressor(s) - t) ** 2 / var + torch.log(var))).mean()


class RefEmbed(nn.Module):
    """CRD's embedding: flatten, linear, divide by the L2 norm (RepDistiller ``crd/criterion.py:Embed``)."""

    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(cin, dim)

    def forward(self, x: Tensor) -> Tensor:
        v = self.linear(x.flatten(1))
        return v / v.pow(2).sum(1, keepdim=True).sqrt()


class RefCRD(nn.Module):
    """CRD as RepDistiller's ``CRDLoss`` + ``ContrastMemory`` + ``ContrastLoss``, in probability space.

    memory_v1 holds student embeddings, memory_v2 teacher embeddings. Scores exp(m . v / tau) of each anchor
    against the *other* network's bank rows ``contrast_idx`` (column 0: the anchor's own index), divided by Z, which
    is set on the first batch to N * mean(scores) per side and then kept. NCE loss per side:
    -(sum_b log(P_b0 / (P_b0 + K Pn + eps)) + sum_bk log(K Pn / (P_bk + K Pn + eps))) / B. After the scores, each
    bank's anchor rows become normalise(m * row + (1 - m) * v). ``noise_prob`` and ``eps`` are parameters:
    RepDistiller uses Pn = 1/N and eps = 1e-7; discbench declares Pn = 1/(N - 1) (negatives exclude the anchor) and
    no eps, which the test passes.
    """

    def __init__(self, s_dim: int, t_dim: int, dim: int, n_data: int, tau: float, momentum: float,
                 noise_prob: float, eps: float):
        super().__init__()
        self.embed_s, self.embed_t = RefEmbed(s_dim, dim), RefEmbed(t_dim, dim)
        self.register_buffer("memory_v1", torch.zeros(n_data, dim))
        self.register_buffer("memory_v2", torch.zeros(n_data, dim))
        self.register_buffer("z", torch.full((2,), -1.0))
        self.tau, self.momentum, self.noise_prob, self.eps = tau, momentum, noise_prob, eps

    def nce(self, p: Tensor) -> Tensor:
        c = (p.shape[1] - 1) * self.noise_prob
        log_d1 = torch.log(p[:, 0] / (p[:, 0] + c + self.eps))
        log_d0 = torch.log(c / (p[:, 1:] + c + self.eps))
        return -(log_d1.sum() + log_d0.sum()) / p.shape[0]

    def forward(self, f_s: Tensor, f_t: Tensor, idx: Tensor, contrast_idx: Tensor) -> Tensor:
        v1, v2 = self.embed_s(f_s), self.embed_t(f_t)
        out_v2 = torch.exp(torch.bmm(self.memory_v1[contrast_idx], v2[:, :, None]).squeeze(2) / self.tau)
        out_v1 = torch.exp(torch.bmm(self.memory_v2[contrast_idx], v1[:, :, None]).squeeze(2) / self.tau)
        n = self.memory_v1.shape[0]
        with torch.no_grad():
            for side, out in ((0, out_v1), (1, out_v2)):
                if self.z[side] < 0:
                    self.z[side] = out.mean() * n
        loss = self.nce(out_v1 / self.z[0]) + self.nce(out_v2 / self.z[1])
        with torch.no_grad():
            for bank, v in ((self.memory_v1, v1), (self.memory_v2, v2)):
                rows = bank[idx] * self.momentum + v * (1 - self.momentum)
                bank[idx] = rows / rows.pow(2).sum(1, keepdim=True).sqrt()
        return loss


def min_logit_target(z1: Tensor, z2: Tensor, y: Tensor) -> Tensor:
    """KDCL-MinLogit: each network's logits minus its own true-class logit, then the element-wise minimum."""
    rows = torch.arange(y.shape[0])
    return torch.minimum(z1 - z1[rows, y][:, None], z2 - z2[rows, y][:, None])


# -- the two sides of a step ------------------------------------------------------------------------------------------
@dataclass
class Batch:
    x: Tensor
    y: Tensor
    idx: Tensor
    negatives: Tensor | None = None  # (B, K) for CRD


@dataclass
class Objective:
    """A reference step's value (compared with discbench's total) and its losses, each with the parameter-name
    prefixes it trains (one per network for mutual learning, which updates each network by its own loss)."""

    value: Tensor
    groups: list[tuple[Tensor, tuple[str, ...]]] = field(default_factory=list)


@dataclass
class Trace:
    losses: list[Tensor]
    grads: list[dict[str, Tensor]]


def make_batches(steps: int, seed: int, negatives: bool = False, shared_anchors: int = 0) -> list[Batch]:
    """Random 32x32x3 images, labels, distinct training-set indices per batch (``shared_anchors`` of step s + 1 are
    step s's first indices, so CRD rewrites bank rows twice), and for CRD K negatives per anchor drawn uniformly
    from the other N - 1 samples with replacement (discbench's declared sampler)."""
    g = torch.Generator().manual_seed(seed)
    batches, previous = [], None
    for _ in range(steps):
        idx = torch.randperm(N_DATA, generator=g)[:BATCH]
        if previous is not None and shared_anchors:
            fresh = [i for i in idx.tolist() if i not in previous[:shared_anchors].tolist()]
            idx = torch.tensor(previous[:shared_anchors].tolist() + fresh[:BATCH - shared_anchors])
        neg = None
        if negatives:
            w = torch.ones(BATCH, N_DATA, dtype=F64)
            w[torch.arange(BATCH), idx] = 0
            neg = torch.multinomial(w, NCE_K, replacement=True, generator=g)
        batches.append(Batch(torch.randn(BATCH, 3, 32, 32, generator=g, dtype=F64),
                             torch.randint(0, CLASSES, (BATCH,), generator=g), idx, neg))
        previous = idx
    return batches


def run_discbench(system: nn.Module, cfg: RunConfig, batches: list[Batch]) -> Trace:
    """The training loop's step (discbench.train.train): forward, zero_grad, backward, SGD over every parameter that
    requires grad, with the recipe's lr, momentum, weight decay and nesterov."""
    r = cfg.recipe
    params = [p for p in system.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay,
                                nesterov=r.nesterov)
    system.train()
    trace = Trace([], [])
    for step, b in enumerate(batches):
        ctx = LossContext(step=step, epoch=0, protocol=cfg.protocol_name, labels=b.y, indices=b.idx,
                          dataset_size=N_DATA, num_classes=CLASSES)
        out = system(b.x, b.y, ctx)
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        trace.grads.append({n: p.grad.clone() for n, p in system.named_parameters() if p.requires_grad})
        optimizer.step()
        trace.losses.append(out.total.detach())
    return trace


def run_reference(ref: nn.Module, objective: Callable[[nn.Module, Batch], Objective], batches: list[Batch],
                  lr: float, momentum: float, weight_decay: float) -> Trace:
    """The reference's step: the gradient of each loss w.r.t. the parameters it trains (torch.autograd.grad), then
    heavy-ball SGD by hand: buf = momentum * buf + (g + wd * p) (buf = g + wd * p on the first step); p -= lr * buf."""
    buffers: dict[str, Tensor] = {}
    trace = Trace([], [])
    for b in batches:
        obj = objective(ref, b)
        grads: dict[str, Tensor] = {}
        for loss, prefixes in obj.groups:
            names = [n for n, _ in ref.named_parameters() if n.startswith(prefixes)]
            for n, g in zip(names, torch.autograd.grad(loss, [ref.get_parameter(n) for n in names]), strict=True):
                assert n not in grads, f"{n} is trained by two losses"
                grads[n] = g
        with torch.no_grad():
            for n, g in grads.items():
                p = ref.get_parameter(n)
                d = g + weight_decay * p
                buffers[n] = d.clone() if n not in buffers else momentum * buffers[n] + d
                p -= lr * buffers[n]
        trace.grads.append(grads)
        trace.losses.append(obj.value.detach())
    return trace


def renamer(pairs: list[tuple[str, str]]) -> Callable[[str], str]:
    def rename(key: str) -> str:
        for ours, ref in pairs:
            if key.startswith(ours):
                return ref + key[len(ours):]
        raise KeyError(f"no reference tensor for discbench's {key}")

    return rename


def rel_err(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b| (absolute when b is all zeros)."""
    diff = (a.double() - b.double()).abs().max().item()
    scale = b.double().abs().max().item()
    return diff / scale if scale > 0 else diff


def compare(system: nn.Module, ref: nn.Module, rename: Callable[[str], str], ours: Trace, theirs: Trace,
            skip: tuple[str, ...] = ()) -> dict[str, float]:
    """Relative errors of losses, gradients and the state after the steps; also checks
    that both sides train the same tensors and that every state tensor has a counterpart."""
    errors: dict[str, float] = {}
    for step, (lo, lr_, go, gr) in enumerate(zip(ours.losses, theirs.losses, ours.grads, theirs.grads, strict=True)):
        errors[f"loss @{step}"] = rel_err(lo, lr_)
        assert sorted(rename(n) for n in go) == sorted(gr), "discbench and the reference train different tensors"
        for n, g in go.items():
            errors[f"grad {n} @{step}"] = rel_err(g, gr[rename(n)])
    ref_state = ref.state_dict()
    ours_state = {k: v for k, v in system.state_dict().items() if not k.endswith(skip)}
    assert sorted(rename(k) for k in ours_state) == sorted(k for k in ref_state if not k.endswith(skip)), \
        "state tensors without a counterpart"
    for k, v in ours_state.items():
        r = ref_state[rename(k)]
        if v.is_floating_point():
            errors[f"state {k}"] = rel_err(v, r)
        else:
            assert torch.equal(v, r), k  # num_batches_tracked
    return errors


def check(errors: dict[str, float], tol: float) -> None:
    worst = max(errors, key=errors.__getitem__)
    print(f"max relative error {errors[worst]:.2e} ({worst}; {len(errors)} tensors)")
    assert errors[worst] <= tol, f"{worst}: {errors[worst]:.3e} > {tol:g}"


@pytest.fixture(scope="module")
def bench() -> Bench:
    return Bench.load(REPO / "bench.toml")


# -- offline: RepDistiller --------------------------------------------------------------------------------------------
# RepDistiller's weights per method, scripts/run_cifar_distill.sh (-r defaults to 1 in train_student.py).
RD_WEIGHTS = {"kd": (0.1, 0.9, 0.0), "hint": (1.0, 0.0, 100.0), "attention": (1.0, 0.0, 1000.0),
              "nst": (1.0, 0.0, 50.0), "vid": (1.0, 0.0, 1.0), "crd": (1.0, 0.0, 0.8), "crd+kd": (1.0, 1.0, 0.8)}
HINT_LAYER = 2  # train_student.py --hint_layer default


@dataclass(frozen=True)
class OfflineCase:
    method: str  # RepDistiller's --distill (with "crd+kd" for its -a 1 CRD run)
    loss: str  # discbench's loss
    overrides: tuple[str, ...] = ()  # sizes and ablations only: the weights are the method's declared ones
    tol: float = FLOAT64_TOL
    steps: int = 1


# RepDistiller's -r, -a, -b are discbench's protocol.ce_weight, protocol.kd_weight and loss.beta; [methods.*] declares
# them per method (the `kd` plugin replaces the protocol's KD term and carries -a as its beta).
OFFLINE = [
    OfflineCase("kd", "kd"),
    OfflineCase("hint", "fitnet", tol=FP32_FLOOR),
    OfflineCase("attention", "at", tol=FP32_FLOOR),
    OfflineCase("nst", "mmd", tol=FP32_FLOOR),
    OfflineCase("vid", "vid", tol=FP32_FLOOR),
    OfflineCase("crd", "crd", (f"loss.nce_k={NCE_K}",), steps=2),
    OfflineCase("crd+kd", "crd", ("protocol.kd_weight=1", f"loss.nce_k={NCE_K}"), steps=2),  # an ablation: -a 1
]


def offline_objective(method: str) -> Callable[[nn.Module, Batch], Objective]:
    """helper/loops.py train_distill: gamma * CE + alpha * KD(T = 4) + beta * loss_kd, teacher under no_grad."""
    gamma, alpha, beta = RD_WEIGHTS[method]

    def objective(ref: nn.Module, b: Batch) -> Objective:
        feat_s, logit_s = ref.student(b.x)
        with torch.no_grad():
            feat_t, logit_t = ref.teacher(b.x)
        loss_cls = F.cross_entropy(logit_s, b.y)
        loss_div = hinton_kd(logit_s, logit_t, 4.0)
        if method == "kd":
            loss_kd = torch.zeros((), dtype=F64)
        elif method == "hint":
            loss_kd = F.mse_loss(ref.hint(feat_s[HINT_LAYER]), feat_t[HINT_LAYER])
        elif method == "attention":
            loss_kd = sum(at_loss(s, t) for s, t in zip(feat_s[1:-1], feat_t[1:-1], strict=True))
        elif method == "nst":
            loss_kd = sum(nst_loss(s, t) for s, t in zip(feat_s[1:-1], feat_t[1:-1], strict=True))
        elif method == "vid":
            loss_kd = sum(h(s, t) for h, s, t in zip(ref.vid, feat_s[1:-1], feat_t[1:-1], strict=True))
        else:  # crd, crd+kd
            contrast_idx = torch.cat([b.idx[:, None], b.negatives], dim=1)  # 'exact' mode: the positive first
            loss_kd = ref.crd(feat_s[-1], feat_t[-1], b.idx, contrast_idx)
        total = gamma * loss_cls + alpha * loss_div + beta * loss_kd
        return Objective(total, [(total, ("student.", "hint.", "vid.", "crd."))])

    return objective


def offline_pair(bench: Bench, case: OfflineCase, overrides: tuple[str, ...], monkeypatch, batches: list[Batch]):
    """discbench's offline system (resnet20 student, resnet32 teacher whose BN statistics were warmed on random
    batches, then frozen), in float64, and the reference with the same weights."""
    torch.manual_seed(0)
    cfg = bench.resolve(case.loss, "resnet20", "cifar100", "paper", protocol="offline", overrides=overrides,
                        partner={"teacher": "resnet32"})
    teacher = build_backbone(cfg, "resnet32").to(F64).train()
    with torch.no_grad():
        for _ in range(3):
            teacher(torch.randn(16, 3, 32, 32, dtype=F64))
    system = PROTOCOLS.get("offline")(cfg, teacher=teacher).to(F64)

    ref = nn.Module()
    ref.student, ref.teacher = RefResNet(20), RefResNet(32)
    pairs = resnet_renames("student.", "student.") + resnet_renames("teacher.", "teacher.")
    state = dict(system.state_dict())
    if case.method == "hint":
        ref.hint = ConvReg(32, 32)
        pairs.append(("discrepancies.plugins.0.regressor.", "hint."))
    elif case.method == "vid":
        ref.vid = nn.ModuleList(VIDHead(c, c) for c in (16, 32, 64))
        pairs += [(f"discrepancies.plugins.{i}.", f"vid.{i}.") for i in range(3)]
    elif case.method.startswith("crd"):
        plugin = system.discrepancies.plugins[0]
        plugin.allocate_banks(N_DATA, torch.device("cpu"), F64)
        steps = iter(batches)

        def negatives(anchors: Tensor, n: int, k: int) -> Tensor:
            b = next(steps)
            assert torch.equal(anchors, b.idx) and (n, k) == (N_DATA, NCE_K)
            return b.negatives

        monkeypatch.setattr(plugin, "draw_negatives", negatives)
        ref.crd = RefCRD(64, 64, 128, N_DATA, tau=0.07, momentum=0.5, noise_prob=1 / (N_DATA - 1), eps=0.0)
        pairs += [("discrepancies.plugins.0.embed_source.", "crd.embed_s."),
                  ("discrepancies.plugins.0.embed_target.", "crd.embed_t."),
                  ("discrepancies.plugins.0.memory_source", "crd.memory_v1"),
                  ("discrepancies.plugins.0.memory_target", "crd.memory_v2")]
        state = {k: v for k, v in system.state_dict().items() if not k.endswith("log_z")}
        state["discrepancies.plugins.0.z"] = torch.full((2,), -1.0)
        pairs.append(("discrepancies.plugins.0.z", "crd.z"))
    rename = renamer(pairs)
    ref = ref.to(F64)
    ref.load_state_dict({rename(k): v.clone() for k, v in state.items()}, strict=True)
    ref.train()
    ref.teacher.eval()  # loops.py: every module train(), then the teacher eval()
    return cfg, system, ref, rename


def offline_step(bench: Bench, case: OfflineCase, overrides: tuple[str, ...], monkeypatch) -> dict[str, float]:
    batches = make_batches(case.steps, seed=1, negatives=case.method.startswith("crd"), shared_anchors=2)
    cfg, system, ref, rename = offline_pair(bench, case, overrides, monkeypatch, batches)
    # train_student.py: SGD(trainable_list, lr 0.05, momentum 0.9, weight_decay 5e-4), the teacher not in it
    r = cfg.recipe
    assert (r.lr, r.momentum, r.weight_decay, r.nesterov, r.batch_size) == (0.05, 0.9, 5e-4, False, 64)
    ours = run_discbench(system, cfg, batches)
    theirs = run_reference(ref, offline_objective(case.method), batches, lr=0.05, momentum=0.9, weight_decay=5e-4)
    errors = compare(system, ref, rename, ours, theirs, skip=("log_z", ".z"))
    if case.method.startswith("crd"):
        log_z = system.discrepancies.plugins[0].log_z
        errors["state log_z"] = rel_err(log_z, ref.crd.z.log())
    return errors


@pytest.mark.parametrize("case", OFFLINE, ids=[c.method for c in OFFLINE])
def test_offline_step_matches_repdistiller(bench, case, monkeypatch):
    check(offline_step(bench, case, case.overrides, monkeypatch), case.tol)


# -- online: DML and KDCL ---------------------------------------------------------------------------------------------
def online_objective(method: str) -> Callable[[nn.Module, Batch], Objective]:
    """DML Eq. 4-5: L_k = CE(p_k) + KL(p_peer || p_k), the peer's prediction a constant, each network updated by its
    own loss (AberHu's train_dml.py: one optimizer per network, both losses from the same forward; lambda_kd = 1).
    KDCL-MinLogit: L_k = CE(z_k) + lambda T^2 KL(softmax(z_t / T) || softmax(z_k / T)), z_t the MinLogit target of
    the detached logits, lambda = 1, T = 3 (discbench's choice; the paper's value is not in any public code)."""

    def objective(ref: nn.Module, b: Batch) -> Objective:
        z1, z2 = ref.net1(b.x)[1], ref.net2(b.x)[1]
        if method == "dml":
            l1 = F.cross_entropy(z1, b.y) + hinton_kd(z1, z2.detach(), 1.0)
            l2 = F.cross_entropy(z2, b.y) + hinton_kd(z2, z1.detach(), 1.0)
        else:
            target = min_logit_target(z1.detach(), z2.detach(), b.y)
            l1 = F.cross_entropy(z1, b.y) + 1.0 * hinton_kd(z1, target, 3.0)
            l2 = F.cross_entropy(z2, b.y) + 1.0 * hinton_kd(z2, target, 3.0)
        return Objective(l1 + l2, [(l1, ("net1.",)), (l2, ("net2.",))])

    return objective


def online_step(bench: Bench, method: str, overrides: tuple[str, ...]) -> dict[str, float]:
    torch.manual_seed(0)
    cfg = bench.resolve(method, "resnet20", "cifar100", "paper", protocol="online", overrides=overrides,
                        partner={"peer": "resnet32"})
    system = PROTOCOLS.get("online")(cfg).to(F64)
    ref = nn.Module()
    ref.net1, ref.net2 = RefResNet(20), RefResNet(32)
    rename = renamer(resnet_renames("net1.", "net1.") + resnet_renames("net2.", "net2."))
    ref = ref.to(F64)
    ref.load_state_dict({rename(k): v.clone() for k, v in system.state_dict().items()}, strict=True)
    ref.train()
    batches = make_batches(1, seed=2)
    r = cfg.recipe  # the benchmark's shared recipe (AberHu: nesterov, wd 1e-4; see the facts file)
    ours = run_discbench(system, cfg, batches)
    theirs = run_reference(ref, online_objective(method), batches, r.lr, r.momentum, r.weight_decay)
    return compare(system, ref, rename, ours, theirs)


# DML and KDCL replace the protocol's KD (their plugins are `replaces_kd`): the default configuration is the paper's.
@pytest.mark.parametrize("method", ["dml", "kdcl"])
def test_online_step_matches_the_paper(bench, method):
    check(online_step(bench, method, ()), FLOAT64_TOL)


# -- self: BYOT -------------------------------------------------------------------------------------------------------
BYOT_ALPHA, BYOT_T, BYOT_BETA = 0.1, 3.0, 1e-6  # train.py --alpha, --temperature, --beta


def byot_objective(beta: float) -> Callable[[nn.Module, Batch], Objective]:
    """BYOT train.py: (1 - alpha) * sum of the four CEs + alpha * sum_i T^2 CE(softmax(out / T).detach(), mid_i / T)
    + beta * sum_i sum((mid_fea_i - final_fea.detach())^2 * mask), mask = (mid_fea_i > 0) | (final_fea > 0), sums
    over the batch. The value compared with discbench's KL form subtracts alpha T^2 sum_i H(softmax(out / T)), the
    teacher entropy BYOT's soft cross-entropy carries (a constant: no gradient)."""
    a, t = BYOT_ALPHA, BYOT_T

    def objective(ref: nn.Module, b: Batch) -> Objective:
        out, middle_out, final_fea, middle_fea = ref(b.x)
        ce = F.cross_entropy(out, b.y) + sum(F.cross_entropy(m, b.y) for m in middle_out)
        soft = F.softmax(out / t, dim=1).detach()
        kd = sum(-(soft * F.log_softmax(m / t, dim=1)).sum(1).mean() * t * t for m in middle_out)
        target = final_fea.detach()
        feature = sum(((f - target) ** 2 * ((f > 0) | (target > 0)).to(F64)).abs().sum() for f in middle_fea)
        total = (1 - a) * ce + a * kd + beta * feature
        entropy = -(soft * F.log_softmax(out.detach() / t, dim=1)).sum(1).mean()
        return Objective(total - a * t * t * len(middle_out) * entropy, [(total, ("",))])

    return objective


def byot_sizes(loss: str) -> tuple[str, ...]:
    """BYOT sums its feature loss over the batch, discbench averages it: l2's declared beta (BYOT's 1e-6 x 128) is
    for a batch of 128, this test's batch is BATCH."""
    return (f"loss.beta={BYOT_BETA * BATCH!r}",) if loss == "l2" else ()


def self_step(bench: Bench, loss: str, overrides: tuple[str, ...]) -> dict[str, float]:
    torch.manual_seed(0)
    cfg = bench.resolve(loss, "resnet20", "cifar100", "paper", protocol="self", overrides=overrides)
    assert cfg.protocol.kd_temperature == BYOT_T and cfg.protocol.exit_ce_weight == 1.0
    system = PROTOCOLS.get("self")(cfg).to(F64)
    ref = RefBYOT(20).to(F64)
    pairs = resnet_renames("net.", "body.")
    for i in range(3):
        pairs += [(f"exits.{i}.bottleneck.", f"bottleneck{i + 1}_1."),
                  (f"exits.{i}.classifier.2.", f"middle_fc{i + 1}.")]
    rename = renamer(pairs)
    ref.load_state_dict({rename(k): v.clone() for k, v in system.state_dict().items()}, strict=True)
    ref.train()
    batches = make_batches(1, seed=3)
    beta = BYOT_BETA if loss == "l2" else 0.0
    ours = run_discbench(system, cfg, batches)
    # BYOT train.py: SGD(lr 0.1, momentum 0.9, weight_decay 5e-4), no nesterov
    theirs = run_reference(ref, byot_objective(beta), batches, lr=0.1, momentum=0.9, weight_decay=5e-4)
    return compare(system, ref, rename, ours, theirs)


@pytest.mark.parametrize("loss", ["ce_kd", "l2"])
def test_self_step_matches_byot(bench, loss):
    """The self protocol's default configuration (kd_weight = BYOT's alpha, (1 - alpha) on every CE) is BYOT's
    objective and update (the paper recipe's SGD is BYOT's: lr 0.1, momentum 0.9, weight decay 5e-4)."""
    check(self_step(bench, loss, byot_sizes(loss)), FP32_FLOOR if loss == "l2" else FLOAT64_TOL)
