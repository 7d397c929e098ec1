"""Exports: feature maps as arrays or pictures, the dataset's features as Parquet, and the
recipe of a view as JSON so the same view can be opened again.

Pure numpy, Pillow and pyarrow; never imports streamlit.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from cnnlens import figures
from cnnlens.results import Cancelled, DatasetSpec, Run

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from cnnlens.data import Dataset
    from cnnlens.models import LoadedModel
    from cnnlens.store import ResultStore

__all__ = [
    "EXPORTS_MAX_MB",
    "ParquetSpec",
    "Recipe",
    "features_parquet",
    "grid_png",
    "maps_npz",
]

_META_KEY = "__meta__"
_NORMS = ("channel", "layer")
_LEGEND_HEIGHT = 30  # the white strip under an exported grid: a colour ramp and words


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


def grid_png(maps: np.ndarray, per: str = "channel", colorscale: str | None = None) -> bytes:
    """One layer's channels as a PNG grid, coloured as the dashboard shows them
    (:class:`cnnlens.figures.MapColours`), with a legend under it.

    Maps smaller than 64 pixels on a side are scaled up (nearest) so each tile stays visible.
    The legend strip says what the colours mean and, per layer, the values at the ends;
    the PNG's ``Legend`` text chunk says the same.

    Args:
        maps: C×H×W activations.
        per: ``"channel"``: each tile on its own scale; ``"layer"``: one scale for all.
        colorscale: a plotly colorscale name instead of the convention's ramp.

    Raises:
        ValueError: for the reasons of :func:`cnnlens.figures.montage_png`.
    """
    side = max(np.shape(maps)[1:], default=1)
    png = figures.montage_png(maps, per=per, colorscale=colorscale, scale=max(1, 64 // side))
    colours = figures.map_colours(maps)
    if per == "layer":
        reach = float(colours.reach(np.asarray(maps, dtype=np.float64), "layer").max())
        scale = f"one scale for the layer, {-reach if colours.signed else 0:.4g} to {reach:.4g}"
    else:
        scale = "each tile on its own scale, to its largest value"
    ramp = figures.colorscale_colours(colorscale or colours.colorscale, 256)
    return _with_legend(png, ramp, f"{colours.words} · {scale}")


def _with_legend(png: bytes, ramp: list[str], words: str) -> bytes:
    """The picture with a white strip under it: the colour ramp, low to high, and words."""
    grid = Image.open(io.BytesIO(png)).convert("RGB")
    font = ImageFont.load_default(size=14)
    text_width = int(ImageDraw.Draw(grid).textlength(words, font=font))
    strip = len(ramp)
    width = max(grid.width, strip + text_width + 30)
    picture = Image.new("RGB", (width, grid.height + _LEGEND_HEIGHT), "white")
    picture.paste(grid, (0, 0))
    draw = ImageDraw.Draw(picture)
    top = grid.height + 8
    for x, colour in enumerate(ramp):
        draw.line([(10 + x, top), (10 + x, top + 13)], fill=ImageColor.getrgb(colour))
    draw.text((strip + 20, top - 1), words, fill=(30, 30, 30), font=font)
    info = PngInfo()
    info.add_text("Legend", words)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info, compress_level=6)
    return buffer.getvalue()


EXPORTS_MAX_MB = 2048.0
"""The size limit of the exports folder; beyond it the least recently used files go."""

_one_export = threading.Lock()


@dataclass(frozen=True, eq=False)
class ParquetSpec(DatasetSpec[Path]):
    """A split's pooled features as a Parquet file (:func:`features_parquet`), as a result
    the store runs: found when its file exists, resumed from its parts when stopped.

    The file's name is the spec's key: a hash of everything its values depend on
    (model, weights, dtype, dataset folder and fingerprint, split, pool, layers), so a
    changed dataset or weights file gives a new file.

    Attributes:
        layers: the layers, one column each.
        pool: ``"mean"``, ``"max"`` or ``"none"``.
        folder: the exports folder; default ``cache_dir() / "exports"`` (not part of the key).
    """

    layers: tuple[str, ...]
    pool: str = "mean"
    folder: Path | None = field(default=None, kw_only=True)
    kind = "features_parquet"
    resumable = True

    def parts(self) -> dict[str, object]:
        return {**super().parts(), "pool": self.pool, "layers": list(self.layers)}

    @property
    def path(self) -> Path:
        """Where the finished file is."""
        from cnnlens.sources import cache_dir

        folder = Path(self.folder) if self.folder is not None else cache_dir() / "exports"
        return folder / f"{self.key}.parquet"

    @property
    def title(self) -> str:
        return "extracting the dataset's features"

    def progress_text(self, done: int, total: int) -> str:
        return f"Extracting features: {done:,} of {total:,} images"

    def find(self, store: ResultStore) -> Path | None:
        path = self.path
        if not path.exists():
            return None
        with contextlib.suppress(OSError):
            path.touch()  # recently used: eviction spares it
        return path

    def save(self, store: ResultStore, result: Path) -> Path:
        return result  # the computation wrote the file

    def compute(self, run: Run) -> Path:
        out = features_parquet(
            self.loaded,
            self.dataset,
            list(self.layers),
            out=self.path,
            split=self.split,
            pool=self.pool,
            should_stop=run.should_stop,
            on_progress=run.report,
            **self.pass_options,
        )
        if out is None:
            raise Cancelled("The export stopped; its finished parts wait for the next run.")
        return out


def features_parquet(
    loaded: LoadedModel,
    dataset: Dataset,
    layers: Sequence[str],
    *,
    out: Path,
    split: str = "train",
    pool: str = "mean",
    batch_size: int = 256,
    workers: int = 0,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Path | None:
    """A whole split's pooled features as a Parquet file on disk: the very file the CLI writes.

    One row per image: ``filename``, ``label`` and one list-of-float32 column per
    layer; the metadata key ``cnnlens`` records the model, weights, dataset, pool
    and map shapes (see :func:`cnnlens.parquet.extract_to_parquet`). Batches are
    streamed to part files as they come, so memory holds none of the file. A
    file exported before is returned at once; a stopped export continues where
    it stopped. The folder keeps at most :data:`EXPORTS_MAX_MB`, least recently
    used files removed first. :class:`ParquetSpec` names the file and runs this
    through the results store.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cnnlens import demo_dataset, features_parquet, open_model
        >>> out = Path(tempfile.mkdtemp()) / "digits.parquet"
        >>> features_parquet(open_model("demo"), demo_dataset(), ["conv_4"], out=out) == out
        True

    Args:
        loaded: the model.
        dataset: the dataset.
        layers: the layers, one column each.
        out: the file to write.
        split: ``"train"`` or ``"test"``.
        pool: ``"mean"`` or ``"max"`` per channel, or ``"none"`` for whole maps.
        batch_size: images per forward pass.
        workers: processes decoding images while the network runs.
        should_stop: asked between batches; True stops the export.
        on_progress: called with ``(done, total)`` images, earlier stopped runs included.

    Returns:
        The finished file, or ``None`` when ``should_stop`` stopped it: then no file
        is at that path, and the parts written so far wait beside it for the next call.

    Raises:
        ValueError: for an unknown layer, split or pool.
    """
    from cnnlens.malloc import give_back_freed_memory
    from cnnlens.parquet import extract_to_parquet

    # One export at a time in this process: two of one file would write the same parts,
    # and a second one waiting here finds the first one's file.
    with _one_export:
        if out.exists():
            out.touch()  # recently used: eviction spares it
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            result = extract_to_parquet(
                loaded,
                dataset,
                out,
                list(layers),
                split=split,
                pool=pool,
                batch_size=batch_size,
                workers=workers,
                should_stop=should_stop,
                on_progress=on_progress,
            )
        finally:
            give_back_freed_memory()  # a server should not keep the batches' pages
        if not result.complete:
            return None
        _evict(out.parent, keep=out, max_bytes=int(EXPORTS_MAX_MB * 1024 * 1024))
        return out


def _evict(folder: Path, keep: Path, max_bytes: int) -> None:
    """Remove the least recently used finished exports until the folder fits its limit."""
    files = []
    for path in folder.glob("*.parquet"):
        try:
            stat = path.stat()
        except OSError:
            continue  # removed by another process meanwhile
        files.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= max_bytes:
            break
        if path != keep:
            path.unlink(missing_ok=True)
            total -= size


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
        drawing: a digit drawn on the pad, in :meth:`cnnlens.drawing.Drawing.encode`'s
            text, shown instead of the image; ``None`` for the image.
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
    drawing: str | None = None

    def __post_init__(self) -> None:
        problems = []
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name == "drawing":
                problems += _drawing_problems(value)
            elif spec.name in ("seed", "channel"):
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
        missing = [name for name in names if name not in data and name != "drawing"]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            parts = [f"missing {', '.join(missing)}"] if missing else []
            parts += [f"unknown {', '.join(unknown)}"] if unknown else []
            raise ValueError(f"This recipe's fields do not match: {'; '.join(parts)}.")
        return cls(**data)


def _drawing_problems(value: object) -> list[str]:
    """What is wrong with a recipe's drawing (``None``, or a drawing's text)."""
    if value is None:
        return []
    from cnnlens.drawing import Drawing

    if not isinstance(value, str):
        return [f"drawing must be a drawing's text or null, not {value!r}"]
    try:
        Drawing.decode(value)
    except ValueError as error:
        return [f"drawing: {error}"]
    return []
