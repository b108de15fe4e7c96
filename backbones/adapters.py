"""Any torchvision classifier (``tv:NAME``) or timm model with feature support (``timm:NAME``) as a backbone.

The network is built untrained by its own library with the dataset's class count (``num_classes``: the classifier is
rebuilt for the dataset) and input channels, traced with ``torch.fx`` (torchvision's feature-extraction tracer,
``torchvision.models.feature_extraction.NodePathTracer``, with timm's untraceable modules and functions as leaves
for timm models) and split at four stage boundaries into ``stages`` (modules 1..4) and ``head`` (everything after
module 4: the library's own pooling, head convolutions and classifier).

Stage boundaries come from the model's own description:

* timm: the last four entries of ``feature_info`` (what ``features_only=True`` returns); module i ends with the
  module ``feature_info[-4 + i - 1]['module']``.
* torchvision: a shape propagation of the traced graph at 224x224 gives every node's stride; the candidate
  boundaries are the nodes after which one tensor alone carries the computation (nothing computed before it is
  used after it); module i ends at the last candidate of the i-th of the four deepest strides before global
  pooling (for ResNets: ``layer1``..``layer4``; for EfficientNet: the last block of each stride).

A boundary must be such a single-tensor cut in either case (a skip connection across it would need two inputs);
a model without four usable boundaries is refused in one line. The FeatureSpecs come from a probe forward at the
dataset's image size, module by module, which also names the module whose map collapses to zero size when the
image is too small for the network's strides. No stem is adapted: the network runs at the dataset's resolution as
its library defines it (a stride-32 ImageNet network ends at 1x1 on 32x32 inputs).
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import fx, nn

from discbench.api import Backbone, FeatureSpec
from discbench.errors import DiscbenchError

REFERENCE_SIZE = 224  # image side for finding torchvision stage boundaries by stride
PREFIXES = ("tv:", "timm:")


def timm_available() -> bool:
    return importlib.util.find_spec("timm") is not None


def _did_you_mean(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def check_name(key: str) -> None:
    """Raise a one-line ``DiscbenchError`` if ``key`` (``tv:NAME`` or ``timm:NAME``) names no model."""
    prefix, _, model = key.partition(":")
    if not model:
        raise DiscbenchError(f"backbone '{key}' names no model; write {prefix}:NAME")
    if prefix == "tv":
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)  # classification models only
        if model not in names:
            raise DiscbenchError(f"torchvision has no classification model '{model}' (backbone '{key}')"
                                 f"{_did_you_mean(model, names)} (list: torchvision.models.list_models())")
    else:
        if not timm_available():
            raise DiscbenchError(f"backbone '{key}' needs timm, which is not installed; "
                                 f"pip install 'discbench[timm]' (or pip install timm)")
        import timm

        if not timm.is_model(model):
            raise DiscbenchError(f"timm has no model '{model}' (backbone '{key}')"
                                 f"{_did_you_mean(model, timm.list_models())} (list: timm.list_models())")


def adapter_class(key: str) -> type[Backbone]:
    """The backbone class of ``tv:NAME`` / ``timm:NAME`` (checked to exist; built only when instantiated)."""
    check_name(key)
    prefix, _, model = key.partition(":")
    base = TorchvisionBackbone if prefix == "tv" else TimmBackbone
    return type(f"{base.__name__}[{model}]", (base,), {"name": key, "model_name": model,
                                                       "__module__": __name__})


def _single_tensor_cuts(graph: fx.Graph) -> list[fx.Node]:
    """Nodes after which only that node's value is used later (the graph can be cut there into two modules)."""
    nodes = list(graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    expires: dict[int, list[fx.Node]] = {}
    for n in nodes:
        if n.op != "get_attr" and n.users:
            expires.setdefault(max(index[u] for u in n.users), []).append(n)
    live: set[fx.Node] = set()
    cuts = []
    for k, node in enumerate(nodes):
        live.difference_update(expires.get(k, ()))
        if node.op != "get_attr" and node.users:
            live.add(node)
        if node.op not in ("placeholder", "output", "get_attr") and live == {node}:
            cuts.append(node)
    return cuts


def _split(gm: fx.GraphModule, boundaries: list[fx.Node]) -> list[fx.GraphModule]:
    """``gm`` as len(boundaries) + 1 modules, each a graph of one input: the nodes up to and including the first
    boundary, then up to the next, ..., then from the last boundary to the output. Parameters and submodules are
    shared with ``gm`` (``fx.GraphModule`` copies references to the attributes the graph uses)."""
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    (x,) = [n for n in gm.graph.nodes if n.op == "placeholder"]
    (out,) = [n for n in gm.graph.nodes if n.op == "output"]
    ends = [*(nodes.index(b) for b in boundaries), len(nodes) - 1]
    modules, start, inp = [], 0, x
    for end in ends:
        graph = fx.Graph()
        env = {inp: graph.placeholder("x")}

        def arg(a: fx.Node, env: dict = env, graph: fx.Graph = graph) -> fx.Node:
            if a not in env:
                if a.op != "get_attr":  # cannot happen at a single-tensor cut
                    raise DiscbenchError(f"node '{a.name}' crosses a stage boundary")
                env[a] = graph.get_attr(a.target)
            return env[a]

        for n in nodes[start:end + 1]:
            env[n] = graph.node_copy(n, arg)
        result = out.args[0] if end == len(nodes) - 1 else nodes[end]
        graph.output(fx.node.map_arg(result, arg))
        modules.append(fx.GraphModule(gm, graph))
        start, inp = end + 1, nodes[end]
    return modules


def _module_depth(cuts: list[fx.Node], nodes: list[fx.Node], qualname: dict) -> dict[fx.Node, int]:
    """For each cut: the depth of the shallowest module (qualified name) whose last node it is (``layer1``: 1,
    ``features.3.0.block.0``: 4); a node that ends no module gets its own name's depth."""
    last: dict[str, fx.Node] = {}
    for n in nodes:
        parts = qualname.get(n, n.name).split(".")
        for k in range(1, len(parts) + 1):
            last[".".join(parts[:k])] = n
    depth = {}
    for n in cuts:
        parts = qualname.get(n, n.name).split(".")
        depth[n] = min((k for k in range(1, len(parts) + 1) if last[".".join(parts[:k])] is n), default=len(parts))
    return depth


class AdaptedBackbone(Backbone):
    """A library's network traced and split into four modules at its stage boundaries (see the module docstring)."""

    model_name: ClassVar[str]
    library: ClassVar[str]

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        model = self.build(in_channels, num_classes).eval()
        tracer = self.tracer()
        graph = tracer.trace(model)
        gm = fx.GraphModule(tracer.root, graph)
        qualname = dict(tracer.node_to_qualname)
        cuts = _single_tensor_cuts(graph)
        boundaries, reductions = self.boundaries(model, gm, cuts, qualname, in_channels)
        self.boundary_names = tuple(qualname.get(b, b.name) for b in boundaries)
        modules = _split(gm, boundaries)
        self.stages = nn.ModuleList(modules[:4])
        self.head = modules[4]
        self.feature_specs = self._probe(in_channels, image_size, num_classes, reductions)
        self.train()

    # -- what each library provides -------------------------------------------------------------------------------
    def build(self, in_channels: int, num_classes: int) -> nn.Module:  # pragma: no cover - overridden
        raise NotImplementedError

    def tracer(self) -> fx.Tracer:  # pragma: no cover - overridden
        raise NotImplementedError

    def boundaries(self, model: nn.Module, gm: fx.GraphModule, cuts: list[fx.Node], qualname: dict,
                   in_channels: int) -> tuple[list[fx.Node], list[int]]:  # pragma: no cover - overridden
        """The last node of each of the four modules, and each module's stride relative to the input."""
        raise NotImplementedError

    def _refuse(self, why: str) -> DiscbenchError:
        return DiscbenchError(f"backbone '{self.name}' has no usable stages: {why}")

    # -- the probe ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _probe(self, in_channels: int, image_size: int, num_classes: int,
               reductions: list[int]) -> tuple[FeatureSpec, ...]:
        """Run module by module on a (2, C, S, S) batch; the specs of what comes out, or a one-line error naming
        the module whose map collapses to zero size (or whose side is not what its stride gives)."""
        self.eval()
        x = torch.zeros(2, in_channels, image_size, image_size)
        specs = []
        for i, (stage, reduction) in enumerate(zip(self.stages, reductions, strict=True), start=1):
            where = (f"backbone '{self.name}' at {image_size}x{image_size}: module {i} (stride {reduction}, ends at "
                     f"'{self.boundary_names[i - 1]}')")
            try:
                x = stage(x)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise DiscbenchError(f"{where} collapses to zero size ({first}); use larger images") from exc
            if x.dim() != 4:
                raise self._refuse(f"module {i} outputs a {x.dim()}-d tensor, not a (B, C, H, W) map")
            if x.shape[2] == 0 or x.shape[3] == 0:
                raise DiscbenchError(f"{where} collapses to zero size ({x.shape[2]}x{x.shape[3]}); "
                                     f"use larger images")
            spec = FeatureSpec(channels=x.shape[1], reduction=reduction)
            side = spec.spatial(image_size)
            if tuple(x.shape[2:]) != (side, side):
                raise DiscbenchError(f"{where} is {x.shape[2]}x{x.shape[3]}, not {side}x{side} (the network "
                                     f"rounds sides down); use an image size divisible by {reduction}")
            specs.append(spec)
        try:
            logits = self.head(x)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise DiscbenchError(f"backbone '{self.name}' at {image_size}x{image_size}: the head after module 4 "
                                 f"fails ({first}); use larger images") from exc
        if tuple(logits.shape) != (2, num_classes):
            raise self._refuse(f"the head outputs shape {tuple(logits.shape)}, not (batch, {num_classes}) logits")
        return tuple(specs)


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Give the first ``nn.Conv2d`` ``in_channels`` inputs (a fresh, He-initialised layer of the same shape)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return
            new = nn.Conv2d(in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                            module.dilation, 1 if module.groups == 1 else in_channels, module.bias is not None,
                            module.padding_mode)
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
            return


class TorchvisionBackbone(AdaptedBackbone):
    library = "torchvision"

    def build(self, in_channels: int, num_classes: int) -> nn.Module:
        import torchvision

        try:
            model = torchvision.models.get_model(self.model_name, weights=None, num_classes=num_classes)
        except Exception as exc:
            raise self._refuse(f"torchvision cannot build it with num_classes={num_classes} ({exc})") from exc
        _replace_first_conv(model, in_channels)
        return model

    def tracer(self) -> fx.Tracer:
        from torchvision.models.feature_extraction import NodePathTracer
        from torchvision.ops import StochasticDepth

        # StochasticDepth reads self.training in forward: a leaf keeps it switching with train()/eval().
        return NodePathTracer(leaf_modules=[StochasticDepth])

    def boundaries(self, model, gm, cuts, qualname, in_channels):
        from torch.fx.passes.shape_prop import ShapeProp

        try:
            ShapeProp(gm).propagate(torch.zeros(1, in_channels, REFERENCE_SIZE, REFERENCE_SIZE))
        except Exception as exc:
            raise self._refuse(f"a probe at {REFERENCE_SIZE}x{REFERENCE_SIZE} fails ({exc})") from exc
        nodes = list(gm.graph.nodes)
        depth = _module_depth(cuts, nodes, qualname)
        level: dict[int, fx.Node] = {}  # stride -> the cut at that stride that ends the shallowest module
        for node in cuts:
            meta = node.meta.get("tensor_meta")
            shape = getattr(meta, "shape", None)
            if shape is None or len(shape) != 4 or shape[2] <= 1:
                continue
            stride = round(REFERENCE_SIZE / shape[2])
            if stride & (stride - 1) == 0 and (stride not in level or depth[node] <= depth[level[stride]]):
                level[stride] = node
        if len(level) < 4:
            raise self._refuse(f"it has {len(level)} strides with a single-tensor boundary before global "
                               f"pooling ({sorted(level)}), four are needed")
        strides = sorted(level)[-4:]
        return [level[s] for s in strides], strides


class TimmBackbone(AdaptedBackbone):
    library = "timm"

    def build(self, in_channels: int, num_classes: int) -> nn.Module:
        import timm

        try:
            model = timm.create_model(self.model_name, pretrained=False, num_classes=num_classes,
                                      in_chans=in_channels)
        except Exception as exc:
            raise self._refuse(f"timm cannot build it ({type(exc).__name__}: {exc})") from exc
        return model

    def tracer(self) -> fx.Tracer:
        from timm.layers import DropPath
        from timm.layers._fx import get_notrace_functions, get_notrace_modules
        from torchvision.models.feature_extraction import NodePathTracer

        return NodePathTracer(leaf_modules=[*get_notrace_modules(), DropPath],
                              autowrap_functions=tuple(get_notrace_functions()))

    def boundaries(self, model, gm, cuts, qualname, in_channels):
        info = getattr(model, "feature_info", None)
        if not isinstance(info, list) or len(info) < 4:
            raise self._refuse("timm declares fewer than four feature levels (feature_info) for it")
        wanted = [entry["module"] for entry in info[-4:]]
        out = []
        for module in wanted:
            matching: Callable[[fx.Node], bool] = lambda n, m=module: (  # noqa: E731
                qualname.get(n, "") == m or qualname.get(n, "").startswith(m + "."))
            inside = [n for n in gm.graph.nodes if matching(n)]
            if not inside:
                raise self._refuse(f"its feature module '{module}' does not appear in the traced graph")
            if inside[-1] not in cuts:
                raise self._refuse(f"the output of its feature module '{module}' is not the only tensor that "
                                   f"later layers use")
            out.append(inside[-1])
        return out, [int(entry["reduction"]) for entry in info[-4:]]
