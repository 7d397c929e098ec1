"""Exports: feature maps as arrays or pictures, the dataset's features as Parquet, and the
recipe of a view as JSON so the same view can be opened again.

Pure numpy, Pillow and pyarrow; never imports streamlit.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnnlens import figures

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from cnnlens.data import Dataset
    from cnnlens.models import LoadedModel

__all__ = ["Recipe", "features_parquet", "grid_png", "maps_npz"]

_META_KEY = "__meta__"
_NORMS = ("channel", "layer")


def maps_npz(maps: dict[str, np.ndarray], meta: dict) -> bytes:
    """Feature maps as a compressed ``.npz``: one array per layer, named after it.

    Args:
        maps: layer name -> C×H×W (or any) array.
        meta: what the maps are of (model, image, ...); stored as JSON under ``__meta__``.

    Returns:
        The file's bytes; ``np.load(io.BytesIO(data))[layer]`` gives a layer back.

    Raises:
        ValueError: if there are no maps or a layer is named ``__meta__``.
        TypeError: if ``meta`` cannot be written as JSON.
    """
    if not maps:
        raise ValueError("There are no maps to export; choose at least one layer.")
    if _META_KEY in maps:
        raise ValueError(f"{_META_KEY!r} is reserved for the metadata; rename that layer.")
    buffer = io.BytesIO()
    arrays = {name: np.asarray(array) for name, array in maps.items()}
    np.savez_compressed(buffer, **arrays, **{_META_KEY: np.array(json.dumps(meta))})
    return buffer.getvalue()


def grid_png(maps: np.ndarray, per: str = "channel", colorscale: str = "Viridis") -> bytes:
    """One layer's channels as a PNG grid, coloured as the dashboard shows them.

    Maps smaller than 64 pixels on a side are scaled up (nearest) so each tile stays visible.

    Args:
        maps: C×H×W activations.
        per: ``"channel"`` or ``"layer"`` normalisation (see :func:`cnnlens.figures.scale_maps`).
        colorscale: a plotly colorscale name.

    Raises:
        ValueError: for the reasons of :func:`cnnlens.figures.montage_png`.
    """
    side = max(np.shape(maps)[1:], default=1)
    return figures.montage_png(maps, per=per, colorscale=colorscale, scale=max(1, 64 // side))


def features_parquet(
    loaded: LoadedModel,
    dataset: Dataset,
    layers: Sequence[str],
    *,
    split: str = "train",
    pool: str = "mean",
    batch_size: int = 256,
    workers: int = 0,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> bytes | None:
    """A whole split's pooled features as Parquet: the very file the CLI writes.

    One row per image: ``filename``, ``label`` and one list-of-float32 column per
    layer; the metadata key ``cnnlens`` records the model, weights, dataset, pool
    and map shapes (see :func:`cnnlens.parquet.extract_to_parquet`).

    Args:
        loaded: the model.
        dataset: the dataset.
        layers: the layers, one column each.
        split: ``"train"`` or ``"test"``.
        pool: ``"mean"`` or ``"max"`` per channel, or ``"none"`` for whole maps.
        batch_size: images per forward pass.
        workers: processes decoding images while the network runs.
        should_stop: asked between batches; True stops the export.
        on_progress: called with ``(done, total)`` images.

    Returns:
        The file's bytes, or ``None`` when ``should_stop`` stopped it.

    Raises:
        ValueError: for an unknown layer, split or pool.
    """
    from cnnlens.parquet import extract_to_parquet

    with tempfile.TemporaryDirectory(prefix="cnnlens-export-") as folder:
        result = extract_to_parquet(
            loaded,
            dataset,
            Path(folder) / "features.parquet",
            list(layers),
            split=split,
            pool=pool,
            batch_size=batch_size,
            workers=workers,
            should_stop=should_stop,
            on_progress=on_progress,
        )
        return result.out.read_bytes() if result.complete else None


@dataclass(frozen=True)
class Recipe:
    """Everything needed to open the same view again: data, image, model, layers.

    Attributes:
        dataset: the dataset folder.
        split: ``"train"`` or ``"test"``.
        seed: the seed of the random pick.
        image: the image's filename in the split.
        model: the registered model's name.
        weights_id: the weights the maps came from (to notice other weights).
        layers: the target layers.
        layer: the layer shown.
        channel: the channel shown.
        norm: ``"channel"`` or ``"layer"`` colour normalisation.
    """

    dataset: str
    split: str
    seed: int
    image: str
    model: str
    weights_id: str
    layers: tuple[str, ...]
    layer: str
    channel: int
    norm: str

    def __post_init__(self) -> None:
        problems = []
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name in ("seed", "channel"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    problems.append(f"{spec.name} must be a whole number ≥ 0, not {value!r}")
            elif spec.name == "layers":
                if not isinstance(value, tuple | list) or not value:
                    problems.append(f"layers must be a non-empty list of names, not {value!r}")
                elif not all(isinstance(name, str) and name for name in value):
                    problems.append(f"layers must hold layer names, not {list(value)!r}")
            elif not isinstance(value, str) or not value:
                problems.append(f"{spec.name} must be a non-empty text, not {value!r}")
        if not problems:
            if self.split not in ("train", "test"):
                problems.append(f"split must be 'train' or 'test', not {self.split!r}")
            if self.norm not in _NORMS:
                problems.append(f"norm must be 'channel' or 'layer', not {self.norm!r}")
            if self.layer not in self.layers:
                problems.append(f"layer {self.layer!r} is not one of layers {list(self.layers)}")
        if problems:
            raise ValueError("This recipe cannot be used: " + "; ".join(problems) + ".")
        object.__setattr__(self, "layers", tuple(self.layers))

    def to_json(self) -> str:
        """The recipe as indented JSON text."""
        return json.dumps({**asdict(self), "layers": list(self.layers)}, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> Recipe:
        """Read a recipe written by :meth:`to_json`.

        Raises:
            ValueError: if the text is not JSON, misses or adds fields, or a value is invalid;
                the message says which.
        """
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"This recipe is not valid JSON: {error}.") from None
        if not isinstance(data, dict):
            raise ValueError("A recipe is a JSON object with the view's fields.")
        names = [spec.name for spec in fields(cls)]
        missing = [name for name in names if name not in data]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            parts = [f"missing {', '.join(missing)}"] if missing else []
            parts += [f"unknown {', '.join(unknown)}"] if unknown else []
            raise ValueError(f"This recipe's fields do not match: {'; '.join(parts)}.")
        return cls(**data)
