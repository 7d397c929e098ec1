"""Datasets in the seed's layout: ``train.csv`` (``filename,label``) and ``train/``.

A folder may also hold a test CSV (``filename`` only) whose images sit under
``test/``. Loading never fails on a bad row: the row is left out and listed in
``Dataset.problems`` with the reason, and the other rows stay usable.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnlens.registry import SEED

__all__ = [
    "MAX_IMAGE_PIXELS",
    "Dataset",
    "Problem",
    "load_dataset",
    "open_image",
    "to_mode",
]

MAX_IMAGE_PIXELS = 150_000_000
"""Images with more pixels are refused before decoding (decompression bombs)."""

MAX_DECODED_SIDE = 2048
"""Larger images are scaled down on load; no network here needs more."""

_SPLITS = ("train", "test")


class Problem(NamedTuple):
    """A CSV row left out of a dataset, and why."""

    filename: str
    reason: str


@dataclass(frozen=True)
class Split:
    """The usable rows of one CSV and the rows left out."""

    index: pd.DataFrame
    problems: list[Problem]
    drawn_from: np.ndarray  # the CSV's filename column as written, for the seeded pick


def _find_test_csv(root: Path) -> Path | None:
    exact = root / "test.csv"
    if exact.is_file():
        return exact
    # The seed's MNIST ships its test split as e.g. Test_fCbTej3.csv.
    found = sorted(p for p in root.glob("*.csv") if p.name.lower().startswith("test"))
    found = [p for p in found if "label" not in p.name.lower()]
    return found[0] if found else None


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype={"filename": str}, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise ValueError(
            f"{path.name} is empty: it needs a header row with {', '.join(required)}."
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path.name} is not a readable CSV ({error}). Save it as comma-separated text "
            f"with the columns {', '.join(required)}."
        ) from error
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path.name} has no {', '.join(missing)} column. It has: "
            f"{', '.join(map(str, frame.columns)) or 'no columns'}; it needs "
            f"{', '.join(required)}."
        )
    if frame.empty:
        raise ValueError(f"{path.name} has a header but no rows: add one row per image.")
    return frame


def _escapes(name: str) -> bool:
    for flavour in (PurePosixPath, PureWindowsPath):
        path = flavour(name)
        if path.is_absolute() or path.drive or ".." in path.parts:
            return True
    return False


# The first bytes of the formats datasets use; anything else is asked of Pillow.
_MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",  # JPEG
    b"GIF87a",
    b"GIF89a",
    b"BM",  # BMP
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)


def _is_image(path: str) -> bool:
    """Whether a file starts like an image, reading 16 bytes (Pillow only for rare formats)."""
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError:
        return False
    if head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return True
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - reading the header is the check
        return True
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def _check_rows(frame: pd.DataFrame, folder: Path, labelled: bool) -> Split:
    """Keep the usable rows; list the others with the reason (one pass, plain strings)."""
    names = [name.strip() if isinstance(name, str) else "" for name in frame["filename"]]
    frame["filename"] = names
    no_label = frame["label"].isna().to_numpy() if labelled else np.zeros(len(names), bool)
    present = set(os.listdir(folder)) if folder.is_dir() else set()
    usable: list[int] = []
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    for row, name in enumerate(names):
        line = row + 2  # the header is line 1
        if not name:
            problems.append(Problem(f"(line {line})", "the filename is empty"))
        elif _escapes(name):
            problems.append(Problem(name, "the path leaves the dataset folder"))
        elif name in first_line:
            problems.append(Problem(name, f"duplicate of line {first_line[name]}"))
        else:
            first_line[name] = line
            path = os.path.join(folder, name)
            if no_label[row]:
                problems.append(Problem(name, f"line {line} has no label"))
            elif not (name in present or os.path.isfile(path)):
                problems.append(Problem(name, f"no such file in {folder.name}/"))
            elif not _is_image(path):
                problems.append(Problem(name, "not an image Pillow can read"))
            else:
                usable.append(row)
    index = frame.iloc[usable].reset_index(drop=True)
    return Split(index, problems, np.asarray(names, dtype=object))


@dataclass(frozen=True)
class Dataset:
    """A labelled image folder in the seed's layout.

    Attributes:
        root: the dataset folder.
        index: the usable rows of ``train.csv`` (``filename``, ``label`` and any extra columns).
        problems: ``(filename, reason)`` for each ``train.csv`` row left out.
        test_index: the usable rows of the test CSV, or ``None`` when there is none.
        test_problems: the test CSV rows left out.
    """

    root: Path
    index: pd.DataFrame
    problems: list[Problem]
    test_index: pd.DataFrame | None = None
    test_problems: list[Problem] = field(default_factory=list)
    _drawn_from: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _names_cache: dict[str, frozenset[str]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def labels(self) -> list:
        """The distinct labels, sorted."""
        return sorted(self.index["label"].unique().tolist())

    def _split(self, split: str) -> pd.DataFrame:
        if split == "train":
            return self.index
        if split == "test" and self.test_index is not None:
            return self.test_index
        if split == "test":
            raise ValueError(f"{self.root.name} has no test CSV, so there are no test images.")
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")

    def pick(self, seed: int = SEED, split: str = "train") -> str:
        """Pick one image as the seed recipe does.

        Returns exactly ``np.random.RandomState(seed).choice(train.filename)`` on
        the CSV as written. If that row was left out as a problem, the same
        generator draws again until it lands on a usable row.

        Raises:
            ValueError: if the split has no usable rows.
        """
        usable = self._split(split)
        if usable.empty:
            raise ValueError(f"{split}.csv has no usable rows to pick from.")
        names = self._usable_names(split)
        drawn_from = self._drawn_from[split]
        rng = np.random.RandomState(seed)
        while True:
            name = rng.choice(drawn_from)
            if name in names:
                return name

    def pick_many(self, seed: int, n: int, split: str = "train") -> list[str]:
        """Pick ``n`` distinct usable filenames, reproducibly; the first is ``pick(seed)``.

        Returns all usable filenames, shuffled, when ``n`` exceeds their count.
        """
        if n < 0:
            raise ValueError(f"n must be zero or more, got {n}.")
        usable = list(self._split(split)["filename"])
        rng = np.random.RandomState(seed)
        if n >= len(usable) // 2:
            first = self.pick(seed, split) if usable and n else None
            rest = [name for name in rng.permutation(usable) if name != first]
            return ([first] if first else []) + rest[: max(n - 1, 0)]
        names = self._usable_names(split)
        drawn_from = self._drawn_from[split]
        chosen: dict[str, None] = {}
        while len(chosen) < n:
            name = rng.choice(drawn_from)
            if name in names:
                chosen[name] = None
        return list(chosen)

    def _usable_names(self, split: str) -> frozenset[str]:
        names = self._names_cache.get(split)
        if names is None:
            names = self._names_cache[split] = frozenset(self._split(split)["filename"])
        return names

    def label_of(self, filename: str) -> object | None:
        """The label of a train image, or ``None`` for an unknown or test filename."""
        hits = self.index.loc[self.index["filename"] == filename, "label"]
        return hits.iat[0] if len(hits) else None

    def path_of(self, filename: str, split: str = "train") -> Path:
        """The path of a usable image of a split.

        Raises:
            ValueError: if the filename is not a usable row of that split.
        """
        if filename not in self._usable_names(split):
            raise ValueError(f"{filename!r} is not a usable image of {split}.csv.")
        return self.root / split / filename

    def load_image(self, filename: str, mode: str = "L", split: str = "train") -> Image.Image:
        """Open a dataset image with Pillow and convert it for a model.

        Args:
            filename: a usable filename of the split.
            mode: ``"L"`` for a 1-channel model, ``"RGB"`` for a 3-channel one.
            split: ``"train"`` or ``"test"``.

        Raises:
            ValueError: for an unknown filename, an unreadable image or one over
                :data:`MAX_IMAGE_PIXELS`.
        """
        path = self.path_of(filename, split)
        return to_mode(open_image(path.read_bytes(), name=filename), mode)


def open_image(data: bytes, name: str = "the image") -> Image.Image:
    """Decode image bytes safely: pixel cap, EXIF rotation, large images scaled down.

    Raises:
        ValueError: if the bytes are not an image, are truncated, or exceed
            :data:`MAX_IMAGE_PIXELS`.
    """
    try:
        with warnings.catch_warnings():
            # Our own cap below replaces Pillow's bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"{name} is {width}×{height} = {width * height / 1e6:.0f} megapixels, over "
                    f"the {MAX_IMAGE_PIXELS / 1e6:.0f} MP limit. Scale it down and try again."
                )
            if max(width, height) > MAX_DECODED_SIDE:
                # JPEG decodes straight to a smaller scale; other formats scale after decoding.
                image.draft(image.mode, (MAX_DECODED_SIDE, MAX_DECODED_SIDE))
            image.load()
            image = ImageOps.exif_transpose(image)
            if max(image.size) > MAX_DECODED_SIDE:
                image.thumbnail((MAX_DECODED_SIDE, MAX_DECODED_SIDE), Image.Resampling.LANCZOS)
            return image
    except Image.DecompressionBombError as error:
        raise ValueError(f"{name} is too large to decode safely: {error}") from error
    except UnidentifiedImageError:
        raise ValueError(f"{name} is not an image Pillow can read (PNG, JPEG, ...).") from None
    except OSError as error:
        raise ValueError(f"{name} is damaged or truncated and cannot be decoded: {error}") from None


def _to_8bit(image: Image.Image) -> Image.Image:
    """Stretch a 16-bit, 32-bit or float image over 8 bits by its own value range."""
    array = np.asarray(image, dtype=np.float64)
    low, high = min(0.0, float(array.min())), float(array.max())
    if high <= low:
        return Image.new("L", image.size, 0)
    scaled = ((array - low) / (high - low) * 255.0).round().astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert any Pillow image to ``"L"`` or ``"RGB"``.

    Transparent pixels become black (the background of MNIST-style digits);
    16-bit and float images are scaled into 8 bits by their range rather than clipped.

    Raises:
        ValueError: for a mode other than ``"L"`` or ``"RGB"``.
    """
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' (1 channel) or 'RGB' (3 channels), got {mode!r}.")
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert(mode)


def load_dataset(root: str | Path) -> Dataset:
    """Index a dataset folder in the seed's layout.

    Args:
        root: a folder holding ``train.csv`` and ``train/``, and optionally a test
            CSV (``test.csv`` or ``Test_*.csv``, column ``filename``) and ``test/``.

    Returns:
        A :class:`Dataset`; rows that cannot be used are in ``.problems``.

    Raises:
        ValueError: if the folder or ``train.csv`` is missing, empty, not a CSV,
            or lacks the ``filename``/``label`` columns.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(
            f"{root} is not a folder. Choose a folder that holds train.csv and train/."
        )
    train_csv = root / "train.csv"
    if not train_csv.is_file():
        raise ValueError(f"{root} has no train.csv. A dataset folder holds train.csv and train/.")
    train = _check_rows(_read_csv(train_csv, ("filename", "label")), root / "train", True)
    test_csv = _find_test_csv(root)
    test = (
        _check_rows(_read_csv(test_csv, ("filename",)), root / "test", False) if test_csv else None
    )
    return Dataset(
        root=root,
        index=train.index,
        problems=train.problems,
        test_index=test.index if test else None,
        test_problems=test.problems if test else [],
        _drawn_from={"train": train.drawn_from, **({"test": test.drawn_from} if test else {})},
    )
