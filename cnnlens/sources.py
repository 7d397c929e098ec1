"""Where datasets come from: folders under allowed roots, uploaded zips, recent folders.

A browser user types a folder path or uploads a zip; both reach the server's
disk, so both are checked here. A typed path must resolve (symlinks included)
inside one of :func:`data_roots`. A zip is unpacked member by member into a
fresh upload folder, refusing anything that could write outside it or fill
the disk.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

from cnnlens.registry import DEMO_DATASET_DIR

if TYPE_CHECKING:
    from cnnlens.data import Dataset

__all__ = [
    "CACHE_DIR_ENV",
    "DATA_ROOTS_ENV",
    "UploadFolder",
    "cache_dir",
    "data_roots",
    "extract_dataset_zip",
    "recent_folders",
    "remember_folder",
    "remove_stale_uploads",
    "resolve_under_roots",
    "upload_folder",
    "uploads_base",
]

DATA_ROOTS_ENV = "CNNLENS_DATA_ROOTS"
"""Folders the dashboard may read datasets from, separated by ``os.pathsep``."""

CACHE_DIR_ENV = "CNNLENS_CACHE_DIR"
"""Where cnnlens keeps small state such as the recent folders (default ``~/.cache/cnnlens``)."""

MAX_RATIO = 200
"""A zip member that inflates more than this many times its packed size is refused."""

_RATIO_FROM = 1 << 20  # small members may compress well (a blank PNG, a CSV); big ones may not
_CHUNK = 1 << 20
_RECENT_FILE = "recent_folders.json"
_RECENT_KEPT = 32
_recent_lock = threading.Lock()  # sessions are threads of one server: one writer at a time


def data_roots() -> list[Path]:
    """The folders datasets may be read from, resolved.

    Taken from the ``CNNLENS_DATA_ROOTS`` environment variable (paths separated
    by ``os.pathsep``); without it, the folder that holds the demo dataset.
    """
    value = os.environ.get(DATA_ROOTS_ENV, "")
    paths = [part for part in value.split(os.pathsep) if part.strip()]
    if not paths:
        return [DEMO_DATASET_DIR.parent.resolve()]
    return [Path(part.strip()).expanduser().resolve() for part in paths]


def resolve_under_roots(path: str | Path, roots: Sequence[Path] | None = None) -> Path:
    """Resolve a path (symlinks too) and accept it only inside an allowed root.

    Args:
        path: an absolute path, or one relative to the first root.
        roots: the allowed roots; :func:`data_roots` when ``None``.

    Returns:
        The resolved path; it may not exist yet.

    Raises:
        TypeError: if ``path`` is not a string or a path.
        ValueError: if the path is empty or resolves outside every root.
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a string or a Path, got {type(path).__name__}.")
    if not str(path).strip() or "\0" in str(path):
        raise ValueError("Enter the path of a dataset folder.")
    allowed = [Path(root).resolve() for root in (data_roots() if roots is None else roots)]
    if not allowed:
        raise ValueError(f"No data roots are allowed. Set {DATA_ROOTS_ENV} to the dataset folders.")
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = allowed[0] / candidate
    resolved = candidate.resolve()
    if any(resolved.is_relative_to(root) for root in allowed):
        return resolved
    listed = ", ".join(str(root) for root in allowed)
    raise ValueError(
        f"{path} is outside the folders cnnlens may read ({listed}). To allow another "
        f"folder, add it to the {DATA_ROOTS_ENV} environment variable (separated by "
        f"{os.pathsep!r}) and restart cnnlens."
    )


def _member_path(name: str) -> PurePosixPath:
    """The member's path inside the archive; refuses absolute paths, drives and '..'."""
    parts = PurePosixPath(name.replace("\\", "/"))
    if parts.is_absolute() or PureWindowsPath(name).drive or ".." in parts.parts:
        raise ValueError(
            f"The zip member {name!r} points outside the folder it is unpacked into; "
            "the archive is refused."
        )
    return parts


def _is_skipped(path: PurePosixPath) -> bool:
    # macOS's Archive Utility adds __MACOSX/ resource forks beside the real files.
    return bool(path.parts) and path.parts[0] == "__MACOSX"


def _check_members(
    archive: zipfile.ZipFile, max_bytes: int, max_files: int
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Every check that the central directory allows, before a byte is written."""
    members = []
    for info in archive.infolist():
        path = _member_path(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ValueError(f"The zip member {info.filename!r} is a symbolic link; zip the files.")
        if info.flag_bits & 0x1:
            raise ValueError(
                f"The zip member {info.filename!r} is encrypted; zip it without a password."
            )
        if not _is_skipped(path) and path.parts:
            members.append((info, path))
    files = [info for info, _ in members if not info.is_dir()]
    if len(files) > max_files:
        raise ValueError(f"The zip holds {len(files):,} files, over the limit of {max_files:,}.")
    total = sum(info.file_size for info in files)
    if total > max_bytes:
        raise ValueError(
            f"The zip unpacks to {total / 1e6:,.0f} MB, over the limit of "
            f"{max_bytes / 1e6:,.0f} MB. Upload a smaller dataset."
        )
    for info in files:
        if info.file_size > _RATIO_FROM and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise ValueError(
                f"The zip member {info.filename!r} inflates {info.file_size / 1e6:,.0f} MB from "
                f"{info.compress_size / 1e3:,.0f} kB, over {MAX_RATIO} times: it looks like a "
                "zip bomb and is refused."
            )
    return members


def _unpack(
    archive: zipfile.ZipFile,
    members: list[tuple[zipfile.ZipInfo, PurePosixPath]],
    dest: Path,
    max_bytes: int,
) -> None:
    """Write the members, counting the bytes that really come out.

    zipfile itself stops a member at its declared size and then fails its CRC;
    the count guards the limit whatever the headers say.
    """
    written = 0
    for info, path in members:
        target = dest.joinpath(*path.parts)
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        member_bytes = 0
        with archive.open(info) as source, open(target, "wb") as sink:
            while chunk := source.read(_CHUNK):
                member_bytes += len(chunk)
                written += len(chunk)
                if member_bytes > info.file_size or written > max_bytes:
                    raise ValueError(
                        f"The zip member {info.filename!r} unpacks to more than its header "
                        "says; the archive is refused."
                    )
                sink.write(chunk)


def _dataset_root(dest: Path) -> Path:
    """``dest``, or its one top-level folder when the zip was made from a folder."""
    if (dest / "train.csv").is_file():
        return dest
    entries = [entry for entry in dest.iterdir() if not entry.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest


def _clear(dest: Path, created: bool) -> None:
    if created:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for entry in dest.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def extract_dataset_zip(
    zip_path: str | Path,
    dest: str | Path,
    *,
    max_bytes: int = 2_000_000_000,
    max_files: int = 200_000,
) -> Dataset:
    """Unpack an uploaded dataset zip safely and load it.

    Refuses members with absolute paths or ``..`` (zip slip), symbolic links,
    encrypted members, more than ``max_files`` files, more than ``max_bytes``
    unpacked (by the headers and by the bytes that really come out), and big
    members that inflate over :data:`MAX_RATIO` times. A zip whose content sits
    in one top-level folder is loaded from that folder. On any refusal, ``dest``
    is left empty (or removed, if this call created it).

    Args:
        zip_path: the uploaded file.
        dest: an empty or new folder for this upload (see :func:`upload_folder`).
        max_bytes: the most bytes the members may unpack to, together.
        max_files: the most files the zip may hold.

    Returns:
        The unpacked :class:`~cnnlens.data.Dataset`.

    Raises:
        ValueError: if the file is not a zip, breaks a rule above, is damaged,
            ``dest`` is not empty, or the unpacked folder is not a dataset.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    if not zip_path.is_file():
        raise ValueError(f"{zip_path} is not a file. Upload a .zip of a dataset folder.")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"{dest} must be a new or empty folder to unpack the zip into.")
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        try:
            with zipfile.ZipFile(zip_path) as archive:
                members = _check_members(archive, max_bytes, max_files)
                _unpack(archive, members, dest, max_bytes)
        except zipfile.BadZipFile as error:
            raise ValueError(
                f"{zip_path.name} is not a zip file or is damaged ({error}). "
                "Upload a .zip of a dataset folder."
            ) from None
        except (OSError, EOFError, NotImplementedError, RuntimeError) as error:
            raise ValueError(f"{zip_path.name} could not be unpacked: {error}") from None
        from cnnlens.data import load_dataset  # pandas: imported only when a zip arrives

        return load_dataset(_dataset_root(dest))
    except BaseException:
        _clear(dest, created)
        raise


@dataclass(frozen=True)
class UploadFolder:
    """A per-upload folder on the server; remove it with :meth:`cleanup` or ``with``."""

    path: Path

    def cleanup(self) -> None:
        """Remove the folder and everything in it (nothing happens if it is gone)."""
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> UploadFolder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()


def uploads_base() -> Path:
    """The server-side folder that holds the upload folders: ``<tempdir>/cnnlens-uploads``."""
    return Path(tempfile.gettempdir()) / "cnnlens-uploads"


def upload_folder(base: Path | None = None) -> UploadFolder:
    """Make a new, empty folder for one upload, under ``base`` (default :func:`uploads_base`).

    Raises:
        ValueError: if ``base`` is a symbolic link (someone else may control where it points).
    """
    base = uploads_base() if base is None else Path(base)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    if base.is_symlink():
        raise ValueError(f"{base} is a symbolic link; remove it or choose another upload folder.")
    path = base / uuid.uuid4().hex
    path.mkdir(mode=0o700)
    return UploadFolder(path)


def remove_stale_uploads(max_age_hours: float = 24.0, base: Path | None = None) -> list[Path]:
    """Remove upload folders not modified for ``max_age_hours``; the app calls it at start.

    Only folders named like those :func:`upload_folder` makes are touched.

    Returns:
        The folders removed.
    """
    base = uploads_base() if base is None else Path(base)
    if not base.is_dir() or base.is_symlink():
        return []
    cutoff = time.time() - max_age_hours * 3600
    removed = []
    for entry in base.iterdir():
        name_is_ours = len(entry.name) == 32 and all(c in "0123456789abcdef" for c in entry.name)
        if not name_is_ours or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            stale = entry.stat().st_mtime < cutoff
        except FileNotFoundError:  # another server process removed it meanwhile
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def cache_dir() -> Path:
    """The folder of cnnlens's caches: ``$CNNLENS_CACHE_DIR``, else ``~/.cache/cnnlens``."""
    value = os.environ.get(CACHE_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "cnnlens"


def _read_recent() -> list[str]:
    try:
        stored = json.loads((cache_dir() / _RECENT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # missing or corrupt: start afresh rather than fail the app
    if not isinstance(stored, list):
        return []
    return [entry for entry in stored if isinstance(entry, str)]


def remember_folder(path: str | Path) -> None:
    """Put a dataset folder first in the recent folders.

    Raises:
        ValueError: if the folder is outside the allowed roots.
        OSError: if the cache folder cannot be written.
    """
    folder = str(resolve_under_roots(path))
    with _recent_lock:
        entries = [folder] + [entry for entry in _read_recent() if entry != folder]
        cache = cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        # A reader (another server process) sees the old file or the new one, never half.
        handle, temp = tempfile.mkstemp(dir=cache, prefix=".recent-", suffix=".json")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(entries[:_RECENT_KEPT], file, indent=1)
            os.replace(temp, cache / _RECENT_FILE)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def recent_folders(limit: int = 8) -> list[Path]:
    """The most recently remembered folders that still exist under the allowed roots."""
    found: list[Path] = []
    for entry in _read_recent():
        if len(found) >= limit:
            break
        try:
            folder = resolve_under_roots(entry)
        except ValueError:
            continue
        if folder.is_dir() and folder not in found:
            found.append(folder)
    return found
