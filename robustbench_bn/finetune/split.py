"""Cut a network after a named module into a frozen front and a trainable head.

AdvBN (Shu et al., NeurIPS 2021, arXiv 2009.08965) perturbs the features at one point of a
network and trains only what follows. Networks do not compose their children in a chain
(torchvision and timm ResNets pool and flatten with functional calls, CIFAR ResNets pad their
shortcuts with lambdas), so the head is taken from the network's ``torch.fx`` graph: every
node after the split module's output, with that output as the head's only input. The front is
the model itself, stopped by a forward hook as soon as the split module returns, so it runs
the model's own code (preprocessing included) and nothing after the split.

A split point is valid when, on a probe batch, the module is called exactly once, the head
reads nothing computed before the split except that module's output (no skip connection
around it, not the input), the output is a post-ReLU feature map ``[N, C, H, W]`` (so that
AdvBN's ReLU is the identity on unperturbed features), no parameterised module runs on both
sides, and the head holds a BatchNorm2d to train.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

from robustbench_bn.errors import ConfigurationError


class _ModuleOutputTracer(fx.Tracer):
    """A tracer that remembers the graph node returned by every call of every submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.module_outputs: dict[str, list[fx.Node | None]] = {}

    def call_module(self, module, forward, args, kwargs):  # noqa: ANN001, ANN201
        output = super().call_module(module, forward, args, kwargs)
        node = output.node if isinstance(output, fx.Proxy) else None
        self.module_outputs.setdefault(self.path_of_module(module), []).append(node)
        return output


class _FrontDone(Exception):  # noqa: N818  (control flow, not an error)
    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        self.features = features


def network_of(model: nn.Module) -> nn.Module:
    """The network inside a NormalizedModel (or the model itself)."""
    return getattr(model, "network", model)


def _probe_images(model: nn.Module) -> torch.Tensor:
    # A private generator: probing must not move the global RNG that the runner seeded.
    generator = torch.Generator().manual_seed(0)
    size = getattr(model, "input_size", None) or 32
    parameter = next(model.parameters(), None)
    images = torch.rand(2, 3, size, size, generator=generator)
    return images.to(parameter.device) if parameter is not None else images


@dataclass
class Split:
    """A model cut after ``split_after``: ``head(front(images)) == model(images)``.

    ``head`` is an ``fx.GraphModule`` whose submodules are the network's own module objects
    (shared, not copied): training the head trains the model, and swapping a module inside
    the head (e.g. a dual BatchNorm) leaves the model's module tree untouched.
    """

    model: nn.Module
    split_after: str
    split_module: nn.Module
    head: fx.GraphModule

    def front(self, images: torch.Tensor) -> torch.Tensor:
        """The features at the split: the model run until the split module returns."""

        def stop(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            raise _FrontDone(output)

        handle = self.split_module.register_forward_hook(stop)
        try:
            self.model(images)
        except _FrontDone as done:
            return done.features
        finally:
            handle.remove()
        raise ConfigurationError(
            f"finetune.split_after={self.split_after!r}: the module was not called on this "
            "batch, so the network's forward depends on its input in a way a split cannot follow."
        )

    def front_modules(self) -> list[nn.Module]:
        head_modules = {id(module) for module in self.head.modules()}
        return [m for m in self.model.modules() if id(m) not in head_modules]


def _trace(network: nn.Module) -> tuple[fx.Graph, _ModuleOutputTracer]:
    tracer = _ModuleOutputTracer()
    try:
        graph = tracer.trace(network)
    except Exception as error:  # fx raises TraceError, TypeError, NotImplementedError, ...
        raise ConfigurationError(
            f"finetune=advbn cannot split {type(network).__name__}: torch.fx cannot trace its "
            f"forward ({type(error).__name__}: {error}). A split needs a forward without "
            "control flow that depends on the input's values."
        ) from error
    return graph, tracer


class _Recorder(fx.Interpreter):
    """Runs the traced graph and keeps (copies of) the values of the chosen nodes."""

    def __init__(self, module: fx.GraphModule, wanted: set[fx.Node]) -> None:
        super().__init__(module)
        self.wanted = wanted
        self.values: dict[fx.Node, object] = {}

    def run_node(self, node: fx.Node) -> object:
        value = super().run_node(node)
        if node in self.wanted:
            # Cloned: a later in-place ReLU would otherwise overwrite it.
            self.values[node] = value.clone() if isinstance(value, torch.Tensor) else value
        return value


def _network_input(model: nn.Module, network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What the model feeds its network (after its own normalization and resizing)."""
    if network is model:
        return images

    def stop(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        raise _FrontDone(inputs[0])

    handle = network.register_forward_pre_hook(stop)
    try:
        model(images)
    except _FrontDone as done:
        return done.features
    finally:
        handle.remove()
    raise ConfigurationError(f"{type(model).__name__} never calls its network.")


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(
        True for _ in module.buffers(recurse=False)
    )


def _split_problem(
    network: nn.Module, nodes: list[fx.Node], calls: list[fx.Node | None], value: object
) -> str | None:
    """Why the network cannot be split at this module's output, or None if it can."""
    if len(calls) != 1:
        return (
            f"the module is called {len(calls)} times in the forward (a shared module), so "
            "its output names no single point; name the block that contains it"
        )
    split_node = calls[0]
    if split_node is None or not isinstance(value, torch.Tensor):
        return "its output is not a single tensor"
    position = nodes.index(split_node)
    head_nodes = nodes[position + 1 :]
    if all(node.op == "output" for node in head_nodes) or all(
        node.op in ("output", "get_attr") for node in head_nodes
    ):
        return "it is the last module, so nothing would be fine-tuned"
    before = set(nodes[:position])
    for node in head_nodes:
        for source in node.all_input_nodes:
            if source in before and source.op != "get_attr":
                what = "the network's input" if source.op == "placeholder" else source.name
                return (
                    f"the part after it also reads {what}, computed before the split (a skip "
                    "connection around the split point), so it cannot run on the split features "
                    "alone"
                )
    if value.dim() != 4:
        return f"its output is not a feature map [N, C, H, W] (shape {list(value.shape)})"
    if float(value.min()) < 0:
        return (
            "its output can be negative (it does not end in a ReLU), so AdvBN's ReLU would "
            "change the unperturbed features"
        )
    head_targets = {str(node.target) for node in head_nodes if node.op == "call_module"}
    front_targets = {str(node.target) for node in nodes[: position + 1] if node.op == "call_module"}
    shared = sorted(
        target
        for target in head_targets & front_targets
        if _has_parameters(network.get_submodule(target))
    )
    if shared:
        return (
            f"the module {shared[0]} (with parameters or statistics) runs both before and after "
            "it, so training the part after it would change the frozen part"
        )
    if not any(
        isinstance(network.get_submodule(target), nn.BatchNorm2d) for target in head_targets
    ):
        return "no BatchNorm2d layer follows it, so there is no BN branch to train"
    return None


def _head_graph(nodes: list[fx.Node], split_node: fx.Node) -> fx.Graph:
    """The nodes after ``split_node``, reading the split features from a placeholder."""
    graph = fx.Graph()
    environment = {split_node: graph.placeholder("features")}
    position = nodes.index(split_node)
    for node in nodes[position + 1 :]:
        for source in node.all_input_nodes:
            if source not in environment and source.op == "get_attr":
                environment[source] = graph.node_copy(source, environment.__getitem__)
        environment[node] = graph.node_copy(node, environment.__getitem__)
    graph.lint()
    return graph


def split_network(model: nn.Module, split_after: str) -> Split:
    """Cut ``model`` after the module ``split_after`` of its network (a dotted path such as
    ``layer1``, ``stem``, ``stages.0``); a name that does not exist, or one after which AdvBN
    cannot be inserted, raises a ConfigurationError listing the valid ones.
    """
    network = network_of(model)
    graph, tracer = _trace(network)
    nodes = list(graph.nodes)
    candidates = {name: calls for name, calls in tracer.module_outputs.items() if name}
    traced = fx.GraphModule(network, graph)
    wanted = {calls[0] for calls in candidates.values() if len(calls) == 1 and calls[0]}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            images = _probe_images(model)
            recorder = _Recorder(traced, wanted)
            recorder.run(_network_input(model, network, images))
    finally:
        model.train(was_training)
    problems = {
        name: _split_problem(
            network, nodes, calls, recorder.values.get(calls[0]) if len(calls) == 1 else None
        )
        for name, calls in candidates.items()
    }
    valid = [name for name, problem in problems.items() if problem is None]
    listing = ", ".join(valid) if valid else "none (no module is followed by a BatchNorm2d)"
    if split_after not in problems:
        raise ConfigurationError(
            f"finetune.split_after={split_after!r} names no module of "
            f"{type(network).__name__}; valid split points: {listing}."
        )
    if problems[split_after] is not None:
        raise ConfigurationError(
            f"finetune.split_after={split_after!r} cannot take AdvBN: {problems[split_after]}. "
            f"Valid split points: {listing}."
        )
    split_node = candidates[split_after][0]
    head = fx.GraphModule(network, _head_graph(nodes, split_node), class_name="AdvBNHead")
    split = Split(
        model=model,
        split_after=split_after,
        split_module=network.get_submodule(split_after),
        head=head,
    )
    _check_identity(split, images)
    return split


def _check_identity(split: Split, images: torch.Tensor) -> None:
    """The traced head after the hooked front must reproduce the model exactly."""
    was_training = split.model.training
    split.model.eval()
    try:
        with torch.no_grad():
            expected = split.model(images)
            recombined = split.head(split.front(images))
    finally:
        split.model.train(was_training)
    if recombined.shape != expected.shape or not torch.allclose(recombined, expected, atol=1e-4):
        raise ConfigurationError(
            f"finetune.split_after={split.split_after!r}: the traced part after the split does "
            f"not reproduce {type(network_of(split.model)).__name__} (its forward depends on "
            "something torch.fx fixed at trace time); choose another split point or model."
        )
