"""Every image of a dataset on a 2-D map, placed by what a layer sees of it.

:func:`embedding` lays out a layer's per-image channel means (from
:func:`cnnlens.insights.layer_stats`) by PCA (exact, instant), t-SNE (openTSNE's
FFT gradients on cnnlens's own exact neighbour search, reported and cancellable in
both phases) or UMAP (with ``umap-learn``). :class:`EmbeddingSpec` is the map as a
result the results store keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cnnlens.insights import LayerStats, LayerStatsSpec
from cnnlens.results import Cancelled, Run, Spec

__all__ = [
    "TSNE_ITERATIONS",
    "TSNE_NEIGHBOUR_STEPS",
    "TSNE_STEPS",
    "EmbeddingSpec",
    "embedding",
]

_METHODS = ("pca", "tsne", "umap")


TSNE_ITERATIONS = 750  # openTSNE's default: 250 early-exaggeration iterations, then 500
# The neighbour search counts as this many steps of the progress, ahead of the iterations.
TSNE_NEIGHBOUR_STEPS = 50
TSNE_STEPS = TSNE_NEIGHBOUR_STEPS + TSNE_ITERATIONS
_TSNE_EVERY = 10  # iterations between progress reports (each also computes the KL error)
_TSNE_DIMENSIONS = 50  # features are first reduced to this many principal components
_NEIGHBOUR_ROWS = 2048  # rows of the distance matrix per block of the neighbour search


def _principal_components(features: np.ndarray, count: int) -> np.ndarray:
    """The features projected on their first ``count`` principal components (as they are
    when they have no more dimensions than that), from the D×D covariance: cheap for many rows."""
    if features.shape[1] <= count:
        return features
    centred = features - features.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    return centred @ vectors[:, ::-1][:, :count]


def _nearest_neighbours(
    features: np.ndarray,
    k: int,
    on_block: Callable[[int, int], None],
    should_stop: Callable[[], bool] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows (Euclidean), exact, block by block.

    Exact rather than approximate (Annoy): as fast at the sizes cnnlens meets, the
    same neighbours on every run and thread count, and it reports each block and
    can stop between them.

    Returns:
        ``(indices, distances)``, both N×k, nearest first.

    Raises:
        Cancelled: if ``should_stop()`` returned True between blocks.
    """
    import torch

    points = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    squares = (points * points).sum(dim=1)
    count = len(points)
    indices = np.empty((count, k), dtype=np.int64)
    distances = np.empty((count, k), dtype=np.float64)
    for start in range(0, count, _NEIGHBOUR_ROWS):
        if should_stop is not None and should_stop():
            raise Cancelled(f"t-SNE stopped while finding neighbours ({start:,} of {count:,}).")
        block = points[start : start + _NEIGHBOUR_ROWS]
        rows = torch.arange(len(block))
        # |a - b|² = |a|² + |b|² - 2ab; a row's own |a|² does not change its ranking.
        ranking = torch.addmm(squares[None, :], block, points.T, alpha=-2.0)
        ranking[rows, rows + start] = float("inf")  # not its own neighbour
        nearest, found = torch.topk(ranking, k, dim=1, largest=False, sorted=True)
        own = squares[start : start + len(block), None]
        indices[start : start + len(block)] = found.numpy()
        distances[start : start + len(block)] = (nearest + own).clamp_min(0).sqrt().numpy()
        on_block(min(start + _NEIGHBOUR_ROWS, count), count)
    return indices, distances


def _tsne(
    features: np.ndarray,
    seed: int,
    on_progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> np.ndarray:
    """openTSNE's t-SNE (FFT-accelerated gradients) on exact neighbours, reporting both
    phases as :data:`TSNE_STEPS` steps and able to stop in either."""
    from openTSNE import TSNE, affinity
    from openTSNE.nearest_neighbors import PrecomputedNeighbors

    def report(done: int) -> None:
        if on_progress is not None:
            on_progress(done, TSNE_STEPS)

    report(0)
    perplexity = min(30.0, (len(features) - 1) / 3)
    k = min(len(features) - 1, max(1, round(3 * perplexity)))  # what openTSNE's own search uses
    indices, distances = _nearest_neighbours(
        _principal_components(features, _TSNE_DIMENSIONS),
        k,
        lambda done, total: report(done * TSNE_NEIGHBOUR_STEPS // total),
        should_stop,
    )
    if should_stop is not None and should_stop():
        raise Cancelled("t-SNE stopped after its neighbour search.")
    neighbours = affinity.PerplexityBasedNN(
        perplexity=perplexity,
        knn_index=PrecomputedNeighbors(indices, distances),
        random_state=seed,
    )
    done = 0
    stopped = False

    def step(iteration: int, error: float, embedding: np.ndarray) -> bool:
        # openTSNE counts iterations from 1 in each of its two phases.
        nonlocal done, stopped
        done += _TSNE_EVERY
        report(TSNE_NEIGHBOUR_STEPS + min(done, TSNE_ITERATIONS))
        stopped = should_stop is not None and bool(should_stop())
        return stopped  # True ends the optimisation at once

    points = TSNE(
        random_state=seed, n_jobs=-1, callbacks=step, callbacks_every_iters=_TSNE_EVERY
    ).fit(features, affinities=neighbours, initialization="pca")
    if stopped:
        raise Cancelled(f"t-SNE stopped after {done} of {TSNE_ITERATIONS} iterations.")
    return np.asarray(points, dtype=np.float32)


def _pca(features: np.ndarray) -> np.ndarray:
    """The first two principal components, each axis signed by its largest weight."""
    centred = features - features.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    count = min(2, len(s))
    signs = np.sign(vt[np.arange(count), np.abs(vt[:count]).argmax(axis=1)])
    signs[signs == 0] = 1
    points = np.zeros((len(features), 2))
    points[:, :count] = u[:, :count] * s[:count] * signs
    return points.astype(np.float32)


def embedding(
    stats_or_pooled: LayerStats | np.ndarray,
    method: str = "pca",
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Place each image on a 2-D map so images the layer sees alike lie close together.

    Example:
        >>> from cnnlens import demo_dataset, embedding, layer_stats, open_model
        >>> stats = layer_stats(open_model("demo"), demo_dataset(), "conv_4")
        >>> embedding(stats, method="pca").shape
        (4000, 2)

    Args:
        stats_or_pooled: a :class:`LayerStats` (its per-channel means are used) or an
            N×D array of pooled features.
        method: ``"pca"`` (fast, exact, the default), ``"tsne"`` (openTSNE; slower,
            keeps neighbourhoods) or ``"umap"`` (needs the ``umap-learn`` package).
        seed: the random seed of t-SNE and UMAP (PCA has none).
        on_progress: t-SNE only: called with (steps done, :data:`TSNE_STEPS`); the
            first :data:`TSNE_NEIGHBOUR_STEPS` steps are the neighbour search.
        should_stop: t-SNE only: asked between blocks of the neighbour search and
            between iterations; True stops it.

    Returns:
        An N×2 float32 array. PCA's axes have a fixed sign: the largest weight of
        each component is positive, so the map does not flip between runs.

    Raises:
        ValueError: for an unknown method, fewer than 2 images, or UMAP without ``umap-learn``.
        Cancelled: if ``should_stop()`` returned True during t-SNE.
    """
    features = stats_or_pooled.mean if isinstance(stats_or_pooled, LayerStats) else stats_or_pooled
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(
            f"An embedding needs an N×D array of at least 2 images; got shape {features.shape}."
        )
    if method == "pca":
        return _pca(features)
    if method == "tsne":
        return _tsne(features, seed, on_progress, should_stop)
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise ValueError(
                "UMAP needs the umap-learn package: pip install umap-learn. "
                "PCA and t-SNE work without it."
            ) from None
        return (
            umap.UMAP(n_components=2, random_state=seed).fit_transform(features).astype(np.float32)
        )
    raise ValueError(f"method must be one of {', '.join(_METHODS)}; got {method!r}.")


@dataclass(frozen=True, eq=False)
class EmbeddingSpec(Spec[np.ndarray]):
    """Every image of a split on a 2-D map of a layer's channel means (:func:`embedding`).

    Attributes:
        stats: the layer's statistics the map is made of (computed first when missing).
        method: ``"pca"``, ``"tsne"`` or ``"umap"``.
        seed: the random seed of t-SNE and UMAP.
    """

    stats: LayerStatsSpec
    method: str = "pca"
    seed: int = 0
    kind = "embedding"

    def parts(self) -> dict[str, object]:
        return {"stats": self.stats.key, "method": self.method, "seed": self.seed}

    def requires(self) -> tuple[LayerStatsSpec]:
        return (self.stats,)

    @property
    def title(self) -> str:
        return "making the " + {"tsne": "t-SNE", "umap": "UMAP"}.get(self.method, "PCA") + " map"

    def progress_text(self, done: int, total: int) -> str:
        if self.method != "tsne":
            return f"Making the {self.method.upper()} map…"
        if done < TSNE_NEIGHBOUR_STEPS:
            return "t-SNE: finding each image's neighbours…"
        steps = total - TSNE_NEIGHBOUR_STEPS
        return f"t-SNE: arranging the map, step {done - TSNE_NEIGHBOUR_STEPS} of {steps}"

    def compute(self, run: Run) -> np.ndarray:
        stats = run.get(self.stats)
        return embedding(
            stats,
            method=self.method,
            seed=self.seed,
            on_progress=run.report,
            should_stop=run.should_stop,
        )
