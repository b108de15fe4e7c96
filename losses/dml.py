"""Deep mutual learning (Zhang, Xiang, Hospedales and Lu, "Deep Mutual Learning", CVPR 2018)."""

from __future__ import annotations

from discbench.api import FeatureSpec, Pairing, Range, Tap
from discbench.losses.kd import KD
from discbench.registry import LOSSES


@LOSSES.register()
class DML(KD):
    """DML's mimicry term for one network: KL(softmax(z_peer).detach() || softmax(z_self)), averaged over the batch.

    Paper §3.1: p_k = softmax(z_k) (Eq. 1), D_KL(p2 || p1) = sum_i sum_m p2^m(x_i) log(p2^m(x_i) / p1^m(x_i)) (Eq. 3),
    and the losses L_Θ1 = L_C1 + D_KL(p2 || p1), L_Θ2 = L_C2 + D_KL(p1 || p2) (Eq. 4, 5). Each network gets its own
    term (the online protocol builds one plugin per ordered pair: source = the network being trained, target = its
    peer), and the peer's prediction is a *constant* target: Algorithm 1 updates Θ1 with Θ2's prediction held fixed,
    then Θ2 with Θ1's. discbench's one optimizer updates both networks synchronously from the same forward (as
    AberHu's ``train_dml.py`` does), not with Algorithm 1's re-computed predictions between the two updates.

    Shape: source (B, K) logits of this network, target (B, K) logits of the peer -> scalar.

    Choices where the paper is silent, after AberHu's ``train_dml.py``
    (github.com/AberHu/Knowledge-Distillation-Zoo): the KL is the
    ``batchmean`` reduction, T = 1 and weight 1 (bench.toml ``beta = 1``). ``temperature`` is exposed for ablations;
    the divergence is KD's (``kd_divergence``, scaled by T^2, a no-op at the default T = 1): the
    plugin is ``kd`` with T = 1 and the peer as target.

    KD_Lib's pitfall this plugin must not repeat: KD_Lib does not detach the peer's output, so one network's
    mimicry loss also trains its peer (towards the first network); here the target is detached inside the plugin
    and the peer receives no gradient from this term (``detaches_target = True``; regression test in
    tests/test_zoo_contrastive.py).
    """

    name = "dml"
    tap = Tap.LOGITS
    pairing = Pairing.LAST
    detaches_target = True
    protocols = frozenset({"online"})  # mutual learning needs a peer; in one network it would be KD with T = 1
    replaces_kd = True  # DML's KL is the peers' only distillation term (inherited from KD; stated for the reader)

    ranges = {"temperature": Range(gt=0)}

    def __init__(self, source: FeatureSpec, target: FeatureSpec, temperature: float = 1.0):
        super().__init__(source, target, temperature=temperature)
