"""Attribution: which parts of one image a classifier's answer rests on, by eleven methods.

Seven class activation maps (CAMs) weigh a layer's feature maps: five by the
gradient of the class's logit (Grad-CAM, Grad-CAM++, XGrad-CAM, Layer-CAM,
HiResCAM), Score-CAM by the class's probability when the image is masked by each
map, and Eigen-CAM by the maps' first principal component. Four input methods
read the input itself: the gradient's size (saliency), its mean over noisy copies
(SmoothGrad), the path integral from a baseline (Integrated Gradients), and the
drop of the logit when a square is covered (occlusion). :data:`METHODS` lists them.

A CAM is taken on a rectified output (after the activation): on a pre-ReLU conv
the weighted sum is often all negative and the map blank. :func:`cam_layer` says
which layer a CAM uses and why: by default the last convolutional block's
rectified output, and for a chosen layer taken before its activation, that
activation's output.

Everything runs on the model's private copy (:func:`~cnnlens.borrow.borrowed_copy`):
no hook, flag, weight or ``.grad`` of the caller's model changes, and calls from many
threads never meet. :func:`occlusion_scores` is the one sliding of a square over an
image; the occlusion map and any view of single squares are read from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.borrow import borrowed_copy
from cnnlens.layers import Layers
from cnnlens.private_copy import ModuleNotRun, PrivateCopy, check_batch, tensor_output
from cnnlens.results import Cancelled

if TYPE_CHECKING:
    from cnnlens.models import LoadedModel

__all__ = [
    "CAM_METHODS",
    "INPUT_METHODS",
    "METHODS",
    "TITLES",
    "AttributionMap",
    "OcclusionScores",
    "attribute",
    "cam_layer",
    "check_target",
    "occlusion_scores",
]

METHODS: tuple[str, ...] = (
    "gradcam",
    "gradcam++",
    "xgradcam",
    "layercam",
    "hirescam",
    "scorecam",
    "eigencam",
    "saliency",
    "smoothgrad",
    "integrated_gradients",
    "occlusion",
)
"""Every attribution method :func:`attribute` knows: the CAMs first, then the input methods."""

CAM_METHODS: tuple[str, ...] = METHODS[:7]
"""The methods that weigh a layer's feature maps (they take ``layer=``)."""

INPUT_METHODS: tuple[str, ...] = METHODS[7:]
"""The methods that read the input itself (they take no layer)."""

TITLES: dict[str, str] = dict(
    zip(
        METHODS,
        (
            "Grad-CAM",
            "Grad-CAM++",
            "XGrad-CAM",
            "LayerCAM",
            "HiResCAM",
            "Score-CAM",
            "Eigen-CAM",
            "Saliency",
            "SmoothGrad",
            "Integrated Gradients",
            "Occlusion",
        ),
        strict=True,
    )
)
"""Each method's name as its authors write it, for messages and pages."""

# The options each method takes besides layer, target, progress and should_stop.
_OPTIONS: dict[str, tuple[str, ...]] = {
    "scorecam": ("batch_size", "max_channels"),
    "smoothgrad": ("samples", "noise", "seed", "batch_size"),
    "integrated_gradients": ("steps", "baseline", "batch_size"),
    "occlusion": ("window", "stride", "batch_size"),
}

# Gradient methods need a copy with tensors of its own; the others may share the model's.
_GRADIENT_METHODS = (*CAM_METHODS[:5], "saliency", "smoothgrad", "integrated_gradients")

_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Softplus,
)
"""Modules whose output counts as rectified whatever its values."""

# Gauss-Legendre steps of Integrated Gradients: the sum of the map is within 1% of the
# logit's change on the demo and on ResNet-18 (tests/test_attribution.py).
_IG_STEPS = 64


class AttributionMap(np.ndarray):
    """An H×W float32 map at the input's resolution; larger means more evidence for the target.

    A numpy array with four facts attached (slices and arithmetic keep them).

    Attributes:
        method: one of :data:`METHODS`.
        layer: the layer a CAM used, as the model's layers name it; ``None`` for an
            input method.
        target: the class explained.
        note: ``""``, or one sentence on why the layer differs from the one asked for.
    """

    method: str
    layer: str | None
    target: int
    note: str

    def __new__(
        cls, values: Any, *, method: str, layer: str | None, target: int, note: str = ""
    ) -> AttributionMap:
        made = np.asarray(values, dtype=np.float32).view(cls)
        made.method, made.layer, made.target, made.note = method, layer, target, note
        return made

    def __array_finalize__(self, source: Any) -> None:
        self.method = getattr(source, "method", "")
        self.layer = getattr(source, "layer", None)
        self.target = getattr(source, "target", -1)
        self.note = getattr(source, "note", "")

    def __reduce__(self) -> tuple[Any, ...]:
        # ndarray's pickle keeps the values only; the facts ride along in the state.
        rebuild, arguments, state = super().__reduce__()  # type: ignore[misc]
        return rebuild, arguments, (state, (self.method, self.layer, self.target, self.note))

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        values, (self.method, self.layer, self.target, self.note) = state
        super().__setstate__(values)


@dataclass(frozen=True, eq=False)
class OcclusionScores:
    """The model's class scores with each square of an image filled: the sliding of occlusion.

    Attributes:
        window: the square's side in pixels.
        stride: the step between squares; the last row and column of squares reach
            the image's edge.
        tops: P×2 int64, the (row, column) of each square's top-left pixel.
        logits: P×K float32, the class scores with that square filled with 0 (in the
            normalised input space: the dataset's mean colour).
        base: K float32, the scores of the image itself.
    """

    window: int
    stride: int
    tops: np.ndarray
    logits: np.ndarray
    base: np.ndarray

    def probabilities(self) -> np.ndarray:
        """The softmax of :attr:`logits`: P×K float32."""
        shifted = self.logits - self.logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)

    @property
    def nbytes(self) -> int:
        """The bytes the arrays hold."""
        return self.tops.nbytes + self.logits.nbytes + self.base.nbytes


class _Nothing:
    """A call that leaves every output as it is: a plain forward of the copy."""

    def on_output(self, path: str, inputs: tuple[Any, ...], output: Any) -> None:
        return None


_PLAIN = _Nothing()


# --- checks --------------------------------------------------------------------------


def _check_method(method: object) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {', '.join(METHODS)}; got {method!r}.")
    if method not in METHODS:
        raise ValueError(
            f"Unknown attribution method {method!r}; choose one of {', '.join(METHODS)}."
        )
    return method


def _whole(name: str, value: object, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be a whole number, got {value!r}.")
    if value < least:
        raise ValueError(f"{name} must be at least {least}; got {value}.")
    return int(value)


def check_target(target: object) -> int | None:
    """A class to explain as an int, or ``None`` for the predicted class.

    Raises:
        TypeError: for anything but a whole number.
    """
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, int | np.integer):
        raise TypeError(
            f"target must be a whole number (a class index), or None for the predicted class; "
            f"got {target!r}."
        )
    return int(target)


def _class_scores(output: object, method: str) -> torch.Tensor:
    """The model's output, checked to be N×K class scores."""
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"{TITLES[method]} needs class scores (N×K), but this model outputs {shape}; "
            "explain a classifier, or add the head that gives one score per class."
        )
    return output


def _pick(logits: torch.Tensor, target: int | None) -> int:
    """The class to explain: ``target`` checked against the scores, or the predicted class."""
    classes = logits.shape[1]
    if target is None:
        return int(logits[0].argmax())
    if not 0 <= target < classes:
        raise ValueError(
            f"target must be between 0 and {classes - 1} (the model has {classes} classes); "
            f"got {target}."
        )
    return target


def _checked_options(method: str, given: dict[str, Any]) -> dict[str, Any]:
    """The options of a method, checked, with their defaults filled in.

    Raises:
        ValueError: for an option the method does not take, or a value out of range.
        TypeError: for a value of the wrong type.
    """
    takes = _OPTIONS.get(method, ())
    extra = [name for name, value in given.items() if value is not None and name not in takes]
    if extra:
        offer = f"it takes {', '.join(takes)}" if takes else "it takes no options"
        raise ValueError(f"{TITLES[method]} has no option {', '.join(extra)}: {offer}.")
    defaults = {
        "batch_size": 64 if method in ("scorecam", "occlusion") else 16,
        "samples": 25,
        "noise": 0.15,
        "seed": 0,
        "steps": _IG_STEPS,
    }
    options = {name: given[name] for name in takes}
    for name, value in options.items():
        if value is None:
            options[name] = defaults.get(name)
        elif name in ("batch_size", "max_channels", "samples", "steps", "window", "stride"):
            options[name] = _whole(name, value)
        elif name == "seed":
            options[name] = _whole(name, value, least=0)
        elif name == "noise" and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise TypeError(
                f"noise must be a number (a share of the input's range), got {value!r}."
            )
        elif name == "noise" and not 0 <= value < float("inf"):
            raise ValueError(
                f"noise must be 0 or more (a share of the input's range); got {value}."
            )
    return options


def _stop_if_asked(
    should_stop: Callable[[], bool] | None, method: str, done: int, total: int
) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled(
            f"{TITLES[method]} stopped after {done} of {total} steps; nothing was kept."
        )


def _report(progress: Callable[[int, int], None] | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


# --- which layer a CAM uses -----------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Fired:
    """One module call of a recorded forward."""

    path: str
    output: Any
    first: bool  # the module's first call: the one run_to and gradient reach
    conv: bool
    rectified: bool  # an activation's output, or one with no negative value


class _Record:
    """A call that records every module call of one forward, in order."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = dict(model.named_modules())
        self.fired: list[_Fired] = []
        self.seen: set[str] = set()

    def on_output(self, path: str, inputs: tuple[Any, ...], output: Any) -> None:
        module = self.modules[path]
        rectified = isinstance(output, torch.Tensor) and (
            isinstance(module, _ACTIVATIONS)
            or (output.is_floating_point() and bool((output >= 0).all()))
        )
        self.fired.append(
            _Fired(path, output, path not in self.seen, isinstance(module, nn.Conv2d), rectified)
        )
        self.seen.add(path)


def _has_maps(output: Any) -> bool:
    return isinstance(output, torch.Tensor) and output.dim() == 4 and min(output.shape[-2:]) > 1


def _holder(fired: list[_Fired], index: int) -> str | None:
    """The outermost module returning the tensor of call ``index``: the last call holding it.

    Only a module's first call counts (the one a forward to it reaches); ``None`` if no
    first call holds the tensor.
    """
    tensor = fired[index].output
    for record in reversed(fired[index:]):
        if record.first and record.output is tensor:
            return record.path
    return None


def _default_layer(fired: list[_Fired]) -> tuple[str, str]:
    """The rectified output of the last convolutional block, or the last feature maps."""
    convs = [i for i, record in enumerate(fired) if record.conv]
    for i in range(convs[-1] + 1 if convs else 0, len(fired)):
        if fired[i].rectified and _has_maps(fired[i].output):
            holder = _holder(fired, i)
            if holder is not None:
                return holder, ""
    for i in reversed(range(len(fired))):
        if _has_maps(fired[i].output):
            holder = _holder(fired, i)
            if holder is not None:
                return holder, "last feature maps"
    raise ValueError(
        "This model gives no feature maps (no module outputs N×C×H×W with both sides above "
        "1), so a CAM has nothing to weigh; use an input method such as saliency."
    )


def _chosen_layer(fired: list[_Fired], path: str, layer: str) -> str:
    """The module a CAM on ``layer`` uses: it, or the rectified output that follows it."""
    index = next((i for i, record in enumerate(fired) if record.path == path), None)
    if index is None:
        raise ModuleNotRun([path])
    output = tensor_output(path, fired[index].output)
    if output.dim() != 4:
        raise ValueError(
            f"{layer} has no feature maps (its output has shape {tuple(output.shape)}), so "
            "a CAM has nothing to weigh: choose a convolutional layer, or leave layer=None "
            "for the last convolutional block."
        )
    if fired[index].rectified:
        return path
    for later in range(index + 1, len(fired)):
        record = fired[later]
        if record.conv:
            break
        if (
            record.rectified
            and isinstance(record.output, torch.Tensor)
            and record.output.shape == output.shape
        ):
            holder = _holder(fired, later)
            if holder is not None:
                return holder
    return path


def _layer_name(layers: Layers, path: str) -> str:
    """A module path as the model's layers name it (``features.8`` → ``relu_4``)."""
    names = {layers.path(name): name for name in layers.names} if layers.renamed else {}
    return names.get(path, path)


def _cam_layer(
    copy: PrivateCopy, layers: Layers, x: torch.Tensor, layer: str | None
) -> tuple[str, str, str]:
    """``(path, name, note)`` of the layer a CAM uses, from one recorded forward."""
    path = None if layer is None else layers.path(layer)
    record = _Record(copy.model)
    with torch.inference_mode():
        copy.run(copy.prepare(x), record)
    if path is None:
        used, why = _default_layer(record.fired)
        name = _layer_name(layers, used)
        if why:
            return (
                used,
                name,
                (
                    f"Nothing rectified follows the last convolution, so the last feature maps, "
                    f"{name}, are used."
                ),
            )
        return used, name, ""
    used = _chosen_layer(record.fired, path, layer)
    name = _layer_name(layers, used)
    if used == path:
        return used, name, ""
    return (
        used,
        name,
        f"{layer} is taken before its activation, so its rectified output {name} is used.",
    )


def cam_layer(
    model: nn.Module | LoadedModel, x: torch.Tensor, layer: str | None = None
) -> tuple[str, str]:
    """The layer a CAM of this image uses, and why it differs from the one asked for.

    Without ``layer``: the rectified output of the last convolutional block (the
    first output after the last ``Conv2d`` call with feature maps larger than 1×1
    that an activation module gives, or that has no negative value), named by the
    outermost module returning it (ResNet-18: ``layer4``); if nothing rectified
    follows the last convolution, the last feature maps. With ``layer``: that layer,
    or, if its output has negative values and a rectified output of the same shape
    follows it before the next convolution, that output (the demo's ``conv_4`` →
    ``relu_4``).

    Args:
        model: an ``nn.Module`` or a LoadedModel.
        x: one preprocessed image, 1×C×H×W.
        layer: a layer name or module path; ``None`` for the default.

    Returns:
        ``(name, note)``: the layer as the model's layers name it, and ``""`` or one
        sentence saying why it is not the one asked for.

    Raises:
        TypeError: for a model that is neither, or a batch that is not a tensor.
        ValueError: for an unknown layer, one that does not run or gives no feature
            maps, a model without feature maps, or a batch that is not one image.
    """
    check_batch(x, one_image=True, name="cam_layer")
    with borrowed_copy(model, share_tensors=True) as (copy, layers, _):
        _, name, note = _cam_layer(copy, layers, x, layer)
    return name, note


# --- class activation maps ------------------------------------------------------------


def _gradcam_weights(maps: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    return grads.mean(dim=(2, 3), keepdim=True)


def _gradcam_pp_weights(maps: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    # Chattopadhyay et al. 2018 with an exponential score, in pytorch-grad-cam's closed form.
    square = grads.pow(2)
    alpha = square / (2 * square + maps.sum(dim=(2, 3), keepdim=True) * square * grads + 1e-6)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    return (alpha * grads.clamp(min=0)).sum(dim=(2, 3), keepdim=True)


def _xgradcam_weights(maps: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    share = maps / (maps.sum(dim=(2, 3), keepdim=True) + 1e-7)
    return (share * grads).sum(dim=(2, 3), keepdim=True)


_WEIGHTS = {
    "gradcam": _gradcam_weights,
    "gradcam++": _gradcam_pp_weights,
    "xgradcam": _xgradcam_weights,
    "layercam": lambda maps, grads: grads.clamp(min=0),  # weights per position
    "hirescam": lambda maps, grads: grads,
}


def _gradient_cam(method: str, maps: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """A gradient CAM at the layer's resolution: 1×1×h×w, negatives set to zero."""
    weights = _WEIGHTS[method](maps, grads)
    return (weights * maps).sum(dim=1, keepdim=True).clamp(min=0)


def _eigen_cam(maps: torch.Tensor) -> torch.Tensor:
    """The maps' first principal component (pytorch-grad-cam's get_2d_projection), 1×1×h×w.

    The SVD's sign is arbitrary: it is chosen so the projection correlates
    positively with the maps' sum.
    """
    _, channels, height, width = maps.shape
    flat = maps[0].reshape(channels, -1).T.double()  # positions × channels
    flat = flat - flat.mean(dim=0)
    _, _, right = torch.linalg.svd(flat, full_matrices=False)
    projection = flat @ right[0]
    total = maps[0].sum(dim=0).reshape(-1).double()
    if float(projection @ (total - total.mean())) < 0:
        projection = -projection
    return projection.clamp(min=0).reshape(1, 1, height, width).float()


def _score_channels(maps: torch.Tensor, max_channels: int | None) -> torch.Tensor:
    """The channels Score-CAM masks with: not all zero, the most varied ``max_channels``."""
    flat = maps.flatten(1)
    keep = flat.abs().amax(dim=1) > 0
    if max_channels is not None and max_channels < len(flat):
        top = flat.var(dim=1, unbiased=False).topk(max_channels).indices
        chosen = torch.zeros_like(keep)
        chosen[top] = True
        keep &= chosen
    return keep.nonzero().flatten()


def _unit_masks(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Maps upsampled to the input's size and scaled to [0, 1] each (zero where constant)."""
    up = F.interpolate(maps[:, None], size=size, mode="bilinear")
    low = up.amin(dim=(2, 3), keepdim=True)
    span = up.amax(dim=(2, 3), keepdim=True) - low
    return torch.where(span > 0, (up - low) / span.clamp(min=torch.finfo(up.dtype).tiny), 0.0)


def _score_cam(
    copy: PrivateCopy,
    x: torch.Tensor,
    activation: torch.Tensor,
    target: int,
    options: dict[str, Any],
    progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> torch.Tensor:
    """Score-CAM (Wang et al. 2020): each map weighted by the class's probability when the
    image is masked by it; 1×1×h×w."""
    maps = activation[0].float()
    channels = _score_channels(maps, options["max_channels"])
    image = copy.prepare(x)
    size = (image.shape[-2], image.shape[-1])
    weights = torch.zeros(len(channels), device=maps.device)
    total, step = len(channels), options["batch_size"]
    for start in range(0, total, step):
        _stop_if_asked(should_stop, "scorecam", start, total)
        chunk = channels[start : start + step]
        masks = _unit_masks(maps[chunk], size).to(image.dtype)
        with torch.inference_mode():
            output = _class_scores(copy.run(copy.prepare(image * masks), _PLAIN), "scorecam")
            weights[start : start + len(chunk)] = torch.softmax(output.float(), dim=1)[:, target]
        _report(progress, start + len(chunk), total)
    cam = (weights[:, None, None] * maps[channels]).sum(dim=0).clamp(min=0)
    return cam[None, None]


def _cam(
    copy: PrivateCopy,
    layers: Layers,
    x: torch.Tensor,
    method: str,
    layer: str | None,
    target: int | None,
    options: dict[str, Any],
    progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> AttributionMap:
    path, name, note = _cam_layer(copy, layers, x, layer)
    if method in _WEIGHTS:
        chosen: list[int] = []

        def score(output: torch.Tensor) -> torch.Tensor:
            logits = _class_scores(output, method)
            chosen.append(_pick(logits, target))
            return logits[0, chosen[0]]

        activation, gradient = copy.gradient(x, path, score)
        cam = _gradient_cam(method, activation, gradient)
        _report(progress, 1, 1)
    else:
        with torch.inference_mode():
            # The forward goes on from a copy, so no later in-place op changes the maps.
            reached = copy.run_to(copy.prepare(x), path, replace=lambda output: output.clone())
        chosen = [_pick(_class_scores(reached.result, method), target)]
        if method == "eigencam":
            cam = _eigen_cam(reached.output.float())
            _report(progress, 1, 1)
        else:
            cam = _score_cam(copy, x, reached.output, chosen[0], options, progress, should_stop)
    cam = F.interpolate(cam.float(), size=tuple(x.shape[-2:]), mode="bilinear")
    return AttributionMap(
        cam[0, 0].cpu().numpy(), method=method, layer=name, target=chosen[0], note=note
    )


# --- input methods --------------------------------------------------------------------


def _logits(copy: PrivateCopy, image: torch.Tensor, method: str) -> torch.Tensor:
    """The class scores of a prepared batch, float32."""
    with torch.inference_mode():
        return _class_scores(copy.run(image, _PLAIN), method).float()


def _input_gradients(
    copy: PrivateCopy, points: torch.Tensor, target: int | None, method: str
) -> tuple[torch.Tensor, int]:
    """The gradient of the target's logit with respect to each input of a prepared batch,
    and the target (``None``: the first input's predicted class)."""
    with torch.inference_mode(False), torch.enable_grad():
        leaf = points.detach().clone().requires_grad_(True)
        logits = _class_scores(copy.run(leaf, _PLAIN), method)
        chosen = _pick(logits, target)
        (gradient,) = torch.autograd.grad(logits[:, chosen].sum(), leaf)
    return gradient.detach().float(), chosen


def _smoothgrad(
    copy: PrivateCopy,
    image: torch.Tensor,
    target: int,
    options: dict[str, Any],
    progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> torch.Tensor:
    """The mean saliency of noisy copies: sample i adds the i-th draw of
    ``torch.randn(C, H, W)`` from a generator seeded with ``seed``, times σ."""
    samples, step = options["samples"], options["batch_size"]
    sigma = options["noise"] * float(image.max() - image.min())
    generator = torch.Generator().manual_seed(options["seed"])
    total = torch.zeros(image.shape[-2:], device=image.device)
    for start in range(0, samples, step):
        _stop_if_asked(should_stop, "smoothgrad", start, samples)
        count = min(step, samples - start)
        draws = torch.stack(
            [torch.randn(image.shape[1:], generator=generator) for _ in range(count)]
        )
        noisy = copy.prepare(image + sigma * draws.to(image.device, image.dtype))
        gradient, _ = _input_gradients(copy, noisy, target, "smoothgrad")
        total += gradient.abs().amax(dim=1).sum(dim=0)
        _report(progress, start + count, samples)
    return total / samples


def _baseline(baseline: torch.Tensor | float | None, image: torch.Tensor) -> torch.Tensor:
    if baseline is None:
        return torch.zeros_like(image)
    if isinstance(baseline, int | float) and not isinstance(baseline, bool):
        return torch.full_like(image, float(baseline))
    if not isinstance(baseline, torch.Tensor) or baseline.shape != image.shape:
        shape = tuple(baseline.shape) if isinstance(baseline, torch.Tensor) else baseline
        raise ValueError(
            f"baseline must be a number or a tensor shaped like the input {tuple(image.shape)}; "
            f"got {shape!r}."
        )
    return check_batch(baseline, one_image=True, name="The baseline").to(image)


def _integrated_gradients(
    copy: PrivateCopy,
    image: torch.Tensor,
    target: int,
    options: dict[str, Any],
    progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> torch.Tensor:
    """(x − x0) ⊙ the mean gradient on the straight path from the baseline x0, summed over
    channels; the mean is Gauss-Legendre's (captum's default rule)."""
    steps, step = options["steps"], options["batch_size"]
    start_point = _baseline(options["baseline"], image)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = torch.tensor((nodes + 1) / 2, dtype=torch.float64)
    weights = torch.tensor(weights / 2, dtype=torch.float64)
    difference = image - start_point
    total = torch.zeros(image.shape[1:], dtype=torch.float64, device=image.device)
    for start in range(0, steps, step):
        _stop_if_asked(should_stop, "integrated_gradients", start, steps)
        alpha = alphas[start : start + step].to(image.device, image.dtype)[:, None, None, None]
        points = copy.prepare(start_point + alpha * difference)
        gradient, _ = _input_gradients(copy, points, target, "integrated_gradients")
        part = weights[start : start + step].to(image.device)[:, None, None, None]
        total += (gradient.double() * part).sum(dim=0)
        _report(progress, min(start + step, steps), steps)
    return (difference[0].double() * total).sum(dim=0).float()


def _starts(side: int, window: int, stride: int) -> list[int]:
    """Where squares start along one side; the last one ends at the edge."""
    starts = list(range(0, side - window + 1, stride))
    if starts[-1] != side - window:
        starts.append(side - window)
    return starts


def _occlusion_sizes(
    size: tuple[int, int], window: int | None, stride: int | None
) -> tuple[int, int]:
    short = min(size)
    window = max(1, round(short / 7)) if window is None else _whole("window", window)
    if window > short:
        raise ValueError(
            f"window must fit in the image ({size[0]}×{size[1]}): at most {short} pixels; "
            f"got {window}."
        )
    stride = max(1, window // 2) if stride is None else _whole("stride", stride)
    return window, stride


def _slide(
    copy: PrivateCopy,
    x: torch.Tensor,
    window: int | None,
    stride: int | None,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> OcclusionScores:
    """The scores with each square filled: the one sliding behind every occlusion view."""
    image = copy.prepare(x)
    height, width = image.shape[-2:]
    window, stride = _occlusion_sizes((height, width), window, stride)
    tops = np.array(
        [
            (row, col)
            for row in _starts(height, window, stride)
            for col in _starts(width, window, stride)
        ],
        dtype=np.int64,
    )
    base = _logits(copy, image, "occlusion")
    logits = torch.empty((len(tops), base.shape[1]), dtype=torch.float32)
    for start in range(0, len(tops), batch_size):
        _stop_if_asked(should_stop, "occlusion", start, len(tops))
        chunk = tops[start : start + batch_size]
        covered = image.repeat(len(chunk), 1, 1, 1)
        for i, (row, col) in enumerate(chunk):
            covered[i, :, row : row + window, col : col + window] = 0
        logits[start : start + len(chunk)] = _logits(copy, copy.prepare(covered), "occlusion").cpu()
        _report(progress, start + len(chunk), len(tops))
    return OcclusionScores(window, stride, tops, logits.numpy(), base[0].cpu().numpy())


def _occlusion_map(scores: OcclusionScores, size: tuple[int, int], target: int) -> np.ndarray:
    """Per pixel, the mean drop of the target's logit over the squares covering it."""
    drops = scores.base[target] - scores.logits[:, target]
    total = np.zeros(size, dtype=np.float64)
    count = np.zeros(size, dtype=np.int64)
    side = scores.window
    for (row, col), drop in zip(scores.tops, drops, strict=True):
        total[row : row + side, col : col + side] += drop
        count[row : row + side, col : col + side] += 1
    return (total / np.maximum(count, 1)).astype(np.float32)


def occlusion_scores(
    model: nn.Module | LoadedModel,
    x: torch.Tensor,
    *,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> OcclusionScores:
    """Slide a square over one image and keep the model's class scores for each place.

    Each square is filled with 0 in the normalised input space (the dataset's mean
    colour), in batches of ``batch_size`` forwards.

    Args:
        model: an ``nn.Module`` or a LoadedModel that outputs class scores.
        x: one preprocessed image, 1×C×H×W.
        window: the square's side; default the image's shorter side / 7, rounded
            (4 pixels on 28, 32 on 224).
        stride: the step between squares; default ``window // 2``. The last row and
            column of squares always reach the edge.
        batch_size: squares per forward.
        progress: called with (squares done, squares in all) after each batch.
        should_stop: asked before each batch; ``True`` stops with :class:`Cancelled`.

    Returns:
        The :class:`OcclusionScores`.

    Raises:
        TypeError: for a model that is neither, a batch that is not a tensor, or
            sizes that are not whole numbers.
        ValueError: for a batch that is not one image, a window that does not fit,
            or a model that does not output class scores.
        Cancelled: if ``should_stop()`` returned True.
    """
    check_batch(x, one_image=True, name="Occlusion")
    batch_size = _whole("batch_size", batch_size)
    with borrowed_copy(model, share_tensors=True) as (copy, _, _):
        return _slide(copy, x, window, stride, batch_size, progress, should_stop)


def _input_map(
    copy: PrivateCopy,
    x: torch.Tensor,
    method: str,
    target: int | None,
    options: dict[str, Any],
    progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> AttributionMap:
    image = copy.prepare(x)
    if method == "saliency":
        gradient, target = _input_gradients(copy, image, target, method)
        found = gradient.abs().amax(dim=1)[0]
        _report(progress, 1, 1)
    elif method == "occlusion":
        scores = _slide(
            copy,
            x,
            options["window"],
            options["stride"],
            options["batch_size"],
            progress,
            should_stop,
        )
        target = _pick(torch.from_numpy(scores.base[None]), target)
        found = torch.from_numpy(_occlusion_map(scores, tuple(image.shape[-2:]), target))
    else:
        target = _pick(_logits(copy, image, method), target)
        run = _smoothgrad if method == "smoothgrad" else _integrated_gradients
        found = run(copy, image, target, options, progress, should_stop)
    return AttributionMap(found.cpu().numpy(), method=method, layer=None, target=target)


# --- the one entry --------------------------------------------------------------------


def attribute(
    model: nn.Module | LoadedModel,
    x: torch.Tensor,
    method: str,
    *,
    layer: str | None = None,
    target: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    batch_size: int | None = None,
    max_channels: int | None = None,
    samples: int | None = None,
    noise: float | None = None,
    seed: int | None = None,
    steps: int | None = None,
    baseline: torch.Tensor | float | None = None,
    window: int | None = None,
    stride: int | None = None,
) -> AttributionMap:
    """Where in one image the evidence for a class lies, by one of :data:`METHODS`.

    CAMs differentiate the class's logit (Score-CAM reads its softmax probability),
    like pytorch-grad-cam's ClassifierOutputTarget and captum; each is taken on the
    layer :func:`cam_layer` gives, its negatives set to zero, and scaled up
    (bilinear) to the input's size. Eigen-CAM is class-agnostic: the first principal
    component of the layer's maps, whatever the target.

    - ``gradcam``: channels weighted by their mean gradient.
    - ``gradcam++``: by their positive gradients, each weighted by G² / (2G² + ΣA·G³).
    - ``xgradcam``: by the gradient weighted by each channel's share of its own sum.
    - ``layercam``: each position of each map by its positive gradient.
    - ``hirescam``: each position of each map by its gradient.
    - ``scorecam``: by the class's probability when the image is multiplied by the
      map, scaled up and to [0, 1] (a constant map masks everything); all-zero maps
      are skipped (they add nothing), ``max_channels`` keeps the most varied maps only.
    - ``eigencam``: the first principal component of the maps.
    - ``saliency``: the largest absolute gradient of the logit over the input's channels.
    - ``smoothgrad``: the mean saliency of ``samples`` copies of the image with
      Gaussian noise of σ = ``noise`` × the input's range, seeded by ``seed``.
    - ``integrated_gradients``: (x − baseline) times the mean gradient on the straight
      path from the baseline, summed over channels; signed, and summing to the logit's
      change from the baseline (within 1% at the default ``steps``).
    - ``occlusion``: per pixel, the mean drop of the logit when a square covering it
      is filled with 0 (:func:`occlusion_scores`).

    Example:
        >>> from cnnlens import attribute, demo_dataset, open_model
        >>> loaded, dataset = open_model("demo"), demo_dataset()
        >>> batch = loaded.batch(dataset.load_image(dataset.pick(128)))
        >>> cam = attribute(loaded, batch, "gradcam", layer="conv_4")
        >>> cam.shape, cam.layer
        ((28, 28), 'relu_4')
        >>> cam.note
        'conv_4 is taken before its activation, so its rectified output relu_4 is used.'

    Args:
        model: an ``nn.Module`` or a LoadedModel that outputs N×K class scores.
        x: one preprocessed image, 1×C×H×W (``loaded.batch(image)``).
        method: one of :data:`METHODS`.
        layer: for a CAM, a layer name or module path (default: the last
            convolutional block's rectified output). Input methods take none.
        target: the class to explain; default the predicted class.
        progress: called with (steps done, steps in all) as the work goes on.
        should_stop: asked before each batch; ``True`` stops with :class:`Cancelled`.
        batch_size: forwards per batch (Score-CAM, occlusion: 64; SmoothGrad,
            Integrated Gradients: 16).
        max_channels: Score-CAM only: mask with the ``max_channels`` maps of the
            highest variance (Faster Score-CAM); default every map.
        samples: SmoothGrad's noisy copies (25).
        noise: SmoothGrad's σ as a share of the input's range (0.15).
        seed: SmoothGrad's noise seed (0).
        steps: Integrated Gradients' Gauss-Legendre points (64).
        baseline: Integrated Gradients' start: a number or a tensor like ``x`` (0).
        window: occlusion's square side (default: the shorter side / 7).
        stride: occlusion's step (default ``window // 2``).

    Returns:
        An :class:`AttributionMap`: H×W float32 with the method, layer, target and note.

    Raises:
        TypeError: for a model that is neither, a batch that is not a tensor, or a
            target or option of the wrong type.
        ValueError: for an unknown method (the message lists them), a batch that is
            not one image, a layer unknown or without feature maps, a layer for an
            input method, an option the method does not take, a target out of range,
            or a model that does not output class scores.
        Cancelled: if ``should_stop()`` returned True.
    """
    method = _check_method(method)
    given = dict(batch_size=batch_size, max_channels=max_channels, samples=samples, noise=noise)
    given |= dict(seed=seed, steps=steps, baseline=baseline, window=window, stride=stride)
    options = _checked_options(method, given)
    check_batch(x, one_image=True, name=TITLES[method])
    chosen = check_target(target)
    if layer is not None and method in INPUT_METHODS:
        raise ValueError(
            f"{TITLES[method]} reads the input, not a layer: leave layer=None, or choose a "
            f"CAM ({', '.join(CAM_METHODS)})."
        )
    _stop_if_asked(should_stop, method, 0, 1)
    with borrowed_copy(model, share_tensors=method not in _GRADIENT_METHODS) as (copy, layers, _):
        if method in CAM_METHODS:
            return _cam(copy, layers, x, method, layer, chosen, options, progress, should_stop)
        return _input_map(copy, x, method, chosen, options, progress, should_stop)
