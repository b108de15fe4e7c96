"""The critic kernels against their oracles: values and gradients, dtypes, edge shapes, the dispatch, and a training
run per implementation. Triton runs in its own process under the interpreter (tests/triton/)."""

from __future__ import annotations

import ast
import math
import os

import pytest
import torch
from torch.autograd import gradcheck

from discbench.errors import DiscbenchError
from discbench.kernels import (
    CRITICS,
    IMPLS,
    available_impls,
    describe_impl,
    impl_name,
    jsd_mi_loss,
    jsd_torch,
    nce_mi_loss,
    select_impl,
)
from discbench.kernels.jsd_ref import jsd_mi_loss_ref, nce_mi_loss_ref
from tests.conftest import REPO, TINY, requires_fashion_mnist
from tests.critic_cases import TOLERANCES, codes, value_and_grads

LOSSES = ("jsd", "nce")
CPU_IMPLS = [i for i in available_impls("cpu") if i != "ref"]  # everything the main process can run on CPU
# (B, N, D): B = 1 (no negatives) and 2, sizes that are not powers of two, several chunks with a ragged last one
SHAPES = [(1, 5, 7), (2, 3, 16), (7, 3, 10), (5, 37, 24), (9, 4, 3)]


@pytest.fixture
def small_chunks(monkeypatch):
    """About 64 scores per chunk, so that every shape above walks several chunks of the streamed path."""
    monkeypatch.setattr(jsd_torch, "BLOCK_ELEMENTS", 64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("loss", LOSSES)
def test_every_implementation_matches_the_reference(loss, impl, shape, dtype, small_chunks):
    local, global_ = codes(*shape, dtype=dtype, scale=3.0)
    want = value_and_grads(CRITICS[loss]["ref"], local, global_)
    got = value_and_grads(CRITICS[loss][impl], local, global_)
    assert got[0].dtype == torch.float32 and got[1].dtype == dtype and got[2].dtype == dtype
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOLERANCES[dtype])


@pytest.mark.parametrize("loss", LOSSES)
def test_large_scores_stay_finite_and_exact(loss, small_chunks):
    """Scores of +-60: softplus, sigmoid and logsumexp must not overflow anywhere."""
    local, global_ = codes(6, 5, 8, scale=60.0)
    want = value_and_grads(CRITICS[loss]["ref"], local, global_)
    got = value_and_grads(CRITICS[loss]["torch"], local, global_)
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(7, 3, 10), (5, 37, 24)])
def test_one_chunk_keeps_the_scores_and_a_second_backward_sees_them_unchanged(shape):
    """Default chunks: these shapes fit in one, so JSD's backward reads forward's scores instead of recomputing them.
    Gradients equal the reference's, twice over one graph, and d local is a tensor of its own (not a view), which
    lets autograd add MUSE's second critic's d local into it in place."""
    assert jsd_torch._single_chunk(shape[0], jsd_torch.block_size(shape[0], shape[1]))
    local, global_ = codes(*shape, scale=3.0)
    want = value_and_grads(jsd_mi_loss_ref, local, global_)
    lo, gl = local.clone().requires_grad_(), global_.clone().requires_grad_()
    loss = jsd_torch.jsd_mi_loss_torch(lo, gl)
    first = torch.autograd.grad(loss * 1.7, (lo, gl), retain_graph=True)  # value_and_grads' upstream gradient
    second = torch.autograd.grad(loss * 1.7, (lo, gl))
    torch.testing.assert_close(loss, want[0], **TOLERANCES[torch.float32])
    for a, b, w in zip(first, second, want[1:], strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, w, **TOLERANCES[torch.float32])
    d_local, _ = jsd_torch._streamed_grads(lo.detach(), gl.detach(), shape[0], None, lambda s, *_: s)
    assert d_local._base is None and d_local.shape == shape


@pytest.mark.parametrize("function", [jsd_torch.StreamedJSD, jsd_torch.StreamedNCE])
@pytest.mark.parametrize("shape,block", [((1, 3, 4), 1), ((2, 2, 3), 1), ((5, 3, 4), 2)])
def test_streamed_gradients_match_finite_differences(function, shape, block):
    local = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    global_ = torch.randn(shape[0], shape[2], dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda lo, gl: function.apply(lo, gl, block), (local, global_))


def test_nce_closed_forms():
    # all scores equal: every softmax is uniform, the loss is log B (and the MI bound log B - loss is 0)
    assert nce_mi_loss_ref(torch.zeros(5, 3, 4), torch.zeros(5, 4)).item() == pytest.approx(math.log(5))
    assert jsd_torch.nce_mi_loss_torch(torch.zeros(5, 3, 4), torch.zeros(5, 4)).item() == pytest.approx(math.log(5))
    # a perfect critic (positives far above negatives) drives it to 0
    eye = torch.eye(4) * 30
    assert jsd_torch.nce_mi_loss_torch(eye[:, None, :].expand(4, 3, 4), eye).item() < 1e-10


def test_streamed_memory_is_linear_in_the_batch(small_chunks):
    """With chunks of ~64 scores, no buffer grows like B^2: the peak is d local plus one chunk."""
    from discbench.critic_bench import cpu_peak_bytes

    def peak(fn, b):
        local, global_ = codes(b, 16, 8)
        return cpu_peak_bytes(lambda: fn(local, global_).backward())

    ref = [peak(jsd_mi_loss_ref, b) for b in (16, 64)]
    streamed = [peak(jsd_torch.jsd_mi_loss_torch, b) for b in (16, 64)]
    assert ref[1] / ref[0] > 12  # B^2 N score tensors: 16x
    assert streamed[1] / streamed[0] < 4.5  # B N D gradient: 4x
    d_local, chunk = 64 * 16 * 8 * 4, 16 * 64 * 4  # bytes: the gradient, one image's (N, B) scores
    assert d_local < streamed[1] <= d_local + 2 * chunk


def test_dispatch_routes_to_the_table(monkeypatch):
    local, global_ = codes(3, 4, 5)
    calls = []
    for loss in LOSSES:
        for impl in ("ref", "torch"):
            monkeypatch.setitem(CRITICS[loss], impl, lambda lo, gl, name=(loss, impl): calls.append(name))
    for impl in ("ref", "torch"):
        jsd_mi_loss(local, global_, impl=impl)
        nce_mi_loss(local, global_, impl=impl)
    monkeypatch.setenv("DISCBENCH_IMPL", "ref")
    jsd_mi_loss(local, global_)
    assert calls == [("jsd", "ref"), ("nce", "ref"), ("jsd", "torch"), ("nce", "torch"), ("jsd", "ref")]
    assert all(set(table) == set(IMPLS) for table in CRITICS.values())


def test_select_impl(monkeypatch):
    monkeypatch.delenv("DISCBENCH_IMPL", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert select_impl("cpu") == "torch"  # auto: the streamed path off CUDA
    monkeypatch.setenv("DISCBENCH_IMPL", "auto")
    assert select_impl(torch.device("cpu")) == "torch"
    for impl in ("ref", "torch", " Torch "):
        monkeypatch.setenv("DISCBENCH_IMPL", impl)
        assert select_impl("cpu") == impl.strip().lower()
    monkeypatch.setenv("DISCBENCH_IMPL", "triton")
    with pytest.raises(DiscbenchError, match="DISCBENCH_IMPL=triton needs a CUDA device"):
        select_impl("cpu")
    monkeypatch.setenv("DISCBENCH_IMPL", "cuda")
    with pytest.raises(DiscbenchError, match="'cuda' is not one of ref, torch, triton"):
        select_impl("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("DISCBENCH_IMPL", "triton")
    assert select_impl("cpu") == "triton" and "triton" in available_impls("cpu")
    monkeypatch.delenv("DISCBENCH_IMPL")
    assert select_impl("cpu") == "torch"  # the interpreter is for tests, never picked on its own


def test_cuda_devices_below_compute_capability_8_get_the_streamed_path_and_the_reason(monkeypatch):
    """No GPU needed: the capability query is the only CUDA call on this path."""
    pytest.importorskip("triton")
    monkeypatch.delenv("DISCBENCH_IMPL", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cuda = torch.device("cuda:1")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert select_impl(cuda) == "torch" and "triton" not in available_impls(cuda)
    assert describe_impl(cuda) == "torch (triton: cuda:1 has compute capability 7.5 < 8.0)"
    monkeypatch.setenv("DISCBENCH_IMPL", "triton")
    with pytest.raises(DiscbenchError, match="compute capability >= 8.0.*cuda:1 has compute capability 7.5"):
        select_impl(cuda)
    monkeypatch.setenv("DISCBENCH_IMPL", "auto")
    assert describe_impl(cuda) == "torch (triton: cuda:1 has compute capability 7.5 < 8.0)"
    monkeypatch.setenv("DISCBENCH_IMPL", "torch")
    assert describe_impl(cuda) == "torch"  # asked for: no reason to give
    monkeypatch.delenv("DISCBENCH_IMPL")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert select_impl(cuda) == describe_impl(cuda) == "triton"
    assert describe_impl("cpu") == "torch"


def test_recorded_impl_strings_dispatch_on_their_first_word(monkeypatch):
    local, global_ = codes(3, 4, 5)
    calls = []
    monkeypatch.setitem(CRITICS["jsd"], "torch", lambda lo, gl: calls.append("torch"))
    jsd_mi_loss(local, global_, impl="torch (triton: cuda:0 has compute capability 7.5 < 8.0)")
    assert calls == ["torch"] and impl_name("triton") == "triton"


@pytest.mark.parametrize("module", ["jsd_ref.py", "jsd_torch.py"])
def test_reference_and_cpu_paths_never_import_triton(module):
    tree = ast.parse((REPO / "discbench" / "kernels" / module).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name and (name.startswith("triton") or name.endswith("jsd_triton")) for name in imported)


@requires_fashion_mnist
@pytest.mark.slow
def test_training_runs_agree_across_implementations(bench, monkeypatch):
    """Four SGD steps of MUSE self-distillation per implementation: the same per-step terms.

    The local encoder recomputes at any size here, so the whole streamed path runs. Step 0 is the same forward; later
    steps differ by the gradients' rounding, which these runs amplify (a 1e-7 relative perturbation of the initial
    weights moves the loss by 1e-3 after five steps at lr 0.05), hence a low lr. Measured: <= 1e-5 relative.
    """
    import discbench.train as train
    from discbench.data import open_dataset
    from discbench.losses import muse

    monkeypatch.setattr(muse, "RECOMPUTE_MIN_ELEMENTS", 0)
    cfg = bench.resolve("mi_x_si", "smallnet", "fashion-mnist", "smoke", "self", (*TINY, "recipe.lr=0.001"), None)
    data = open_dataset(cfg.dataset, cfg.recipe, torch.device("cpu"))
    check_finite = train.check_finite
    steps: dict[str, list[torch.Tensor]] = {}
    for impl in ("ref", "torch"):
        monkeypatch.setenv("DISCBENCH_IMPL", impl)
        seen = steps.setdefault(impl, [])
        monkeypatch.setattr(train, "check_finite", lambda terms, values, step, epoch, seen=seen: (
            seen.append(values.clone()), check_finite(terms, values, step, epoch)))
        record = train.train(cfg, 0, data, torch.device("cpu"), progress=False).record
        assert record.runtime["critic_impl"] == impl
    assert len(steps["ref"]) == 4
    torch.testing.assert_close(steps["torch"][0], steps["ref"][0], rtol=1e-6, atol=0)
    torch.testing.assert_close(torch.stack(steps["torch"]), torch.stack(steps["ref"]), rtol=1e-4, atol=0)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                    reason="the interpreter runs any config without building it: this tests the compiled dispatch")
def test_triton_configs_are_the_first_that_fit_the_device_chosen_once(monkeypatch):
    """The CUDA selection logic without a GPU: builds are faked, the order, the fit test and the cache are real."""
    from types import SimpleNamespace

    jt = pytest.importorskip("discbench.kernels.jsd_triton")
    local, global_ = codes(128, 4, 16)
    plan = jt._Plan(local.reshape(-1, 16), global_, 4, jt.JSD.value, torch.bfloat16)
    plan.device = torch.device("cuda", 3)
    monkeypatch.setattr(jt, "max_shared_memory", lambda index: 99 * 1024 if index == 3 else 0)
    monkeypatch.setattr(jt, "_CHOSEN", {})
    built = []

    def build(name, config):  # 128-wide tiles spill, the 64-wide 128-row tile needs 100 KiB
        built.append(config)
        kernel = SimpleNamespace(metadata=SimpleNamespace(shared=(100 if config.block_m == 128 else 40) * 1024),
                                 n_spills=8 if config.block_c == 128 else 0)
        kernel._init_handles = lambda: None
        return kernel

    plan.build = build
    order = jt.preferred_configs(128)
    assert [c.block_c for c in order[:3]] == [128, 128, 64] and order[2].block_m == 128
    assert plan.config("bwd") == order[3] == jt.Config(64, 64, 8, 1)
    assert built == order[:4]
    assert plan.config("bwd") == order[3] and len(built) == 4  # cached: no more builds
    assert jt.chosen_configs() == {"cuda:3 bwd jsd torch.float32 torch.float32 torch.bfloat16 ieee B=128 D=16":
                                   "64x64/w8/s1"}
    plan.build = lambda name, config: SimpleNamespace(metadata=SimpleNamespace(shared=1 << 30))
    assert plan.config("fwd") is None  # nothing fits: the caller runs the streamed path
