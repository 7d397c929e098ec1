"""The sanity check of an attribution method: does its map change when the model forgets?

Adebayo et al. (2018, "Sanity Checks for Saliency Maps") re-initialise a trained
network's weights from the top layer down and redraw the map after each step. A
map that explains the model changes as its weights go; a map that still looks the
same once the whole network is random shows the image (its edges, its ink), not
what the network learned. :func:`sanity_check` does that cascade on a deep copy of
the model (the caller's model is never touched) and scores each step by the
Spearman rank correlation of the map's absolute values with the trained model's,
as their main figures do.

**Steps.** The modules with parameters of their own are taken in the order the
forward calls them. Each is one step, from the last one down, and a normalisation
layer (BatchNorm, LayerNorm...) goes with the layer before it. A network with more
than :data:`MAX_STEPS` such layers is cut by block instead: each module path is
shortened to its first parts (``layer4.1.conv2`` → ``layer4.1``), keeping the most
parts that give at most :data:`MAX_STEPS` steps (ResNet-18: ``fc``, ``layer4.1``,
``layer4.0``, …, ``layer1.0``, ``conv1``); a cut that would leave fewer than four
steps keeps the finer one instead (VGG-19: its 19 layers). Parameters held by the
model's root module itself (a ViT's class token) go with the lowest step.

**Randomising.** Each module of a step is re-initialised by its own
``reset_parameters()`` (torch's default initialisation; BatchNorm's running
statistics reset too) under ``torch.manual_seed(seed + step)``, so the same seed
gives the same copies. A module without ``reset_parameters`` gets its own
parameters drawn from a normal of their trained standard deviation.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from cnnlens.attribution import AttributionMap, attribute
from cnnlens.borrow import borrowed_copy, plain_module
from cnnlens.layers import Layers
from cnnlens.private_copy import check_batch

if TYPE_CHECKING:
    from cnnlens.models import LoadedModel

__all__ = [
    "MAX_STEPS",
    "SANITY_THRESHOLD",
    "SanityStep",
    "randomisation_steps",
    "randomised_copies",
    "rank_correlation",
    "sanity_check",
    "shows_image_more_than_model",
]

SANITY_THRESHOLD = 0.5
"""A map whose rank correlation with the trained model's map is still at least this once
the network is random shows the image more than the model."""

MAX_STEPS = 16
"""At most this many steps in a cascade (see the module's text for how layers are grouped)."""

_MIN_STEPS = 4
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


@dataclass(frozen=True, eq=False)
class SanityStep:
    """One step of the cascade: the network randomised from the top down to a layer.

    Attributes:
        layer: the lowest layer randomised so far, as the model's layers name it.
        modules: the qualified paths of the modules this step re-initialised.
        map: the method's map on the randomised copy (same layer and class as the
            trained model's map).
        correlation: the Spearman rank correlation between this map's absolute values
            and the trained model's; near 0 means the map changed completely. 0 when
            either map is constant (a blank map keeps no ranking).
    """

    layer: str
    modules: tuple[str, ...]
    map: np.ndarray
    correlation: float


# --- which modules, in which steps -----------------------------------------------------------


class _CallOrder:
    """A call that notes, in call order, the modules that hold parameters of their own."""

    def __init__(self, model: nn.Module) -> None:
        self.owners = {
            path for path, module in model.named_modules() if _own_parameters(module) and path
        }
        self.order: list[str] = []

    def on_output(self, path: str, inputs: tuple[Any, ...], output: Any) -> None:
        if path in self.owners and path not in self.order:
            self.order.append(path)


def _own_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _called_in_order(model: nn.Module | LoadedModel, x: torch.Tensor) -> list[str]:
    """The modules with parameters of their own, in the order one forward calls them."""
    with borrowed_copy(model, share_tensors=True) as (private, _, _):
        call = _CallOrder(private.model)
        with torch.inference_mode():
            private.run(private.prepare(x), call)
    if not call.order:
        raise ValueError(
            "The model has no module with parameters that its forward calls, so there is "
            "nothing to randomise."
        )
    return call.order


def _cut(paths: list[str], parts: int, model: nn.Module) -> list[list[str]]:
    """The paths grouped by their first ``parts`` parts (in call order); a group of
    normalisation layers alone joins the group before it."""
    groups: dict[str, list[str]] = {}
    for path in paths:
        groups.setdefault(".".join(path.split(".")[:parts]), []).append(path)
    merged: list[list[str]] = []
    for members in groups.values():
        norms = all(isinstance(model.get_submodule(p), _NORMS) for p in members)
        if norms and merged:
            merged[-1].extend(members)
        else:
            merged.append(list(members))
    return merged


def _grouped(paths: list[str], model: nn.Module) -> list[list[str]]:
    """The steps bottom-up, each a list of paths, by the rule of the module's text."""
    deepest = max(path.count(".") + 1 for path in paths)
    finer = None
    for parts in range(deepest, 0, -1):
        groups = _cut(paths, parts, model)
        if len(groups) <= MAX_STEPS:
            return finer if len(groups) < _MIN_STEPS and finer is not None else groups
        finer = groups
    return groups


def _step_name(members: Sequence[str], names: dict[str, str]) -> str:
    """A step's name: its first module's renamed name, or the path its members share."""
    first = members[0]
    if first in names:
        return names[first]
    shared = first.split(".")
    for path in members[1:]:
        parts = path.split(".")
        while shared and parts[: len(shared)] != shared:
            shared = shared[:-1]
    return ".".join(shared) or first


def randomisation_steps(
    model: nn.Module | LoadedModel, x: torch.Tensor
) -> list[tuple[str, tuple[str, ...]]]:
    """The cascade's steps, top down: each step's name and the module paths it re-initialises.

    Args:
        model: an ``nn.Module`` or a LoadedModel.
        x: one preprocessed image, 1×C×H×W: one forward of it gives the call order.

    Returns:
        ``[(layer, paths), ...]`` from the layer nearest the output to the input.

    Raises:
        TypeError: for a model that is neither, or a batch that is not a tensor.
        ValueError: for a batch that is not one image, one the network does not take,
            or a model with no parameters.
    """
    check_batch(x, one_image=True, name="The sanity check")
    module = plain_module(model)
    layers = Layers(module)
    names = {layers.path(name): name for name in layers.names} if layers.renamed else {}
    steps = _grouped(_called_in_order(model, x), module)
    if _own_parameters(module):
        steps[0].append("")  # the root's own parameters go with the lowest step
    return [(_step_name(members, names), tuple(members)) for members in reversed(steps)]


# --- randomising -----------------------------------------------------------------------------


def _reinitialise(module: nn.Module) -> None:
    """Torch's default initialisation of a module's own parameters (and running statistics)."""
    if hasattr(module, "reset_parameters"):
        with torch.no_grad():
            module.reset_parameters()
        return
    with torch.no_grad():
        for parameter in module.parameters(recurse=False):
            spread = float(parameter.std()) if parameter.numel() > 1 else 0.02
            parameter.normal_(0.0, spread or 0.02)


def _randomise(model: nn.Module, paths: Sequence[str], seed: int) -> None:
    """Re-initialise the modules at ``paths`` of ``model`` in place, seeded."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for path in paths:
            _reinitialise(model.get_submodule(path))


def randomised_copies(
    model: nn.Module | LoadedModel, x: torch.Tensor, *, seed: int = 0, cascade: bool = True
) -> Iterator[tuple[str, tuple[str, ...], nn.Module]]:
    """Deep copies of the model with its weights re-initialised from the top layer down.

    Step ``k`` (counted from 0 at the top) re-initialises its modules under
    ``torch.manual_seed(seed + k)``, so the last step of a cascade equals the one
    step of ``cascade=False``.

    Args:
        model: an ``nn.Module`` or a LoadedModel; it is deep-copied, never changed.
        x: one preprocessed image, 1×C×H×W (gives the order the forward calls layers).
        seed: the seed of the first step.
        cascade: one step per layer group (:func:`randomisation_steps`), each
            randomising further; ``False``: one step, the whole network at once.

    Yields:
        ``(layer, paths, copy)``: the lowest layer randomised, the paths re-initialised
        at this step, and the copy. A cascade yields the same copy each time, randomised
        further: read it before asking for the next step.

    Raises:
        As :func:`randomisation_steps`.
    """
    steps = randomisation_steps(model, x)
    randomised = copy.deepcopy(plain_module(model)).eval()
    for index, (_, paths) in enumerate(steps):
        _randomise(randomised, paths, seed + index)
        if cascade:
            yield steps[index][0], paths, randomised
    if not cascade:
        yield steps[-1][0], tuple(p for _, paths in steps for p in paths), randomised


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """The Spearman rank correlation of two maps' absolute values; 0 if either is constant.

    Raises:
        ValueError: for maps of different shapes.
    """
    a, b = np.abs(np.asarray(first, np.float64)), np.abs(np.asarray(second, np.float64))
    if a.shape != b.shape:
        raise ValueError(f"Maps of shapes {a.shape} and {b.shape} cannot be compared.")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def _as_model(model: nn.Module | LoadedModel, randomised: nn.Module) -> nn.Module | LoadedModel:
    """The randomised network in the caller's kind: a LoadedModel keeps its input spec."""
    from cnnlens.models import LoadedModel

    if isinstance(model, LoadedModel):
        return dataclasses.replace(model, model=randomised, weights="randomised")
    return randomised


def sanity_check(
    model: nn.Module | LoadedModel,
    x: torch.Tensor,
    method: str,
    *,
    layer: str | None = None,
    target: int | None = None,
    seed: int = 0,
    cascade: bool = True,
    trained: AttributionMap | None = None,
) -> list[SanityStep]:
    """Adebayo et al.'s cascading randomisation: the method's map as the weights go, top down.

    The trained model's map is ``attribute(model, x, method, layer=layer,
    target=target)``; each step's map uses the layer that map used and its class.

    Example:
        >>> from cnnlens import demo_dataset, open_model, sanity_check
        >>> loaded, dataset = open_model("demo"), demo_dataset()
        >>> x = loaded.batch(dataset.load_image(dataset.pick(128)))
        >>> steps = sanity_check(loaded, x, "gradcam")
        >>> [step.layer for step in steps][:3], steps[-1].correlation < 0.5
        (['classifier.5', 'classifier.2', 'conv_4'], True)

    Args:
        model: an ``nn.Module`` or a LoadedModel; its deep copy is randomised.
        x: one preprocessed image, 1×C×H×W.
        method: one of :data:`cnnlens.attribution.METHODS`.
        layer: a CAM's layer; default the method's.
        target: the class; default the trained model's answer.
        seed: the seed of the re-initialisation (see :func:`randomised_copies`).
        cascade: randomise step by step from the top; ``False``: one step, the whole
            network at once.
        trained: the trained model's map of this method, when the caller has it
            already (``layer`` and ``target`` are then its own): not made again.

    Returns:
        The :class:`SanityStep` of each step, top down.

    Raises:
        TypeError, ValueError: as :func:`cnnlens.attribution.attribute` raises them
            (unknown method, layer or class, a batch that is not one image).
    """
    if trained is None:
        trained = attribute(model, x, method, layer=layer, target=target)
    used, chosen = trained.layer, int(trained.target)
    steps = []
    for name, paths, randomised in randomised_copies(model, x, seed=seed, cascade=cascade):
        found = attribute(_as_model(model, randomised), x, method, layer=used, target=chosen)
        steps.append(SanityStep(name, paths, found, rank_correlation(found, trained)))
    return steps


def shows_image_more_than_model(steps: Sequence[SanityStep]) -> bool:
    """Whether a method's map survives the whole network's randomisation: its last step's
    correlation is at least :data:`SANITY_THRESHOLD`.

    Raises:
        ValueError: for no steps.
    """
    if not steps:
        raise ValueError("A sanity check has at least one step; run sanity_check first.")
    return steps[-1].correlation >= SANITY_THRESHOLD
