"""Critic kernels of the MI estimators, with one dispatch point.

Layering (Liger-Kernel's): ``jsd_ref`` is the naive oracle and never imports triton; ``jsd_torch`` is a streamed
``autograd.Function`` (the CPU path); ``jsd_triton`` holds the fused Triton kernels (the CUDA path), imported only
when a Triton implementation is called. ``select_impl`` picks one: ``DISCBENCH_IMPL=ref|torch|triton`` forces it
(an impossible request raises), otherwise Triton on CUDA devices of compute capability >= 8.0 when it imports and the
streamed path everywhere else. The trainer records ``describe_impl``: the implementation, and why Triton was not
used on a CUDA device (e.g. ``torch (triton: cuda:0 has compute capability 7.5 < 8.0)``); the dispatch reads only
the first word of such a string. ``CRITICS`` is the table behind the dispatch.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from discbench.errors import DiscbenchError
from discbench.kernels.jsd_ref import jsd_mi_loss_ref, nce_mi_loss_ref
from discbench.kernels.jsd_torch import jsd_mi_loss_torch, nce_mi_loss_torch

IMPLS = ("ref", "torch", "triton")
Critic = Callable[[Tensor, Tensor], Tensor]


def _triton(name: str) -> Critic:
    """``jsd_triton.<name>``, imported on first call (importing triton defines kernels: keep it out of CPU runs)."""

    def call(local: Tensor, global_: Tensor) -> Tensor:
        return getattr(importlib.import_module("discbench.kernels.jsd_triton"), name)(local, global_)

    call.__name__ = name
    return call


CRITICS: dict[str, dict[str, Critic]] = {  # loss -> implementation -> function(local (B, N, D), global_ (B, D))
    "jsd": {"ref": jsd_mi_loss_ref, "torch": jsd_mi_loss_torch, "triton": _triton("jsd_mi_loss_triton")},
    "nce": {"ref": nce_mi_loss_ref, "torch": nce_mi_loss_torch, "triton": _triton("nce_mi_loss_triton")},
}


MIN_CAPABILITY = (8, 0)  # bf16 tl.dot (the dtype training's autocast gives the critic) needs sm_80


def triton_unusable(device: torch.device | str) -> str | None:
    """Why the Triton kernels cannot run on ``device`` (None: they can). They run on CUDA devices of compute
    capability >= 8.0, and on CPU tensors only under ``TRITON_INTERPRET=1``."""
    device = torch.device(device)
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"triton runs on CUDA devices, this is {device.type}"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability < MIN_CAPABILITY:
            return (f"{device} has compute capability {capability[0]}.{capability[1]} < "
                    f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}")
    return None


def triton_usable(device: torch.device | str) -> bool:
    return triton_unusable(device) is None


def impl_name(impl: str) -> str:
    """The implementation in a recorded ``critic_impl`` string ("torch (triton: ...)" -> "torch")."""
    return impl.split(" ", 1)[0]


def _requested() -> str | None:
    """The implementation ``$DISCBENCH_IMPL`` asks for (None: unset or "auto")."""
    requested = os.environ.get("DISCBENCH_IMPL", "").strip().lower()
    return None if requested in ("", "auto") else requested


def select_impl(device: torch.device | str = "cpu") -> str:
    """The critic implementation for ``device``: ``$DISCBENCH_IMPL`` if set, else triton on CUDA, else torch."""
    device = torch.device(device)
    requested = _requested()
    if requested is None:
        return "triton" if device.type == "cuda" and triton_usable(device) else "torch"
    if requested not in IMPLS:
        raise DiscbenchError(f"DISCBENCH_IMPL='{requested}' is not one of {', '.join(IMPLS)} (or auto)")
    if requested == "triton" and not triton_usable(device):
        raise DiscbenchError(f"DISCBENCH_IMPL=triton needs a CUDA device of compute capability >= 8.0 (or "
                             f"TRITON_INTERPRET=1) and an importable triton: {triton_unusable(device)}. Use "
                             f"DISCBENCH_IMPL=torch")
    return requested


def describe_impl(device: torch.device | str = "cpu") -> str:
    """``select_impl(device)``, with the reason when a CUDA device does not get the Triton kernels (what a run
    records as ``critic_impl``; the dispatch accepts it). Calls whose shape fits no Triton config also fall back,
    per call, with a warning: ``jsd_triton.fallbacks()`` lists them."""
    device = torch.device(device)
    impl = select_impl(device)
    if device.type == "cuda" and impl == "torch" and _requested() is None:
        return f"torch (triton: {triton_unusable(device)})"
    return impl


def available_impls(device: torch.device | str = "cpu") -> list[str]:
    """Implementations that can run on ``device`` (triton only where ``triton_usable``)."""
    device = torch.device(device)
    return [impl for impl in IMPLS if impl != "triton" or triton_usable(device)]


_RAN: list[set[str]] = []  # open ``record_impls`` scopes


@contextlib.contextmanager
def record_impls(ran: set[str]) -> Iterator[set[str]]:
    """Add to ``ran`` the implementations that critic calls inside the ``with`` block run (the trainer records them:
    a run without a critic records none)."""
    _RAN.append(ran)
    try:
        yield ran
    finally:
        _RAN.remove(ran)


def _dispatch(loss: str, local: Tensor, global_: Tensor, impl: str | None) -> Tensor:
    """Run ``CRITICS[loss]`` of ``impl`` (a name, or a recorded ``describe_impl`` string) and note it as run."""
    impl = impl or select_impl(local.device)
    for ran in _RAN:
        ran.add(impl)
    return CRITICS[loss][impl_name(impl)](local, global_)


def jsd_mi_loss(local: Tensor, global_: Tensor, impl: str | None = None) -> Tensor:
    """MUSE Eq. 5 JSD critic loss over local/global views, dispatched to ``impl`` (default: ``select_impl``).

    Shape: local (B, N, D), global_ (B, D) -> scalar (fp32).
    """
    return _dispatch("jsd", local, global_, impl)


def nce_mi_loss(local: Tensor, global_: Tensor, impl: str | None = None) -> Tensor:
    """InfoNCE critic loss over local/global views (MIMKD's contrastive bound), dispatched like ``jsd_mi_loss``.

    Shape: local (B, N, D), global_ (B, D) -> scalar (fp32).
    """
    return _dispatch("nce", local, global_, impl)
