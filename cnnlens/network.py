"""The data behind the Network page: the whole network at a glance, for one image.

:func:`overview` gives one column per layer of a sequential CNN (or per stage of
any other network), from the input to the class scores, with the maps of the
current image, as CNN Explainer lays out its own tiny network. One forward of
the model's private copy fills every column.

:func:`architecture_dot` draws any model as a Graphviz graph of its modules with
output shapes, collapsed to a chosen depth, with the data flowing between them
(skip connections included) as one forward on the meta device traces it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnlens.explain import CLASS_SCORES
from cnnlens.layers import Layers, meta_copy
from cnnlens.private_copy import check_batch, does_not_fit, forward_error

if TYPE_CHECKING:
    from cnnlens.models import LoadedModel

__all__ = ["Column", "architecture_dot", "overview"]


@dataclass(frozen=True, eq=False)
class Column:
    """One column of the network overview.

    Attributes:
        name: ``"input"``, a layer name of the model, or :data:`CLASS_SCORES`.
        kind: ``"input"``, ``"maps"`` or ``"scores"``.
        shape: the layer's output for one image: ``(C, H, W)``, or ``(classes,)``.
        channels: what is shown, in order: map channels (strongest first when the
            layer has more than ``max_maps``, else all in channel order), or the
            indices of the most probable classes, most probable first.
        total: how many channels (classes) the layer has in all.
        maps: float32, ``len(channels)`` × H × W, the layer's real values (signed:
            use a diverging scale; one scale per layer is the range of these maps);
            ``None`` for the class scores.
        classes: the names of the shown classes (class scores only).
        probabilities: float32, their probabilities (class scores only).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    channels: np.ndarray
    total: int
    maps: np.ndarray | None
    classes: tuple[str, ...] = ()
    probabilities: np.ndarray | None = None


class _Columns:
    """The call that turns each wanted module's first output into a column as it comes
    out, then lets the forward run on, so one pass gives every column and the scores.

    Only the shown maps are copied, before a later in-place op (the ReLU after a conv)
    can write into the output.
    """

    def __init__(self, names: dict[str, str], max_maps: int) -> None:
        self.names = names  # path -> layer name
        self.max_maps = max_maps
        self.columns: dict[str, Column] = {}

    def on_output(self, path: str, inputs: tuple[Any, ...], output: Any) -> None:
        if path not in self.names or path in self.columns:
            return
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            self.columns[path] = _map_column(self.names[path], "maps", output[0], self.max_maps)


def _channels_by_pixel(maps: torch.Tensor) -> torch.Tensor | None:
    """The C×H×W maps as an (H·W)×C view when they are channels-last, else ``None``."""
    pixels = maps.permute(1, 2, 0)
    return pixels.reshape(-1, maps.shape[0]) if pixels.is_contiguous() else None


def _map_column(name: str, kind: str, maps: torch.Tensor, max_maps: int) -> Column:
    """A column from one image's C×H×W maps: all of them, or the strongest ``max_maps``.

    Strongest means the highest mean value over the map: the channels this image
    excites most. On the channels-last maps of a loaded model, the means are one
    matrix-vector product and the maps are picked in numpy, several times faster
    than torch's strided reductions and indexing on a CPU.
    """
    total = maps.shape[0]
    by_pixel = _channels_by_pixel(maps)
    if total <= max_maps:
        channels = torch.arange(total)
    else:
        flat = by_pixel.T if by_pixel is not None else maps.reshape(total, -1)
        flat = flat.float()
        means = flat @ torch.full((flat.shape[1],), 1 / flat.shape[1], device=flat.device)
        channels = means.topk(max_maps).indices.cpu()
    if by_pixel is not None and maps.device.type == "cpu":
        pixels = maps.permute(1, 2, 0).float().numpy()
        shown = np.ascontiguousarray(np.moveaxis(pixels[:, :, channels.numpy()], 2, 0))
    else:
        shown = maps[channels.to(maps.device)].float().cpu().numpy()
    return Column(
        name=name,
        kind=kind,
        shape=tuple(maps.shape),
        channels=channels.numpy(),
        total=total,
        maps=shown,
    )


def _scores_column(logits: torch.Tensor, names: tuple[str, ...] | None, top_k: int) -> Column:
    probabilities = torch.softmax(logits.float(), dim=1)[0].cpu()
    k = min(top_k, probabilities.shape[0])
    top = probabilities.topk(k)
    classes = tuple(
        names[i] if names is not None and i < len(names) else str(i) for i in top.indices.tolist()
    )
    return Column(
        name=CLASS_SCORES,
        kind="scores",
        shape=(probabilities.shape[0],),
        channels=top.indices.numpy(),
        total=probabilities.shape[0],
        maps=None,
        classes=classes,
        probabilities=top.values.numpy(),
    )


def overview(
    loaded: LoadedModel, batch: torch.Tensor, *, max_maps: int = 16, top_k: int = 5
) -> list[Column]:
    """The whole network at a glance for one image: one column per layer, input to scores.

    For a sequential CNN (renamed layers: the demo, VGG, AlexNet) every layer of
    its stack gets a column (``conv_1``, ``relu_1``, ``pool_1``...); for any other
    network, each stage of its trunk (:meth:`LoadedModel.default_layers`, such as
    ResNet's ``layer1`` to ``layer4``). The input comes first and the class scores
    last. Layers whose output is not a map (C×H×W) are left out. One forward of the
    model's private copy gives every column; the maps equal the lens's (extractor's)
    exactly.

    Example:
        >>> from cnnlens import demo_dataset, open_model, overview
        >>> loaded, dataset = open_model("demo"), demo_dataset()
        >>> columns = overview(loaded, loaded.batch(dataset.load_image(dataset.pick(128))))
        >>> [column.name for column in columns][:3]
        ['input', 'conv_1', 'relu_1']

    Args:
        loaded: what :func:`cnnlens.open_model` returns.
        batch: one preprocessed image, 1×C×H×W (``loaded.batch(image)``).
        max_maps: the most maps a column shows; a layer with more channels shows its
            ``max_maps`` strongest (highest mean value), strongest first.
        top_k: how many of the most probable classes the scores column shows.

    Returns:
        The columns, in network order (see :class:`Column`).

    Raises:
        TypeError: if ``batch`` is not a tensor.
        ValueError: for a batch of more than one image or holding NaN, an input that does
            not fit the network or that the model's own code fails on, or ``max_maps`` or
            ``top_k`` below 1.
    """
    check_batch(batch, one_image=True, name="The overview")
    if max_maps < 1 or top_k < 1:
        raise ValueError(f"max_maps and top_k must be at least 1, got {max_maps} and {top_k}.")
    layers = loaded.layers
    names = layers.names if layers.renamed else loaded.default_layers()
    source = loaded.private_copy
    call = _Columns({layers.path(name): name for name in names}, max_maps)
    with torch.inference_mode():
        x = source.prepare(batch)
        logits = source.run(x, call)
    columns = [_map_column("input", "input", x[0], max_maps)]
    columns += [call.columns[path] for path in call.names if path in call.columns]
    if isinstance(logits, torch.Tensor) and logits.dim() == 2:
        columns.append(_scores_column(logits, loaded.classes, top_k))
    return columns


# ---- the architecture graph ----


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a value made of tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


class _Flow(TorchFunctionMode):
    """Follows the data between the drawn modules during one forward on the meta device.

    Each tensor carries the set of drawn modules (graph nodes) it comes from. A
    drawn module's call adds an edge from the sources of each of its inputs, and its
    outputs then come from it alone. A torch operation outside every drawn module
    (ResNet's ``out += identity`` in an opened block, a ``torch.flatten`` between
    stages) passes its inputs' sources on to its outputs, so a skip connection
    becomes an edge from the block's input to the module after the addition.
    Torch function modes are per thread, and the hooks sit on a meta copy of the
    model: tracing never touches other threads' forwards.
    """

    def __init__(self, units: dict[str, nn.Module]) -> None:
        super().__init__()
        self.units = units
        self.sources: dict[int, frozenset[str]] = {}
        self.alive: list[torch.Tensor] = []  # no id is reused while tracing
        self.calls: dict[str, int] = {}
        self.nodes: dict[str, tuple[str, int, str]] = {}  # key -> (path, call, shape)
        self.edges: dict[tuple[str, str], None] = {}
        self.inside: str | None = None

    def mark(self, value: Any, sources: frozenset[str]) -> None:
        for tensor in _tensors(value):
            self.alive.append(tensor)
            self.sources[id(tensor)] = sources

    def sources_of(self, value: Any) -> frozenset[str]:
        found: set[str] = set()
        for tensor in _tensors(value):
            found |= self.sources.get(id(tensor), frozenset())
        return frozenset(found)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.inside is None:  # inside a drawn module, the data stays in its node
            sources = self.sources_of((args, kwargs))
            if sources:
                self.mark(out, sources)
        return out

    def before(self, path: str, module: nn.Module, args: Any, kwargs: Any) -> None:
        if self.inside is not None or path not in self.units:
            return
        call = self.calls.get(path, 0)
        self.calls[path] = call + 1
        key = f"{path}#{call}"
        self.nodes[key] = (path, call, "")
        for source in sorted(self.sources_of((args, kwargs))):
            self.edges[(source, key)] = None
        self.inside = key

    def after(self, path: str, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if self.inside is None or self.nodes[self.inside][0] != path:
            return
        key, self.inside = self.inside, None
        shape = next((tuple(t.shape[1:]) for t in _tensors(output)), None)
        self.nodes[key] = (path, self.nodes[key][1], _shape_text(shape))
        self.mark(output, frozenset([key]))


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "×".join(map(str, shape)) if shape is not None else ""


def _drawn(model: nn.Module, depth: int) -> dict[str, nn.Module]:
    """The modules drawn as nodes: leaves down to ``depth`` levels, and the modules at
    that level (collapsed, with everything inside them).

    A ModuleList or ModuleDict is never called itself, so at the cut it is opened
    and its items are drawn instead.
    """
    drawn: dict[str, nn.Module] = {}

    def visit(module: nn.Module, prefix: str, level: int) -> None:
        for name, child in module.named_children():
            path = prefix + name
            opened = level < depth or isinstance(child, (nn.ModuleList, nn.ModuleDict))
            if opened and next(child.children(), None) is not None:
                visit(child, path + ".", level + 1)
            else:
                drawn[path] = child

    visit(model, "", 1)
    return drawn


def _trace(
    model: nn.Module, units: dict[str, nn.Module], input_shape: tuple[int, int, int]
) -> tuple[_Flow, str]:
    """One forward of a meta copy that records the drawn modules' calls and the data flow."""
    probe = meta_copy(model).eval()  # hooked here only, and dropped after this forward
    flow = _Flow(units)
    for path, module in probe.named_modules():
        if path in units:
            module.register_forward_pre_hook(
                lambda m, a, k, p=path: flow.before(p, m, a, k), with_kwargs=True
            )
            module.register_forward_hook(
                lambda m, a, k, o, p=path: flow.after(p, m, a, k, o), with_kwargs=True
            )
    x = torch.zeros((1, *input_shape), device="meta")
    flow.mark(x, frozenset(["input"]))
    with torch.no_grad(), flow:
        output = probe(x)
    for source in sorted(flow.sources_of(output)):
        flow.edges[(source, "output")] = None
    shape = next((tuple(t.shape[1:]) for t in _tensors(output)), None)
    return flow, _shape_text(shape)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _label(*lines: str) -> str:
    return _quote("\n".join(line for line in lines if line)).replace("\n", "\\n")


def architecture_dot(
    model: nn.Module | LoadedModel,
    *,
    depth: int = 2,
    input_shape: tuple[int, int, int] | None = None,
) -> str:
    """The model's modules as a Graphviz graph (DOT text), collapsed to a depth.

    Each node is a module: its name (the renamed layer, ``conv_1``, where it has
    one), its type and output shape; a module at the chosen depth that holds others
    is collapsed into one node that says how many modules it holds, and the
    modules above it are boxes (clusters) around their parts. Edges follow the data
    as one forward on the meta device traces it (nothing is computed and the model
    is not touched), so ResNet's skip connections show as edges that jump over a
    block's layers once the block is opened. A module called twice in a forward
    (the shared ReLU of a torchvision block) is drawn once per call. Without an
    input shape, or when the meta device cannot run the forward (data-dependent ops), the
    nodes carry no shapes and are chained in module order instead.

    The graph reads top to bottom (``rankdir=TB``), which suits tall networks;
    ``st.graphviz_chart`` draws it in the browser.

    Example:
        >>> from torchvision.models import resnet18
        >>> from cnnlens import architecture_dot
        >>> architecture_dot(resnet18(), depth=1).startswith("digraph")
        True

    Args:
        model: an ``nn.Module`` or what :func:`cnnlens.open_model` returns.
        depth: how many levels of the module tree to open (1: the top-level modules).
        input_shape: ``(channels, height, width)`` of one input; by default the
            loaded model's input spec.

    Returns:
        DOT text, a ``digraph``.

    Raises:
        TypeError: if ``model`` is neither.
        ValueError: if ``depth`` is below 1, the input shape does not fit the network, or
            the model's own code fails on it (a vision transformer asserts its image size).
    """
    from cnnlens.models import LoadedModel

    if isinstance(model, LoadedModel):
        module, layers = model.model, model.layers
        input_shape = input_shape or model.spec.shape
    elif isinstance(model, nn.Module):
        module, layers = model, Layers(model)
    else:
        raise TypeError(f"Expected an nn.Module or an open_model result, got {type(model)}.")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a whole number of levels, 1 or more; got {depth!r}.")
    renamed = {layers.path(name): name for name in layers.names} if layers.renamed else {}
    units = _drawn(module, depth)
    flow: _Flow | None = None
    if input_shape is not None:
        try:
            flow, output_shape = _trace(module, units, tuple(input_shape))
        except (AssertionError, LookupError, ArithmeticError) as error:  # the model's own checks
            raise forward_error(error, (1, *input_shape)) from error
        except (RuntimeError, TypeError, ValueError) as error:
            if does_not_fit(error):
                raise forward_error(error, (1, *input_shape)) from error
            flow = None  # a forward the meta device cannot run (data-dependent ops)
    if flow is None:
        flow = _Flow(units)
        flow.nodes = {f"{path}#0": (path, 0, "") for path in units}
        chain = ["input", *flow.nodes, "output"]
        flow.edges = {pair: None for pair in itertools.pairwise(chain)}
        output_shape = ""
    return _dot(module, flow, renamed, output_shape, input_shape)


def _dot(
    model: nn.Module,
    flow: _Flow,
    renamed: dict[str, str],
    output_shape: str,
    input_shape: tuple[int, ...] | None,
) -> str:
    lines = [
        "digraph network {",
        "  rankdir=TB;",
        '  graph [fontname="Helvetica", fontsize=10, nodesep=0.2, ranksep=0.25];',
        '  node [shape=box, style="rounded,filled", fillcolor="#f5f5f5", fontname="Helvetica",'
        " fontsize=10];",
        '  edge [color="#777777", arrowsize=0.6];',
        f"  {_quote('input')} [label={_label('input', _shape_text(input_shape))},"
        ' fillcolor="#dde8f5"];',
    ]
    scores = output_shape.count("×") == 0 and output_shape != ""
    out_name = "class scores" if scores else "output"
    lines.append(
        f'  {_quote("output")} [label={_label(out_name, output_shape)}, fillcolor="#dde8f5"];'
    )
    # Nodes in call order, inside one cluster per opened container, nested as the module tree.
    tree: dict[str, list[str]] = {}
    for key, (path, _, _) in flow.nodes.items():
        parent = ""
        for container in _parents(path):
            if "cluster:" + container not in tree.setdefault(parent, []):
                tree[parent].append("cluster:" + container)
            parent = container
        tree.setdefault(parent, []).append(key)

    def emit(parent: str, indent: str) -> None:
        for item in tree.get(parent, []):
            if item.startswith("cluster:"):
                path = item[len("cluster:") :]
                kind = type(model.get_submodule(path)).__name__
                lines.append(f"{indent}subgraph {_quote('cluster_' + path)} {{")
                lines.append(f"{indent}  label={_label(f'{path} · {kind}')};")
                lines.append(f'{indent}  style="rounded"; color="#bbbbbb";')
                emit(path, indent + "  ")
                lines.append(f"{indent}}}")
            else:
                lines.append(
                    f"{indent}{_quote(item)} [label={_node_label(model, flow, item, renamed)}];"
                )

    emit("", "  ")
    for source, target in flow.edges:
        lines.append(f"  {_quote(source)} -> {_quote(target)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _parents(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _node_label(model: nn.Module, flow: _Flow, key: str, renamed: dict[str, str]) -> str:
    path, call, shape = flow.nodes[key]
    module = model.get_submodule(path)
    name = renamed.get(path, path.rpartition(".")[2])
    if call:
        name += f" (call {call + 1})"
    inside = sum(1 for _ in module.modules()) - 1
    kind = type(module).__name__
    return _label(
        name,
        f"{kind} · {shape}" if shape else kind,
        f"{inside} modules inside" if inside else "",
    )
