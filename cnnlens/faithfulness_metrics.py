"""Faithfulness: does an attribution map point at the pixels the network actually uses?

A map is faithful when the pixels it ranks first are the ones the answer depends
on. :func:`faithfulness` measures that for one image with three curves, each the
probability of the explained class as more and more pixels, most important first,
are changed:

- **deletion** (Petsiuk et al. 2018, RISE): the pixels are set to 0 in the model's
  input space (the dataset's mean colour for a normalised input, black for the
  demo). A faithful map makes the probability fall fast: a small area.
- **insertion** (RISE): the image starts blurred (an 11×11 Gaussian of σ 5 px,
  zero-padded, RISE's kernel) and the original pixels come back. A faithful map
  makes the probability rise fast: a large area.
- **road** (Rong et al. 2022, ROAD): the pixels are filled by noisy linear
  imputation, each the weighted mean of its 8 neighbours (1/6 direct, 1/12
  diagonal) solved as one sparse linear system with the known pixels fixed, plus
  seeded Gaussian noise (σ 0.01, as the paper's code and Quantus). Imputed
  pixels carry less of the "a hole was cut here" signal than zeros do. A faithful
  map makes the probability fall fast: a small area.

All the perturbed images of one curve go through the network in one forward, on
the model's private copy; the caller's model is never hooked or changed.

:class:`FaithfulnessSpec` measures deletion and insertion over a sample of a
dataset split, as a result the results store keeps, and :func:`most_faithful`
says in words which method did best.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve
from torch import nn

from cnnlens.attribution import METHODS, TITLES, attribute, check_target
from cnnlens.borrow import borrowed_copy
from cnnlens.private_copy import PrivateCopy, check_batch
from cnnlens.registry import SEED
from cnnlens.results import DatasetSpec, Derived, Run

if TYPE_CHECKING:
    from cnnlens.data import Dataset
    from cnnlens.models import LoadedModel

__all__ = [
    "BLUR_SIGMA",
    "METRICS",
    "ROAD_NOISE",
    "FaithfulnessCurve",
    "FaithfulnessResult",
    "FaithfulnessSpec",
    "FaithfulnessTableSpec",
    "blurred",
    "faithfulness",
    "impute",
    "most_faithful",
]

METRICS = ("deletion", "insertion", "road")
"""The curves :func:`faithfulness` draws."""

BLUR_SIGMA = 5.0
"""σ in pixels of the Gaussian blur insertion starts from (RISE's ``gkern(11, 5)``)."""
_BLUR_SIZE = 11

ROAD_NOISE = 0.01
"""σ of the Gaussian noise ROAD adds to each imputed value (the paper's code and Quantus)."""

# ROAD's neighbours and their weights: 1/6 for the four direct ones, 1/12 for the diagonals.
_NEIGHBOURS = (
    ((-1, -1), 1 / 12),
    ((-1, 0), 1 / 6),
    ((-1, 1), 1 / 12),
    ((0, -1), 1 / 6),
    ((0, 1), 1 / 6),
    ((1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((1, 1), 1 / 12),
)

# Names people read, for the methods of cnnlens.attribution.


@dataclass(frozen=True, eq=False)
class FaithfulnessCurve:
    """One faithfulness curve of one image.

    Attributes:
        metric: ``"deletion"``, ``"insertion"`` or ``"road"``.
        fractions: float32, the share of pixels changed at each point: 0, 1/steps, …, 1.
        scores: float32, the softmax probability of ``target`` at each point.
        area: the trapezoidal area under the curve over fractions 0 to 1. Lower is
            more faithful for deletion and ROAD, higher for insertion.
        target: the class explained.
        still_predicted: bool, whether ``target`` is still the model's top class at
            each point (what ROAD's accuracy counts).
    """

    metric: str
    fractions: np.ndarray
    scores: np.ndarray
    area: float
    target: int
    still_predicted: np.ndarray

    def __post_init__(self) -> None:
        shape = self.fractions.shape
        if self.scores.shape != shape or self.still_predicted.shape != shape:
            raise ValueError(f"The {self.metric} curve's arrays do not fit together.")


# --- checks ----------------------------------------------------------------------------------


def _check_metric(metric: object) -> str:
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; choose one of {', '.join(METRICS)}.")
    return str(metric)


def _check_steps(steps: object) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"steps must be a whole number, at least 1; got {steps!r}.")
    return int(steps)


def _check_attribution(attribution: object, x: torch.Tensor) -> np.ndarray:
    """The map as a float64 H×W array at ``x``'s size, finite."""
    if isinstance(attribution, torch.Tensor):
        attribution = attribution.detach().cpu().numpy()
    if not isinstance(attribution, np.ndarray):
        raise TypeError(
            f"attribution must be an H×W numpy array (or an AttributionMap), "
            f"got {type(attribution).__name__}."
        )
    size = tuple(x.shape[-2:])
    if attribution.shape != size:
        raise ValueError(
            f"The attribution has shape {attribution.shape}, but the image is {size[0]}×"
            f"{size[1]}: give one value per pixel (an H×W map at the input's size)."
        )
    values = np.asarray(attribution, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(
            "The attribution holds NaN or infinite values; rank pixels by a finite map."
        )
    return values


# --- the perturbed images --------------------------------------------------------------------


def _ranks(attribution: np.ndarray) -> np.ndarray:
    """Each pixel's place in the order of removal: the highest value first, ties in raster order."""
    order = np.argsort(-attribution.ravel(), kind="stable")
    ranks = np.empty_like(order)
    ranks[order] = np.arange(order.size)
    return ranks.reshape(attribution.shape)


def _counts(pixels: int, steps: int) -> np.ndarray:
    """How many pixels are changed at each of the ``steps + 1`` points: ``i * pixels // steps``."""
    return np.arange(steps + 1) * pixels // steps


def _masks(ranks: np.ndarray, counts: np.ndarray, device: torch.device) -> torch.Tensor:
    """(steps + 1)×1×H×W: True where a pixel is changed at that point."""
    rank = torch.from_numpy(ranks).to(device)
    return (rank[None] < torch.from_numpy(counts).to(device)[:, None, None])[:, None]


def blurred(x: torch.Tensor) -> torch.Tensor:
    """A batch blurred as insertion starts from: RISE's 11×11 Gaussian kernel of σ 5 px,
    each channel alone, zero-padded (zero is the mean colour of a normalised input).

    Args:
        x: an N×C×H×W batch.

    Returns:
        The blurred batch, in ``x``'s dtype and device.
    """
    t = torch.arange(_BLUR_SIZE, dtype=torch.float32, device=x.device) - _BLUR_SIZE // 2
    line = torch.exp(-(t**2) / (2 * BLUR_SIGMA**2))
    kernel = torch.outer(line, line)
    kernel = (kernel / kernel.sum()).expand(x.shape[1], 1, _BLUR_SIZE, _BLUR_SIZE)
    out = F.conv2d(x.float(), kernel, padding=_BLUR_SIZE // 2, groups=x.shape[1])
    return out.to(x.dtype)


def impute(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Linear imputation as ROAD does it: each removed pixel becomes the weighted mean of its
    neighbours inside the image (1/6 direct, 1/12 diagonal), removed ones included, solved
    for all removed pixels at once as one sparse linear system. No noise is added here.

    Args:
        image: C×H×W values.
        removed: H×W bool, True for the pixels to fill.

    Returns:
        A float64 copy of ``image`` with the removed pixels filled. With every pixel
        removed any constant fits; it is 0, the mean colour, as deletion uses.
    """
    channels, height, width = image.shape
    flat = image.reshape(channels, -1).astype(np.float64)
    unknown = np.flatnonzero(removed.ravel())
    filled = flat.copy()
    if unknown.size == flat.shape[1]:
        return np.zeros_like(filled).reshape(image.shape)
    if unknown.size:
        filled[:, unknown] = _solve_removed(flat, unknown, height, width)
    return filled.reshape(image.shape)


def _solve_removed(flat: np.ndarray, unknown: np.ndarray, height: int, width: int) -> np.ndarray:
    """The removed pixels' values (C×n): ``sum w·(x_i - x_j) = 0`` over each one's neighbours."""
    count = unknown.size
    variable = np.full(flat.shape[1], -1)
    variable[unknown] = np.arange(count)
    rows, cols = np.divmod(unknown, width)
    diagonal = np.zeros(count)
    right = np.zeros((count, flat.shape[0]))
    entries: list[tuple[np.ndarray, np.ndarray, float]] = []
    for (dy, dx), weight in _NEIGHBOURS:
        y, x = rows + dy, cols + dx
        inside = np.flatnonzero((y >= 0) & (y < height) & (x >= 0) & (x < width))
        neighbour = y[inside] * width + x[inside]
        diagonal[inside] += weight
        other = variable[neighbour]
        free = other >= 0
        entries.append((inside[free], other[free], -weight))
        right[inside[~free]] += weight * flat[:, neighbour[~free]].T
    row = np.concatenate([np.arange(count), *(e[0] for e in entries)])
    col = np.concatenate([np.arange(count), *(e[1] for e in entries)])
    value = np.concatenate([diagonal, *(np.full(e[0].size, e[2]) for e in entries)])
    system = coo_matrix((value, (row, col)), shape=(count, count)).tocsc()
    return np.asarray(spsolve(system, right)).reshape(count, -1).T


def _road_images(
    x: torch.Tensor, ranks: np.ndarray, counts: np.ndarray, noise: float, seed: int
) -> torch.Tensor:
    """ROAD's images: at each point the most relevant pixels imputed, plus seeded noise."""
    rng = np.random.default_rng(seed)
    image = x[0].detach().double().cpu().numpy()
    images = []
    for count in counts:
        removed = ranks < count
        filled = impute(image, removed)
        if noise and count:
            filled[:, removed] += rng.normal(0.0, noise, (image.shape[0], int(count)))
        images.append(filled)
    return torch.from_numpy(np.stack(images)).to(x.device, x.dtype)


def _curve_images(
    x: torch.Tensor,
    ranks: np.ndarray,
    metric: str,
    steps: int,
    noise: float = ROAD_NOISE,
    seed: int = 0,
) -> torch.Tensor:
    """The (steps + 1)×C×H×W images of one curve, from no pixel changed to all."""
    counts = _counts(ranks.size, steps)
    if metric == "road":
        return _road_images(x, ranks, counts, noise, seed)
    masks = _masks(ranks, counts, x.device)
    if metric == "deletion":
        return torch.where(masks, torch.zeros((), dtype=x.dtype, device=x.device), x)
    return torch.where(masks, x, blurred(x))


# --- the model's answers ---------------------------------------------------------------------


class _AsItIs:
    """A call that leaves every module's output as it is: a plain forward of the copy."""

    def on_output(self, path: str, inputs: tuple[Any, ...], output: Any) -> None:
        return None


def _probabilities(copy: PrivateCopy, batch: torch.Tensor) -> torch.Tensor:
    """N×K softmax probabilities (float32, CPU) of a batch, on the private copy.

    Raises:
        ValueError: for a model that does not output N×K class scores.
    """
    with torch.inference_mode():
        logits = copy.run(copy.prepare(batch), _AsItIs())
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != len(batch):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"Faithfulness needs class scores (N×K), but this model outputs {shape}; "
            "choose a classifier."
        )
    return torch.softmax(logits.float(), dim=1).cpu()


def _in_range(target: int, classes: int) -> int:
    if not 0 <= target < classes:
        raise ValueError(f"target must be between 0 and {classes - 1}; got {target}.")
    return target


def _curve(metric: str, probabilities: torch.Tensor, target: int | None) -> FaithfulnessCurve:
    """The curve from the probabilities of its images; ``None``: the predicted class."""
    steps = len(probabilities) - 1
    if target is None:
        original = steps if metric == "insertion" else 0  # the point where nothing changed
        target = int(probabilities[original].argmax())
    target = _in_range(target, probabilities.shape[1])
    fractions = np.arange(steps + 1, dtype=np.float64) / steps
    scores = probabilities[:, target].numpy()
    return FaithfulnessCurve(
        metric=metric,
        fractions=fractions.astype(np.float32),
        scores=scores.astype(np.float32),
        area=float(np.trapezoid(scores.astype(np.float64), fractions)),
        target=target,
        still_predicted=(probabilities.argmax(dim=1) == target).numpy(),
    )


def faithfulness(
    model: nn.Module | LoadedModel,
    x: torch.Tensor,
    attribution: np.ndarray,
    metric: str,
    *,
    target: int | None = None,
    steps: int = 20,
    noise: float = ROAD_NOISE,
    seed: int = 0,
) -> FaithfulnessCurve:
    """How fast the model's answer changes as the pixels a map ranks first are changed.

    At fractions 0, 1/steps, …, 1 of the pixels, taken in the map's order (highest
    first, ties in raster order, every channel of a pixel at once), the probability
    of the class is measured: with those pixels deleted (set to 0), inserted into a
    blurred copy, or imputed from their neighbours (ROAD). See the module's text.

    Example:
        >>> from cnnlens import demo_dataset, faithfulness, grad_cam, open_model
        >>> loaded, dataset = open_model("demo"), demo_dataset()
        >>> x = loaded.batch(dataset.load_image(dataset.pick(128)))
        >>> curve = faithfulness(loaded, x, grad_cam(loaded, x, "relu_4"), "deletion")
        >>> curve.fractions.shape, bool(curve.scores[0] > curve.scores[-1])
        ((21,), True)

    Args:
        model: an ``nn.Module`` (run on a temporary copy) or a LoadedModel (run on its
            private copy); it must output class scores.
        x: one preprocessed image, 1×C×H×W (``loaded.batch(image)``).
        attribution: an H×W map at ``x``'s size (a numpy array or an AttributionMap);
            larger means more evidence.
        metric: ``"deletion"``, ``"insertion"`` or ``"road"``.
        target: the class; default the class the model predicts for ``x``.
        steps: points after the first; ``steps + 1`` images in one forward.
        noise: ROAD only: σ of the noise added to each imputed value (0 for none).
        seed: ROAD only: the seed of that noise.

    Returns:
        A :class:`FaithfulnessCurve`.

    Raises:
        TypeError: for a model that is neither, a batch that is not a tensor, an
            attribution that is not an array, or a target that is not a whole number.
        ValueError: for an unknown metric (the message names the choices), an
            attribution not H×W at the image's size or not finite, a batch that is not
            one finite image, a target out of range (the message names it), steps
            below 1, or a model without N×K class scores.
    """
    metric = _check_metric(metric)
    steps = _check_steps(steps)
    check_batch(x, one_image=True, name="Faithfulness")
    ranks = _ranks(_check_attribution(attribution, x))
    chosen = check_target(target)
    images = _curve_images(x.detach(), ranks, metric, steps, noise, seed)
    with borrowed_copy(model, share_tensors=True) as (copy, _, _):
        return _curve(metric, _probabilities(copy, images), chosen)


# --- over a dataset --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FaithfulnessResult:
    """Deletion and insertion areas of one attribution method over a sample of a split.

    Each image's map explains the class the model predicts for it.

    Attributes:
        method: the attribution method.
        layer: the layer its maps were taken at (``None`` for input methods).
        steps: points after the first on each curve.
        classes: the model's class names.
        indices: int64, each image's row in the split (``dataset.rows(split)``), ascending.
        labels: their labels (``None`` for unlabelled images).
        predicted: int64, the class each image's map explains (the model's answer).
        deletion: float32, each image's deletion area (lower is more faithful).
        insertion: float32, each image's insertion area (higher is more faithful).
    """

    method: str
    layer: str | None
    steps: int
    classes: tuple[str, ...]
    indices: np.ndarray
    labels: list[object | None]
    predicted: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray

    def __post_init__(self) -> None:
        shape = (len(self.labels),)
        blocks = (self.indices, self.predicted, self.deletion, self.insertion)
        if any(block.shape != shape for block in blocks):
            raise ValueError(f"The faithfulness of {self.method} does not fit together.")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def mean_deletion(self) -> float:
        """The deletion area over all images (lower is more faithful)."""
        return float(self.deletion.mean(dtype=np.float64)) if len(self) else math.nan

    @property
    def mean_insertion(self) -> float:
        """The insertion area over all images (higher is more faithful)."""
        return float(self.insertion.mean(dtype=np.float64)) if len(self) else math.nan

    def by_class(self, by: str = "predicted") -> pd.DataFrame:
        """Mean areas per class: one row per class with images, in the model's class order
        (``by="predicted"``) or by label, sorted (``by="label"``).

        Returns:
            Columns ``class``, ``images``, ``deletion``, ``insertion`` (means).

        Raises:
            ValueError: for ``by`` other than ``"predicted"`` or ``"label"``.
        """
        if by == "predicted":
            keys = [self.classes[i] for i in self.predicted]
        elif by == "label":
            keys = [str(label) for label in self.labels]
        else:
            raise ValueError(f"by must be 'predicted' or 'label', got {by!r}.")
        frame = pd.DataFrame(
            {"class": keys, "deletion": self.deletion, "insertion": self.insertion}
        )
        grouped = frame.groupby("class", sort=by == "label")
        table = grouped.agg(
            images=("deletion", "size"),
            deletion=("deletion", "mean"),
            insertion=("insertion", "mean"),
        )
        if by == "predicted":
            table = table.reindex([name for name in self.classes if name in table.index])
        return table.reset_index()


def _sample(dataset: Dataset, split: str, images: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """At most ``images`` rows of a split, drawn with ``seed``, in dataset order."""
    rows = dataset.rows(split)
    numbers = {name: i for i, name in enumerate(rows["filename"].tolist())}
    indices = np.sort([numbers[name] for name in dataset.pick_many(seed, images, split)])
    names = rows["filename"].tolist()
    return indices.astype(np.int64), [names[i] for i in indices]


def _group_areas(
    copy: PrivateCopy, xs: torch.Tensor, ranks: list[np.ndarray], targets: list[int], steps: int
) -> list[tuple[float, float]]:
    """Each image's (deletion, insertion) areas, every curve of the group in one forward."""
    images = [
        _curve_images(xs[i : i + 1], ranks[i], metric, steps)
        for i in range(len(ranks))
        for metric in ("deletion", "insertion")
    ]
    probabilities = _probabilities(copy, torch.cat(images)).split(steps + 1)
    return [
        (
            _curve("deletion", probabilities[2 * i], targets[i]).area,
            _curve("insertion", probabilities[2 * i + 1], targets[i]).area,
        )
        for i in range(len(ranks))
    ]


@dataclass(frozen=True, eq=False)
class FaithfulnessSpec(DatasetSpec[FaithfulnessResult]):
    """Deletion and insertion areas of one attribution method over a seeded sample of a
    split, as a result the results store keeps.

    Each sampled image gets its map of the predicted class
    (``attribute(loaded, x, method, layer=layer)``), then its deletion and
    insertion curves (:func:`faithfulness`); the curves of several images share
    one forward of about ``batch_size`` images.

    Attributes:
        method: an attribution method of :data:`cnnlens.attribution.METHODS`.
        layer: the layer for layer methods (a renamed layer or module path: both give
            one key); ``None`` for the method's default.
        images: at most this many images, drawn with ``seed`` (the dataset's own pick).
        steps: points after the first on each curve.
        seed: the seed of the sample.
    """

    method: str
    layer: str | None = None
    images: int = 1000
    steps: int = 20
    seed: int = SEED
    kind = "faithfulness"
    result_type = FaithfulnessResult

    def parts(self) -> dict[str, object]:
        if self.method not in METHODS:
            raise ValueError(
                f"Unknown attribution method {self.method!r}; choose one of {', '.join(METHODS)}."
            )
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images < 1:
            raise ValueError(f"images must be a whole number, at least 1; got {self.images!r}.")
        return {
            **super().parts(),
            "method": self.method,
            "layer": None if self.layer is None else self.layer_path(self.layer),
            "images": self.images,
            "steps": _check_steps(self.steps),
            "seed": self.seed,
        }

    @property
    def title(self) -> str:
        return f"measuring how faithful {TITLES.get(self.method, self.method)} is"

    def progress_text(self, done: int, total: int) -> str:
        return f"{self.title[:1].upper()}{self.title[1:]}: {done:,} of {total:,} images"

    def compute(self, run: Run) -> FaithfulnessResult:
        self.parts()  # its checks, before any image is read
        if self.loaded.classes is None:
            raise ValueError("This model has no classes, so it predicts none; choose a classifier.")
        indices, names = _sample(self.dataset, self.split, self.images, self.seed)
        per_forward = max(1, self.batch_size // (2 * (self.steps + 1)))
        found: dict[str, list] = {key: [] for key in ("indices", "predicted", "areas")}
        layer_used: str | None = None
        for start in range(0, len(names), per_forward):
            run.check(f"after {start:,} of {len(names):,} images")
            group = self._group(names[start : start + per_forward], run)
            if group is not None:
                read, targets, areas, layer_used = group
                found["indices"].extend(indices[start + i] for i in read)
                found["predicted"].extend(targets)
                found["areas"].extend(areas)
            run.report(min(start + per_forward, len(names)), len(names))
        if not found["indices"]:
            raise ValueError(f"None of the sampled images of the {self.split} split could be read.")
        return self._result(found, layer_used)

    def _group(
        self, names: list[str], run: Run
    ) -> tuple[list[int], list[int], list, str | None] | None:
        """One group's images read, their predicted classes and areas, and the layer used."""
        from cnnlens.pipeline import load_batch
        from cnnlens.preprocess import scale_uint8_batch

        loaded = self.loaded
        pixels, read, _ = load_batch(self.dataset, names, self.split, loaded.spec)
        if pixels is None:
            return None
        xs = scale_uint8_batch(pixels, loaded.spec, loaded.device, loaded.dtype)
        stop = run.should_stop  # a slow method (Score-CAM on a large model) stops within an image
        maps = [
            attribute(loaded, xs[i : i + 1], self.method, layer=self.layer, should_stop=stop)
            for i in range(len(xs))
        ]
        targets = [int(m.target) for m in maps]
        ranks = [_ranks(_check_attribution(m, xs)) for m in maps]
        areas = _group_areas(loaded.private_copy, xs, ranks, targets, self.steps)
        return read, targets, areas, maps[0].layer

    def _result(self, found: dict[str, list], layer: str | None) -> FaithfulnessResult:
        indices = np.array(found["indices"], dtype=np.int64)
        labels = self.dataset.rows(self.split)["label"].tolist()  # Python values, as JSON keeps
        areas = np.array(found["areas"], dtype=np.float32).reshape(-1, 2)
        return FaithfulnessResult(
            method=self.method,
            layer=layer,
            steps=self.steps,
            classes=tuple(self.loaded.classes or ()),
            indices=indices,
            labels=[labels[i] for i in indices],
            predicted=np.array(found["predicted"], dtype=np.int64),
            deletion=areas[:, 0],
            insertion=areas[:, 1],
        )


# --- in words --------------------------------------------------------------------------------


def _title(method: str) -> str:
    return TITLES.get(method, method)


def _others(ranked: list[tuple[str, float]]) -> str:
    """The methods after the first, at most three: "0.31 for Saliency and 0.40 for Occlusion"."""
    shown = [f"{value:.2f} for {_title(name)}" for name, value in ranked[1:4]]
    more = len(ranked) - 4
    if more > 0:
        shown.append(f"{more} more")
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"


def most_faithful(results: Mapping[str, FaithfulnessResult]) -> str:
    """Which attribution method is most faithful, in plain words.

    Lower deletion areas and higher insertion areas are more faithful; when the two
    rank different methods first, the sentence says so and names both.

    Args:
        results: each method's result, by method name (``{"gradcam": ..., ...}``).

    Returns:
        One or two sentences.

    Raises:
        ValueError: for no results.
    """
    if not results:
        raise ValueError("Measure at least one method to say which is most faithful.")
    deletion = sorted(((m, r.mean_deletion) for m, r in results.items()), key=lambda p: p[1])
    insertion = sorted(((m, r.mean_insertion) for m, r in results.items()), key=lambda p: -p[1])
    if len(results) == 1:
        (name, value), (_, inserted) = deletion[0], insertion[0]
        return (
            f"Only {_title(name)} was measured: deletion area {value:.2f} (lower is more "
            f"faithful), insertion area {inserted:.2f} (higher is more faithful)."
        )
    best_deletion, best_insertion = deletion[0][0], insertion[0][0]
    removed = (
        f"When the pixels {_title(best_deletion)} marks are removed first, the network loses "
        f"its answer fastest: deletion area {deletion[0][1]:.2f}, against {_others(deletion)}."
    )
    if best_deletion == best_insertion:
        return (
            f"{removed} Inserted first, they bring it back fastest too: insertion area "
            f"{insertion[0][1]:.2f}, against {_others(insertion)}."
        )
    return (
        f"{removed} But inserting first the pixels {_title(best_insertion)} marks brings the "
        f"answer back fastest: insertion area {insertion[0][1]:.2f}, against "
        f"{_others(insertion)}. The two measures disagree."
    )


@dataclass(frozen=True, eq=False)
class FaithfulnessTableSpec(Derived[dict]):
    """Several methods' :class:`FaithfulnessSpec` results, side by side: found when each
    is stored, else computed one method after the other with progress and Cancel.

    Attributes:
        each: one spec per method, on the same images.
    """

    each: tuple[FaithfulnessSpec, ...]
    kind = "faithfulness_table"

    def parts(self) -> dict[str, object]:
        return {"each": [spec.key for spec in self.each]}

    def requires(self) -> tuple[FaithfulnessSpec, ...]:
        return self.each

    @property
    def title(self) -> str:
        return f"measuring the faithfulness of {len(self.each)} methods"

    def derive(self, *results: FaithfulnessResult) -> dict[str, FaithfulnessResult]:
        return {result.method: result for result in results}
