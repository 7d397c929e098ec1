"""Dataset folders: the original recipe's CSV layout, or one subfolder of images per label.

The original recipe's layout is ``train.csv`` (``filename,label``) with the images under
``train/``, and optionally a test CSV (``filename`` only) whose images sit under
``test/``. The image-folder layout (torchvision's ImageFolder) is a folder per
label, ``cat/001.jpg``, either in the dataset folder itself or under ``train/``
with unlabelled images in ``test/`` beside it. Loading never fails on a bad
row: the row is left out and listed in ``Dataset.problems`` with the reason, and
the other rows stay usable. :meth:`Dataset.rows` gives the usable rows of a
split; decoding the images is :mod:`cnnlens.images`' job.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from cnnlens.images import open_image, to_mode
from cnnlens.registry import SEED

__all__ = [
    "LAYOUTS",
    "Dataset",
    "Problem",
    "load_dataset",
]

LAYOUTS = ("csv", "image-folder")
"""The values of :attr:`Dataset.layout`."""
_GENERATOR = threading.local()  # each thread's legacy generator, see _seeded()

_ACCEPTED = (
    "cnnlens reads two layouts: train.csv (columns filename,label) with the images in "
    "train/; or one subfolder of images per label (cat/001.jpg, dog/002.jpg), either "
    "in the folder itself or inside train/ with unlabelled images in test/."
)


class Problem(NamedTuple):
    """A CSV row or an image file left out of a dataset, and why."""

    filename: str
    reason: str


@dataclass(frozen=True)
class Split:
    """The usable rows of one CSV (or folder listing) and the rows left out."""

    index: pd.DataFrame
    problems: list[Problem]
    drawn_from: np.ndarray  # the CSV's filename column as written, for the seeded pick
    stats: list[tuple[str, int, int]]  # (filename, size, mtime_ns) of each usable row


def _find_test_csv(root: Path) -> Path | None:
    exact = root / "test.csv"
    if exact.is_file():
        return exact
    # The original recipe's MNIST ships its test split as e.g. Test_fCbTej3.csv.
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
    """Whether a CSV filename leaves its folder: rooted, on a drive, or with a ``..`` part.

    Both slashes count, as a CSV may come from Windows. Plain string tests: pathlib
    per row would cost much of the indexing time.
    """
    if "/" not in name and "\\" not in name and ":" not in name:
        return name == ".."
    return (
        name.startswith(("/", "\\"))
        or (name[:1].isalpha() and name[1:2] == ":")
        or ".." in name.replace("\\", "/").split("/")
    )


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


def _image_stat(path: str) -> os.stat_result | None:
    """The file's stat if it starts like an image, reading 16 bytes (Pillow for rare formats).

    The stat comes from the open file, so the fingerprint costs no extra lookup.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(16)
            stat = os.fstat(file.fileno())
    except OSError:
        return None
    if head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return stat
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - reading the header is the check
        return stat
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _check_rows(frame: pd.DataFrame, folder: Path, labelled: bool, check_images: bool) -> Split:
    """Keep the usable rows; list the others with the reason (one pass, plain strings)."""
    names = [name.strip() if isinstance(name, str) else "" for name in frame["filename"].tolist()]
    frame["filename"] = names
    no_label = frame["label"].isna().to_numpy() if labelled else np.zeros(len(names), bool)
    present = set(os.listdir(folder)) if folder.is_dir() else set()
    prefix = os.path.join(folder, "")  # joined once: os.path.join per row is slow
    usable: list[int] = []
    stats: list[tuple[str, int, int]] = []
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
            path = prefix + name
            if no_label[row]:
                problems.append(Problem(name, f"line {line} has no label"))
            elif not (name in present or os.path.isfile(path)):
                problems.append(Problem(name, f"no such file in {folder.name}/"))
            elif not check_images:
                usable.append(row)
            elif (stat := _image_stat(path)) is None:
                problems.append(Problem(name, "not an image Pillow can read"))
            else:
                usable.append(row)
                stats.append((name, stat.st_size, stat.st_mtime_ns))
    index = frame.iloc[usable].reset_index(drop=True)
    return Split(index, problems, np.asarray(names, dtype=object), stats)


def _seeded(seed: int) -> np.random.RandomState:
    """A legacy generator in the state of ``np.random.RandomState(seed)``: this thread's
    one, reseeded (making a generator costs 0.1 ms, a click's share of the Feature maps
    page; reseeding one costs 3 µs)."""
    rng = getattr(_GENERATOR, "rng", None)
    if rng is None:
        rng = _GENERATOR.rng = np.random.RandomState()
    rng.seed(seed)
    return rng


@dataclass(frozen=True)
class Dataset:
    """A labelled image folder in the original recipe's CSV layout or the image-folder layout.

    Attributes:
        root: the dataset folder.
        index: the usable rows of ``train.csv`` (``filename``, ``label`` and any extra
            columns); in the image-folder layout, one row per image, sorted by filename
            (``cat/001.jpg``, relative to the label folders' parent), labelled by its folder.
        problems: ``(filename, reason)`` for each row or image file left out.
        test_index: the usable rows of the test CSV (or the images of ``test/`` in the
            image-folder layout), or ``None`` when there is none.
        test_problems: the test rows left out.
        layout: ``"csv"`` or ``"image-folder"`` (see :data:`LAYOUTS`).
        fingerprint: changes whenever the CSVs, the usable files (name, size, mtime)
            or the problems change; a key for caches on disk. Empty for an index made
            with ``check_images=False``, which is for one pass over the images.
    """

    root: Path
    index: pd.DataFrame
    problems: list[Problem]
    test_index: pd.DataFrame | None = None
    test_problems: list[Problem] = field(default_factory=list)
    layout: str = "csv"
    fingerprint: str = ""
    _drawn_from: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _folders: dict[str, Path] = field(default_factory=dict, repr=False)
    _names_cache: dict[str, dict[str, int]] = field(default_factory=dict, repr=False, compare=False)
    _arrays_cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    _labels_cache: dict[str, object] = field(default_factory=dict, repr=False, compare=False)
    _rows_cache: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False, compare=False)

    @property
    def labels(self) -> list:
        """The distinct labels, sorted."""
        return sorted(self.index["label"].unique().tolist())

    def rows(self, split: str = "train") -> pd.DataFrame:
        """The usable rows of a split, in the CSV's order (the listing's, for image folders).

        Both splits have a ``filename`` and a ``label`` column; the test split's
        labels are ``None`` unless its CSV has a label column. Do not modify the frame.

        Raises:
            ValueError: for a split other than ``train``/``test``, or ``test`` when
                the dataset has none.
        """
        if split == "train":
            return self.index
        if split != "test":
            raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
        if self.test_index is None:
            where = "test CSV" if self.layout == "csv" else "test/ folder"
            raise ValueError(f"{self.root.name} has no {where}, so there are no test images.")
        if "label" in self.test_index.columns:
            return self.test_index
        rows = self._rows_cache.get(split)
        if rows is None:
            rows = self._rows_cache[split] = self.test_index.assign(label=None)
        return rows

    def pick(self, seed: int = SEED, split: str = "train") -> str:
        """Pick one image as the original recipe does.

        Returns exactly ``np.random.RandomState(seed).choice(train.filename)`` on
        the CSV as written (in the image-folder layout, on the sorted listing of
        the image files). If that row was left out as a problem, the same
        generator draws again until it lands on a usable row.

        Raises:
            ValueError: if the split has no usable rows.
        """
        usable = self.rows(split)
        if usable.empty:
            raise ValueError(f"The {split} split of {self.root.name} has no usable images.")
        names = self._usable_names(split)
        drawn_from = self._drawn_from[split]
        rng = _seeded(seed)
        while True:
            name = rng.choice(drawn_from)
            if name in names:
                return name

    def pick_many(
        self, seed: int, n: int, split: str = "train", labels: Collection | None = None
    ) -> list[str]:
        """Pick ``n`` distinct usable filenames, reproducibly; the first is ``pick(seed)``.

        Returns all usable filenames, shuffled, when ``n`` exceeds their count. Without
        ``labels`` the cost grows with ``n``, not with the dataset.

        Args:
            seed: the same seed gives the same picks.
            n: how many names.
            split: ``"train"`` or ``"test"``.
            labels: keep only images with one of these labels, in the order the picks
                of every image of the split would take; ``None`` or empty keeps all.

        Raises:
            ValueError: for a negative ``n`` or an unknown split.
        """
        if n < 0:
            raise ValueError(f"n must be zero or more, got {n}.")
        rows = self.rows(split)
        if not n or rows.empty:
            return []
        if labels is not None and len(labels):
            order = self._shuffled(seed, split)
            keep = rows["label"].isin(list(labels)).to_numpy()
            return self._name_array(split)[order[keep[order]][:n]].tolist()
        if n >= len(rows) // 2:
            return self._name_array(split)[self._shuffled(seed, split)[:n]].tolist()
        # Fewer than half: draw as pick() does until n distinct usable names came up.
        names = self._usable_names(split)
        drawn_from = self._drawn_from[split]
        rng = np.random.RandomState(seed)
        chosen: dict[str, None] = {}
        while len(chosen) < n:
            name = rng.choice(drawn_from)
            if name in names:
                chosen[name] = None
        return list(chosen)

    def _shuffled(self, seed: int, split: str) -> np.ndarray:
        """Every usable row number of a split: ``pick(seed)``'s, then a seeded permutation.

        The permutation is ``RandomState(seed).permutation`` of the row numbers, which
        shuffles exactly as it shuffles the names themselves, in C.
        """
        first = self._usable_names(split)[self.pick(seed, split)]
        order = np.random.RandomState(seed).permutation(len(self.rows(split)))
        return np.concatenate(([first], order[order != first]))

    def _name_array(self, split: str) -> np.ndarray:
        """The usable filenames of a split as an object array, built once."""
        names = self._arrays_cache.get(split)
        if names is None:
            names = self._arrays_cache[split] = np.asarray(
                self.rows(split)["filename"].tolist(), dtype=object
            )
        return names

    def _usable_names(self, split: str) -> dict[str, int]:
        """Each usable filename of a split and its row number, built once."""
        names = self._names_cache.get(split)
        if names is None:
            filenames = self.rows(split)["filename"].tolist()
            names = self._names_cache[split] = {name: row for row, name in enumerate(filenames)}
        return names

    def label_of(self, filename: str) -> object | None:
        """The label of a train image, or ``None`` for an unknown or test filename."""
        # A dict built once: the Dataset page asks for the labels of a page of images.
        if not self._labels_cache and len(self.index):
            # tolist(): iterating an Arrow-backed column item by item is 5× slower.
            pairs = zip(self.index["filename"].tolist(), self.index["label"].tolist(), strict=True)
            self._labels_cache.update(pairs)
        return self._labels_cache.get(filename)

    def path_of(self, filename: str, split: str = "train") -> Path:
        """The path of a usable image of a split.

        Raises:
            ValueError: if the filename is not a usable row of that split.
        """
        return Path(self._path(filename, split))

    def _path(self, filename: str, split: str) -> str:
        # Strings, not Paths: pathlib costs a good part of reading a small image.
        if filename not in self._usable_names(split):
            raise ValueError(f"{filename!r} is not a usable image of the {split} split.")
        folder = self._folders.get(split)
        return os.path.join(self.root / split if folder is None else folder, filename)

    def load_image(
        self,
        filename: str,
        mode: str = "L",
        split: str = "train",
        max_side: int | None = None,
    ) -> Image.Image:
        """Open a dataset image with Pillow and convert it for a model.

        Args:
            filename: a usable filename of the split.
            mode: ``"L"`` for a 1-channel model, ``"RGB"`` for a 3-channel one.
            split: ``"train"`` or ``"test"``.
            max_side: scale the image down so that its longer side is at most this
                many pixels (JPEGs decode straight at a reduced scale); it is never
                more than :data:`cnnlens.images.MAX_DECODED_SIDE`.

        Raises:
            ValueError: for an unknown filename, an unreadable image, one over
                :data:`cnnlens.images.MAX_IMAGE_PIXELS`, or a ``max_side`` below 1.
        """
        return to_mode(open_image(self.read_bytes(filename, split), filename, max_side), mode)

    def read_bytes(self, filename: str, split: str = "train") -> bytes:
        """The encoded bytes of a usable image of a split, as stored.

        Raises:
            ValueError: for an unknown filename, or a file that is gone or
                unreadable since the dataset was indexed.
        """
        path = self._path(filename, split)
        try:
            # os-level calls: cheaper than open().read(), which counts on many small files.
            descriptor = os.open(path, os.O_RDONLY)
            try:
                # A short read of a regular file is its end: a small image takes one read.
                chunks = [os.read(descriptor, _READ_SIZE)]
                while len(chunks[-1]) == _READ_SIZE:
                    chunks.append(os.read(descriptor, _READ_SIZE))
            finally:
                os.close(descriptor)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except OSError as error:
            raise ValueError(
                f"{filename} cannot be read: {error.strerror or error}. "
                "Reload the dataset if its files changed."
            ) from error


_READ_SIZE = 1 << 16


def _visible(name: str) -> bool:
    """Whether a listing entry is data: not .DS_Store, ._resource forks or __MACOSX/."""
    return not name.startswith(".") and name != "__MACOSX"


def _list_files(folder: Path) -> list[str]:
    """The visible files under a folder, as sorted '/'-separated paths relative to it."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [name for name in dirnames if _visible(name)]
        prefix = Path(os.path.relpath(dirpath, folder)).as_posix()
        prefix = "" if prefix == "." else prefix + "/"
        found.extend(prefix + name for name in filenames if _visible(name))
    return sorted(found)


def _label_values(names: list[str]) -> list:
    """Folder names as labels; all-integer names (0/, 1/, ...) become ints like in a CSV."""
    if names and all(
        name.isascii() and name.isdigit() and str(int(name)) == name for name in names
    ):
        return [int(name) for name in names]
    return names


def _scan_labelled(folder: Path, loose_files_are_problems: bool, check_images: bool) -> Split:
    """Index ``folder/<label>/...`` images like a CSV whose rows are the sorted file listing."""
    with os.scandir(folder) as entries:
        listing = sorted(entries, key=lambda entry: entry.name)
    label_dirs = [e.name for e in listing if _visible(e.name) and e.is_dir()]
    loose = [e.name for e in listing if _visible(e.name) and not e.is_dir()]
    names = sorted(
        f"{label}/{rest}" for label in label_dirs for rest in _list_files(folder / label)
    )
    labels = _label_values([name.split("/", 1)[0] for name in names])
    frame = pd.DataFrame({"filename": names, "label": labels})
    split = _check_rows(frame, folder, True, check_images)
    if loose_files_are_problems:
        split.problems.extend(Problem(name, "not inside a label folder") for name in loose)
    return split


def _scan_unlabelled(folder: Path, check_images: bool) -> Split:
    """Index every image under a folder, without labels."""
    frame = pd.DataFrame({"filename": _list_files(folder)}, dtype=object)
    return _check_rows(frame, folder, False, check_images)


def _fingerprint(layout: str, csvs: list[Path], splits: dict[str, Split], checked: bool) -> str:
    if not checked:
        return ""  # the files were not looked at, so there is nothing to key a cache by
    digest = hashlib.sha256(layout.encode())
    for csv in csvs:
        digest.update(csv.name.encode() + b"\0" + csv.read_bytes() + b"\0")
    for name, split in splits.items():
        digest.update(repr((name, split.stats, split.problems)).encode())
    return digest.hexdigest()[:32]


def _load_csv_layout(root: Path, check_images: bool) -> Dataset:
    train_csv = _read_csv(root / "train.csv", ("filename", "label"))
    train = _check_rows(train_csv, root / "train", True, check_images)
    test_csv = _find_test_csv(root)
    test = (
        _check_rows(_read_csv(test_csv, ("filename",)), root / "test", False, check_images)
        if test_csv
        else None
    )
    splits = {"train": train, **({"test": test} if test else {})}
    csvs = [root / "train.csv", *([test_csv] if test_csv else [])]
    return Dataset(
        root=root,
        index=train.index,
        problems=train.problems,
        test_index=test.index if test else None,
        test_problems=test.problems if test else [],
        layout="csv",
        fingerprint=_fingerprint("csv", csvs, splits, check_images),
        _drawn_from={name: split.drawn_from for name, split in splits.items()},
        _folders={name: root / name for name in splits},
    )


def _has_subfolder(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(_visible(entry.name) and entry.is_dir() for entry in entries)


def _load_image_folder_layout(root: Path, check_images: bool) -> Dataset:
    nested = (root / "train").is_dir()
    labelled = root / "train" if nested else root
    if not _has_subfolder(labelled):
        where = "train/ has no label subfolders" if nested else "no label subfolders"
        raise ValueError(f"{root} has no train.csv and {where}. {_ACCEPTED}")
    with os.scandir(labelled) as entries:
        datasets = sorted(e.name for e in entries if (Path(e.path) / "train.csv").is_file())
    if datasets:
        raise ValueError(
            f"{root} holds datasets rather than label folders: choose one of them, "
            f"e.g. {root / datasets[0]}."
        )
    train = _scan_labelled(labelled, nested, check_images)
    has_test = nested and (root / "test").is_dir()
    test = _scan_unlabelled(root / "test", check_images) if has_test else None
    splits = {"train": train, **({"test": test} if test else {})}
    return Dataset(
        root=root,
        index=train.index,
        problems=train.problems,
        test_index=test.index if test else None,
        test_problems=test.problems if test else [],
        layout="image-folder",
        fingerprint=_fingerprint("image-folder", [], splits, check_images),
        _drawn_from={name: split.drawn_from for name, split in splits.items()},
        _folders={"train": labelled, **({"test": root / "test"} if test else {})},
    )


def load_dataset(root: str | Path, *, check_images: bool = True) -> Dataset:
    """Index a dataset folder in the CSV layout or the image-folder layout.

    Args:
        root: a folder holding ``train.csv`` and ``train/``, and optionally a test
            CSV (``test.csv`` or ``Test_*.csv``, column ``filename``) and ``test/``;
            or, without ``train.csv``, one subfolder of images per label, either in
            ``root`` itself or in ``root/train/`` with unlabelled images in ``root/test/``.
        check_images: read the first bytes of every image to leave out files that
            are not images. ``False`` only checks that they exist, for a caller
            that decodes every image anyway and reports those it cannot (the
            batch extractor): indexing is then several times faster, and the
            dataset has no fingerprint (it cannot key cached results).

    Returns:
        A :class:`Dataset`; rows and files that cannot be used are in ``.problems``.

    Raises:
        ValueError: if the folder is missing or is in neither layout, or if
            ``train.csv`` is empty, not a CSV, or lacks the ``filename``/``label`` columns.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder. Choose a dataset folder. {_ACCEPTED}")
    if (root / "train.csv").is_file():
        return _load_csv_layout(root, check_images)
    return _load_image_folder_layout(root, check_images)
