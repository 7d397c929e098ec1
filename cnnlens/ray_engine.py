"""The batch extractor on Ray Data: the same features file, from a pool of actors.

Ray tasks decode the images and actors, each holding the network, run the
extraction (one actor per GPU on a GPU cluster, where decoding overlaps the
forward passes; on CPUs Ray fuses both steps into the actors). Rows come back
in dataset order and go through the same writer as a local run, so the Parquet
file is the same. Ray is imported only when this engine runs.

:func:`ray_visualization` spreads a channel atlas's feature visualizations over
Ray tasks, one group of channels each, into the same results store.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cnnlens.data import Dataset, Problem
from cnnlens.models import LoadedModel, open_model
from cnnlens.pipeline import FeatureBatch, FeatureSource, load_batch, map_shapes, pool_maps
from cnnlens.preprocess import scale_uint8_batch
from cnnlens.registry import InputSpec

if TYPE_CHECKING:
    from cnnlens.feature_visualization import ChannelImagesSpec
    from cnnlens.store import ResultStore

__all__ = ["ray_session", "ray_source", "ray_visualization"]

_INSTALL = "pip install 'ray[data]>=2.9'"


def _ray() -> Any:
    try:
        import ray
        import ray.data  # the engine needs Ray Data, not only Ray core
    except ImportError:
        raise ValueError(
            f"The Ray engine (--engine ray) needs Ray Data, which is not installed here: {_INSTALL}"
        ) from None
    return ray


def _decode(
    rows: dict[str, np.ndarray], dataset: Dataset, split: str, spec: InputSpec
) -> dict[str, np.ndarray]:
    """Decode and preprocess a batch of images; an unreadable one gets zeros and its reason."""
    names = [str(name) for name in rows["filename"]]
    read, positions, failed = load_batch(dataset, names, split, spec)
    pixels = np.zeros((len(names), *spec.shape), np.uint8)
    if read is not None:
        pixels[positions] = read.numpy()
    errors = np.full(len(names), "", dtype=object)
    for position, reason in failed:
        errors[position] = reason
    return {"position": rows["position"], "pixels": pixels, "error": errors}


class _Extract:
    """A Ray actor holding the network: pixels in, pooled features out."""

    def __init__(
        self,
        model: str,
        weights: str | None,
        weights_id: str,
        device: str,
        dtype: torch.dtype,
        targets: list[str],
        pool: str,
    ) -> None:
        self.loaded = open_model(model, weights=weights, device=device, dtype=dtype)
        if self.loaded.weights_id != weights_id:
            # Another cache or file on this node: its features would not match the others'.
            raise ValueError(
                f"This Ray node loads other weights for {model} ({self.loaded.weights}) than "
                f"the driver; put the same weights file on a path every node sees."
            )
        self.extract = self.loaded.extractor(targets)
        self.pool = pool

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"]))
            spec, device, dtype = self.loaded.spec, self.loaded.device, self.loaded.dtype
            maps = self.extract(scale_uint8_batch(pixels, spec, device, dtype))
            out = {"position": batch["position"], "error": batch["error"]}
            for i, value in enumerate(maps.values()):
                flat = pool_maps(value, self.pool).cpu().numpy()
                out[f"feature_{i}"] = flat.reshape(len(flat), -1)
        return out


def ray_source(
    loaded: LoadedModel,
    dataset: Dataset,
    targets: Sequence[str],
    *,
    weights: str | Path | None = None,
    split: str = "train",
    pool: str = "mean",
    batch_size: int = 64,
    device: str = "cpu",
    address: str | None = None,
    concurrency: int | None = None,
    num_cpus: int | None = None,
) -> FeatureSource:
    """Ray Data actors as the batches of :func:`cnnlens.parquet.extract_to_parquet`, in order.

    Uses the running Ray when this process has one; else connects to
    ``address`` (``"auto"``, ``"ray://head:10001"``), or starts a local Ray
    with ``num_cpus`` and shuts it down afterwards. Tasks decode the images and
    actors run the network. The dataset folder and a weights file must be on a
    path every node sees.

    Args:
        loaded: the model on this process; every actor opens the same one.
        dataset: the dataset to run over.
        targets: the layers.
        weights: the weights file ``loaded`` was opened with, or ``None`` for the default.
        split: ``"train"`` or ``"test"``.
        pool: ``"mean"``, ``"max"`` or ``"none"``.
        batch_size: images per forward pass of an actor.
        device: where actors run: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when
            the cluster has GPUs).
        address: the Ray cluster; a local Ray when ``None``.
        concurrency: actors; default one per GPU on CUDA, else one per CPU but one
            (left to the decoding tasks).
        num_cpus: CPUs of a local Ray; all when ``None``.

    Returns:
        A :data:`cnnlens.pipeline.FeatureSource`.

    Raises:
        ValueError: if Ray Data is not installed, or a target is not a layer of the model.
    """
    ray = _ray()
    shapes = map_shapes(loaded, targets)
    rows = dataset.rows(split)
    filenames, labels = rows["filename"].tolist(), rows["label"].tolist()
    decode_args = {"dataset": dataset, "split": split, "spec": loaded.spec}
    actor_args = {
        "model": loaded.name,
        "weights": None if weights is None else str(weights),
        "weights_id": loaded.weights_id,
        "dtype": loaded.dtype,
        "targets": list(shapes),
        "pool": pool,
    }

    def batches(
        skip: Collection[str],
        should_stop: Callable[[], bool] | None,
        on_progress: Callable[[int, int], None] | None,
    ) -> Iterator[FeatureBatch]:
        todo = [i for i, name in enumerate(filenames) if name not in skip]
        if not todo:
            return
        with ray_session(address, num_cpus):
            items = [{"position": i, "filename": filenames[i]} for i in todo]
            data = _pipeline(ray, items, decode_args, actor_args, batch_size, device, concurrency)
            done = 0
            for batch in data.iter_batches(batch_size=batch_size, batch_format="numpy"):
                if should_stop is not None and should_stop():
                    return
                yield _feature_batch(batch, shapes, pool, filenames, labels)
                done += len(batch["position"])
                if on_progress is not None:
                    on_progress(done, len(todo))

    return batches


def _pipeline(
    ray: Any,
    items: list[dict[str, object]],
    decode_args: dict[str, object],
    actor_args: dict[str, object],
    batch_size: int,
    device: str,
    concurrency: int | None,
) -> Any:
    """The Ray Data pipeline over ``items``: decoding tasks, then a pool of network actors.

    Raises:
        ValueError: if CUDA is asked for and the cluster has no GPU.
    """
    gpus = int(ray.cluster_resources().get("GPU", 0))
    on_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
    if on_gpu and gpus == 0:
        raise ValueError("CUDA was asked for, but the Ray cluster has no GPU.")
    cpus = int(ray.cluster_resources().get("CPU", 1))
    data = ray.data.from_items(items)
    # Rows in dataset order, as the local engine writes them.
    data.context.execution_options.preserve_order = True
    # The command line shows its own progress bar; Ray's would interleave with it.
    data.context.enable_progress_bars = False
    return data.map_batches(
        _decode, fn_kwargs=decode_args, batch_size=batch_size, batch_format="numpy"
    ).map_batches(
        _Extract,
        fn_constructor_kwargs={**actor_args, "device": "cuda" if on_gpu else "cpu"},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(
            size=concurrency or (gpus if on_gpu else max(1, cpus - 1))
        ),
        num_gpus=1 if on_gpu else 0,
    )


def _feature_batch(
    batch: dict[str, np.ndarray],
    shapes: dict[str, tuple[int, ...]],
    pool: str,
    filenames: list[str],
    labels: list[object | None],
) -> FeatureBatch:
    positions = [int(p) for p in batch["position"]]
    errors = [str(error) for error in batch["error"]]
    good = [i for i, error in enumerate(errors) if not error]
    features = {}
    for i, (name, shape) in enumerate(shapes.items()):
        values = np.asarray(batch[f"feature_{i}"], np.float32)[good]
        features[name] = values.reshape(len(good), *(shape if pool == "none" else shape[:1]))
    return FeatureBatch(
        filenames=[filenames[positions[i]] for i in good],
        labels=[labels[positions[i]] for i in good],
        features=features,
        problems=[
            Problem(filenames[p], error)
            for p, error in zip(positions, errors, strict=True)
            if error
        ],
    )


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray for the duration: the one this process runs, or one started here and shut down after.

    Args:
        address: the Ray cluster (``"auto"``, ``"ray://head:10001"``); a local Ray when ``None``.
        num_cpus: CPUs of a local Ray; all when ``None``.

    Yields:
        The ``ray`` module.

    Raises:
        ValueError: if Ray is not installed.
    """
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=address,
            num_cpus=None if address else num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _visualize_group(
    model: str,
    weights: str | None,
    weights_id: str,
    device: str,
    layer: str,
    channels: list[int],
    settings: dict[str, Any],
) -> np.ndarray:
    """A Ray task: one group of channels' feature visualizations, as uint8 tiles."""
    from cnnlens.feature_visualization import to_uint8, visualize

    loaded = open_model(model, weights=weights, device=device)
    if loaded.weights_id != weights_id:
        raise ValueError(
            f"This Ray node loads other weights for {model} ({loaded.weights}) than the "
            "driver; put the same weights file on a path every node sees."
        )
    return to_uint8(visualize(loaded, layer, channels, batch_size=len(channels), **settings))


def ray_visualization(
    spec: ChannelImagesSpec,
    *,
    store: ResultStore,
    weights: str | Path | None = None,
    device: str = "cpu",
    address: str | None = None,
    num_cpus: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """The missing images of a channel atlas, computed on Ray.

    The channels not yet in the store are split into groups, at most the spec's
    ``batch_size`` each and at least one per CPU (or GPU) of the cluster; each group
    is one Ray task that opens the model and optimises the group's images together.
    Each finished group is stored at once, as the spec's own tiles. Ray is the
    running one, or one started for this call (:func:`ray_session`): for many
    layers, run the calls inside one ``ray_session``.

    Args:
        spec: the images (a :class:`~cnnlens.feature_visualization.ChannelImagesSpec`);
            ``spec.loaded`` is the model on this process, and every task opens the same one.
        store: the results store.
        weights: the weights file the model was opened with, or ``None`` for the default.
        device: where tasks run: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        address: the Ray cluster; a local Ray when ``None``.
        num_cpus: CPUs of a local Ray; all when ``None``.
        should_stop: asked while waiting; ``True`` cancels the unfinished tasks.
        on_progress: called with ``(images done, images to compute)``.

    Returns:
        How many images were computed (those already stored are not).

    Raises:
        ValueError: if Ray is not installed, CUDA is asked for on a cluster
            without GPUs, or a task fails with a ValueError (such as other weights).
        Cancelled: if ``should_stop()`` returned True; finished groups stay stored.
    """
    _ray()
    missing = spec.missing(store)
    if not missing:
        return 0
    with ray_session(address, num_cpus) as ray:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        on_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
        if on_gpu and gpus == 0:
            raise ValueError("CUDA was asked for, but the Ray cluster has no GPU.")
        slots = gpus if on_gpu else int(ray.cluster_resources().get("CPU", 1))
        task = ray.remote(_visualize_group).options(num_cpus=1, num_gpus=1 if on_gpu else 0)
        loaded = spec.loaded
        model = (loaded.name, None if weights is None else str(weights), loaded.weights_id)
        where = "cuda" if on_gpu else "cpu"
        size = spec.tile(*missing[0]).side
        pending = {}
        for group in spec.groups(missing, at_least=slots):
            settings = {
                "size": size,
                "steps": spec.steps,
                "seed": spec.seed,
                "negative": group[0][1],
            }
            channels = [int(channel) for channel, _ in group]
            pending[task.remote(*model, where, spec.layer, channels, settings)] = group
        _collect(ray, pending, spec, store, len(missing), should_stop, on_progress)
        return len(missing)


def _collect(
    ray: Any,
    pending: dict[Any, list[tuple[int, bool]]],
    spec: ChannelImagesSpec,
    store: ResultStore,
    total: int,
    should_stop: Callable[[], bool] | None,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    """Store each group's images as its task finishes; cancel the rest when asked to stop."""
    from cnnlens.results import Cancelled

    done = 0
    while pending:
        if should_stop is not None and should_stop():
            for ref in pending:
                ray.cancel(ref)
            raise Cancelled(f"Stopped after {done} of {total} channels.")
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        for ref in ready:
            group = pending.pop(ref)
            for tile, image in zip(group, ray.get(ref), strict=True):
                store.keep(spec.tile(*tile), np.ascontiguousarray(image))
            done += len(group)
            if on_progress is not None:
                on_progress(done, total)
