"""One attribution method on one image, with what says whether to believe it.

A :class:`MethodMap` is a method's map of where the network looks
(:func:`cnnlens.attribution.attribute`); :class:`MethodChecks` says how faithful the
map is to the model on this image (the deletion and insertion areas of
:func:`cnnlens.faithfulness_metrics.faithfulness`) and how it fares in the sanity check
(:func:`cnnlens.sanity.sanity_check`: how much of the map is left once the whole
network's weights are random). Their specs make them results the store keeps, so the
"Where it looks" page paints stored ones at once, every map before any check, and
computes a slow one (Score-CAM on a large model) with progress and Cancel.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING

import numpy as np

from cnnlens.attribution import (
    METHODS,
    AttributionMap,
    OcclusionScores,
    attribute,
    occlusion_scores,
)
from cnnlens.faithfulness_metrics import faithfulness
from cnnlens.results import ModelSpec, Run
from cnnlens.sanity import SANITY_THRESHOLD, sanity_check

if TYPE_CHECKING:
    import torch

    from cnnlens.models import LoadedModel

__all__ = [
    "MethodChecks",
    "MethodChecksSpec",
    "MethodMap",
    "MethodMapSpec",
    "OcclusionSpec",
    "drag_grid",
    "method_checks",
    "method_map",
]


@dataclasses.dataclass(frozen=True)
class MethodMap:
    """One method's map of one image.

    Attributes:
        method: the method's name (one of :data:`cnnlens.attribution.METHODS`).
        map: H×W float32 at the input's size; larger means more evidence for the target.
        layer: the layer a CAM used (``""`` for an input attribution).
        note: why the layer differs from the one asked for, or ``""``.
        target: the class explained.
    """

    method: str
    map: np.ndarray
    layer: str
    note: str
    target: int

    @property
    def nbytes(self) -> int:
        """The memory its map takes."""
        return self.map.nbytes


@dataclasses.dataclass(frozen=True)
class MethodChecks:
    """Whether to believe one method's map of one image.

    Attributes:
        deletion: the area under the target's probability as the pixels the map marks
            are removed, most important first: lower is more faithful.
        insertion: the area as they are put back into a blurred image: higher is more
            faithful.
        randomised: the rank correlation between the map and the same method's map once
            every weight of the network is random (Adebayo et al. 2018): near 0 means
            the map depends on what the network learned.
    """

    deletion: float
    insertion: float
    randomised: float

    @property
    def shows_image(self) -> bool:
        """Whether the map barely changes when the model is random: it shows the image
        more than the model."""
        return self.randomised >= SANITY_THRESHOLD


def method_map(
    model: LoadedModel,
    x: torch.Tensor,
    method: str,
    *,
    layer: str | None = None,
    target: int | None = None,
    run: Run | None = None,
) -> MethodMap:
    """A method's map of one image, as :func:`cnnlens.attribution.attribute` makes it.

    Args:
        model: the model (``open_model``).
        x: one preprocessed image, 1×C×H×W.
        method: one of :data:`cnnlens.attribution.METHODS`.
        layer: the layer of a CAM; default the rectified output of the last block.
        target: the class to explain; default the network's answer.
        run: reports progress and asks to stop (a long Score-CAM); optional.

    Raises:
        ValueError: as :func:`cnnlens.attribution.attribute` raises it.
        cnnlens.results.Cancelled: if ``run`` asked to stop.
    """
    found = attribute(
        model,
        x,
        method,
        layer=layer,
        target=target,
        progress=None if run is None else run.report,
        should_stop=None if run is None else run.should_stop,
    )
    values = np.asarray(found, dtype=np.float32).view(np.ndarray).copy()
    return MethodMap(method, values, found.layer or "", found.note, int(found.target))


def method_checks(model: LoadedModel, x: torch.Tensor, found: MethodMap) -> MethodChecks:
    """The deletion and insertion areas of a method's map of one image, and its sanity
    check with the whole network randomised.

    Raises:
        ValueError: as :func:`cnnlens.faithfulness_metrics.faithfulness` raises it.
    """
    areas = [
        faithfulness(model, x, found.map, metric, target=found.target).area
        for metric in ("deletion", "insertion")
    ]
    trained = AttributionMap(
        found.map, method=found.method, layer=found.layer or None, target=found.target
    )
    steps = sanity_check(model, x, found.method, cascade=False, trained=trained)
    return MethodChecks(float(areas[0]), float(areas[1]), float(steps[-1].correlation))


def _image_digest(pixels: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes())
    digest.update(f"{pixels.shape}{pixels.dtype}".encode())
    return digest.hexdigest()[:32]


@dataclasses.dataclass(frozen=True, eq=False)
class MethodMapSpec(ModelSpec[MethodMap]):
    """A method's map of one image, as a result the store keeps.

    Attributes:
        pixels: the image as the dashboard holds it (uint8); its digest is in the key.
        method: one of :data:`cnnlens.attribution.METHODS`.
        layer: the CAM's layer, ``None`` for the default.
        target: the class, ``None`` for the network's answer.
    """

    pixels: np.ndarray
    method: str
    layer: str | None = None
    target: int | None = None
    kind = "method_map"
    result_type = MethodMap

    def parts(self) -> dict[str, object]:
        if self.method not in METHODS:
            raise ValueError(
                f"Unknown method {self.method!r}. Choose one of: {', '.join(METHODS)}."
            )
        return {
            **super().parts(),
            "image": _image_digest(self.pixels),
            "method": self.method,
            "layer": None if self.layer is None else self.layer_path(self.layer),
            "target": self.target,
        }

    @property
    def title(self) -> str:
        return f"tracing the answer back with {self.method}"

    def compute(self, run: Run) -> MethodMap:
        batch = self.loaded.batch(self.pixels)
        return method_map(
            self.loaded, batch, self.method, layer=self.layer, target=self.target, run=run
        )


@dataclasses.dataclass(frozen=True, eq=False)
class MethodChecksSpec(ModelSpec[MethodChecks]):
    """The checks of a method's map of one image, as a result the store keeps.

    Attributes:
        of: the map's spec; the map is found, or made first.
    """

    of: MethodMapSpec
    kind = "method_checks"
    result_type = MethodChecks

    def parts(self) -> dict[str, object]:
        return {**super().parts(), "map": self.of.key}

    def requires(self) -> tuple[MethodMapSpec, ...]:
        return (self.of,)

    @property
    def title(self) -> str:
        return f"checking {self.of.method}'s map"

    def compute(self, run: Run) -> MethodChecks:
        found = run.get(self.of)
        run.check("before the checks")
        return method_checks(self.loaded, self.loaded.batch(self.of.pixels), found)


def drag_grid(side: int) -> tuple[int, int]:
    """The square's side and step for the drag-a-square view of an image of ``side``
    pixels: a quarter of the image, moved pixel by pixel on a small image (a few hundred
    forwards of a digit take a blink) and by a third of the square on a large one."""
    window = max(1, round(side / 4))
    return window, 1 if side <= 64 else max(1, window // 3)


@dataclasses.dataclass(frozen=True, eq=False)
class OcclusionSpec(ModelSpec[OcclusionScores]):
    """The class scores of one image with a square at every place of a grid
    (:func:`cnnlens.attribution.occlusion_scores`), as a result the store keeps.

    Attributes:
        pixels: the image as the dashboard holds it (uint8); its digest is in the key.
        window: the square's side in pixels.
        stride: the step between squares.
    """

    pixels: np.ndarray
    window: int
    stride: int
    kind = "occlusion_scores"
    result_type = OcclusionScores

    def parts(self) -> dict[str, object]:
        return {
            **super().parts(),
            "image": _image_digest(self.pixels),
            "window": self.window,
            "stride": self.stride,
        }

    @property
    def title(self) -> str:
        return "sliding the square over the image"

    def progress_text(self, done: int, total: int) -> str:
        return f"Sliding the square over the image: {done:,} of {total:,} places"

    def compute(self, run: Run) -> OcclusionScores:
        return occlusion_scores(
            self.loaded,
            self.loaded.batch(self.pixels),
            window=self.window,
            stride=self.stride,
            progress=run.report,
            should_stop=run.should_stop,
        )
