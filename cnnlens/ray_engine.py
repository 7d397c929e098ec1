"""The batch extractor on Ray Data: the same features file, from a pool of actors.

Ray tasks decode the images and actors, each holding the network, run the
extraction (one actor per GPU on a GPU cluster, where decoding overlaps the
forward passes; on CPUs Ray fuses both steps into the actors). Rows come back
in dataset order and go through the same writer as a local run, so the Parquet
file is the same. Ray is imported only when this engine runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlens.data import Dataset, Problem
from cnnlens.models import LoadedModel, open_model
from cnnlens.pipeline import FeatureBatch, FeatureSource, load_batch, map_shapes, pool_maps
from cnnlens.preprocess import scale_uint8_batch
from cnnlens.registry import InputSpec

__all__ = ["ray_source"]

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
        finally:
            if started:
                ray.shutdown()

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
