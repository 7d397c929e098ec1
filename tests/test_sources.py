"""Where datasets come from: allowed roots, safe zip uploads, upload folders, recent folders."""

from __future__ import annotations

import json
import os
import stat
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cnnlens import sources
from cnnlens.data import load_dataset
from cnnlens.registry import DEMO_DATASET_DIR
from cnnlens.sources import (
    data_roots,
    extract_dataset_zip,
    recent_folders,
    remember_folder,
    remove_stale_uploads,
    resolve_under_roots,
    upload_folder,
)
from tests.generated import write_dataset, write_image_folder

# Allowed roots ---------------------------------------------------------------------------


def test_data_roots_default_to_the_folder_of_the_demo_dataset(monkeypatch):
    monkeypatch.delenv("CNNLENS_DATA_ROOTS", raising=False)
    assert data_roots() == [Path(__file__).resolve().parent.parent / "cnnlens" / "demo"]
    assert data_roots() == [DEMO_DATASET_DIR.parent]


def test_data_roots_come_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "b").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "b")
    monkeypatch.setenv("CNNLENS_DATA_ROOTS", os.pathsep.join([str(tmp_path / "a"), "", str(link)]))
    assert data_roots() == [tmp_path / "a", tmp_path / "b"]
    monkeypatch.setenv("CNNLENS_DATA_ROOTS", " ")
    assert data_roots() == [DEMO_DATASET_DIR.parent]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An allowed root holding one dataset, with files and folders outside it beside it."""
    allowed = tmp_path / "root"
    write_dataset(allowed / "digits", [0, 1])
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "model.pt").write_bytes(b"weights")
    (tmp_path / "root2").mkdir()  # shares the root's name as a prefix
    return allowed


def test_paths_inside_a_root_resolve(root):
    digits = root / "digits"
    assert resolve_under_roots("digits", [root]) == digits
    assert resolve_under_roots(str(digits), [root]) == digits
    assert resolve_under_roots(digits / "train" / ".." / "train", [root]) == digits / "train"
    assert resolve_under_roots(root, [root]) == root
    assert resolve_under_roots("not/made/yet", [root]) == root / "not" / "made" / "yet"
    (root / "alias").symlink_to(digits)
    assert resolve_under_roots("alias", [root]) == digits
    # Relative paths are taken from the first root.
    other = root.parent / "outside"
    assert resolve_under_roots("model.pt", [other, root]) == other / "model.pt"


@pytest.mark.parametrize(
    "path",
    [
        "../outside",
        "digits/../../outside/model.pt",
        "/etc/passwd",
        "../root2",
        "~",
    ],
)
def test_paths_outside_every_root_are_refused(root, path):
    with pytest.raises(ValueError, match="outside the folders cnnlens may read") as error:
        resolve_under_roots(path, [root])
    assert str(root) in str(error.value) and "CNNLENS_DATA_ROOTS" in str(error.value)


def test_absolute_paths_and_symlinks_that_leave_the_root_are_refused(root, monkeypatch):
    weights = root.parent / "outside" / "model.pt"
    (root / "shortcut").symlink_to(root.parent / "outside")
    (root / "weights.pt").symlink_to(weights)
    monkeypatch.setenv("CNNLENS_DATA_ROOTS", str(root))
    for path in (weights, root.parent / "root2", "shortcut", "shortcut/model.pt", "weights.pt"):
        with pytest.raises(ValueError, match="CNNLENS_DATA_ROOTS"):
            resolve_under_roots(path)
    assert resolve_under_roots("digits") == root / "digits"


def test_a_path_must_be_a_non_empty_string_or_path(root):
    with pytest.raises(TypeError, match="string or a Path"):
        resolve_under_roots(3, [root])
    for empty in ("", "  ", "digits\0"):
        with pytest.raises(ValueError, match="Enter the path"):
            resolve_under_roots(empty, [root])


# Zip uploads ----------------------------------------------------------------------------


def make_zip(path: Path, members: dict[str, bytes], level: int | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def zip_folder(folder: Path, path: Path, prefix: str = "") -> Path:
    """Zip a folder the way file managers do: directory entries, then files."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in sorted(folder.rglob("*")):
            name = prefix + item.relative_to(folder).as_posix()
            archive.write(item, name + "/" if item.is_dir() else name)
    return path


def patch_single_member(data: bytes, file_size: int | None = None, flag_bits: int = 0) -> bytes:
    """Rewrite the headers of a one-member zip: its declared size and its flags."""
    data = bytearray(data)
    local, central = 0, data.rindex(b"PK\x01\x02")
    for header, flags_at, size_at in ((local, 6, 22), (central, 8, 24)):
        (flags,) = struct.unpack_from("<H", data, header + flags_at)
        struct.pack_into("<H", data, header + flags_at, flags | flag_bits)
        if file_size is not None:
            struct.pack_into("<I", data, header + size_at, file_size)
    return bytes(data)


def assert_refused(zip_path: Path, dest: Path, match: str, **limits: int) -> None:
    with pytest.raises(ValueError, match=match):
        extract_dataset_zip(zip_path, dest, **limits)
    assert not dest.exists() or list(dest.iterdir()) == []


@pytest.fixture
def digits_zip_members(tmp_path: Path) -> dict[str, bytes]:
    root = write_dataset(tmp_path / "src", [0, 1])
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "bad_name",
    ["../evil.txt", "train/../../evil.txt", "/tmp/evil.txt", "..\\evil.txt", "C:/evil.txt"],
)
def test_members_that_leave_the_folder_are_refused(tmp_path, digits_zip_members, bad_name):
    archive = make_zip(tmp_path / "slip.zip", {**digits_zip_members, bad_name: b"pwned"})
    dest = tmp_path / "uploads" / "one"
    assert_refused(archive, dest, "points outside the folder")
    assert not dest.exists()  # the call made it, so the refusal removes it
    assert not (tmp_path / "uploads" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_a_symlink_member_is_refused(tmp_path, digits_zip_members):
    link = zipfile.ZipInfo("train/img_9.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = tmp_path / "link.zip"
    make_zip(archive, digits_zip_members)
    with zipfile.ZipFile(archive, "a") as opened:
        opened.writestr(link, "/etc/passwd")
    dest = tmp_path / "dest"
    dest.mkdir()  # made by the caller: left in place, empty
    assert_refused(archive, dest, "symbolic link")
    assert dest.is_dir()


def test_an_encrypted_member_is_refused(tmp_path):
    plain = make_zip(tmp_path / "plain.zip", {"train.csv": b"filename,label\n"})
    locked = tmp_path / "locked.zip"
    locked.write_bytes(patch_single_member(plain.read_bytes(), flag_bits=0x1))
    assert_refused(locked, tmp_path / "dest", "encrypted")


def test_something_that_is_not_a_zip_is_refused(tmp_path):
    fake = tmp_path / "data.zip"
    fake.write_bytes(b"filename,label\na.png,1\n")
    assert_refused(fake, tmp_path / "dest", "not a zip file")
    assert_refused(tmp_path / "gone.zip", tmp_path / "dest", "is not a file")


def test_too_many_files_are_refused(tmp_path):
    archive = make_zip(tmp_path / "many.zip", {f"a/{i}.png": b"" for i in range(5)})
    assert_refused(archive, tmp_path / "dest", "holds 5 files, over the limit of 4", max_files=4)


@pytest.fixture(scope="module")
def honest_bomb(tmp_path_factory) -> Path:
    """500 MB of zeros, declared honestly, in about 2 MB."""
    path = tmp_path_factory.mktemp("bomb") / "zeros.zip"
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open("train/zeros.png", "w", force_zip64=True) as member,
    ):
        chunk = bytes(1 << 20)
        for _ in range(500):
            member.write(chunk)
    return path


def test_an_honest_bomb_is_refused_by_the_size_limit_before_unpacking(honest_bomb, tmp_path):
    with zipfile.ZipFile(honest_bomb) as archive:
        assert archive.infolist()[0].file_size == 500 << 20
    assert honest_bomb.stat().st_size < 3_000_000
    started = time.perf_counter()
    assert_refused(honest_bomb, tmp_path / "dest", "unpacks to 524 MB, over the limit of 100 MB",
                   max_bytes=100_000_000)  # fmt: skip
    assert time.perf_counter() - started < 1.0  # the headers decide; nothing is inflated


def test_a_member_that_inflates_over_200_times_is_refused(tmp_path):
    bomb = make_zip(tmp_path / "bomb.zip", {"train/a.png": bytes(20 << 20)}, level=9)
    assert bomb.stat().st_size < 100_000
    assert_refused(bomb, tmp_path / "dest", "over 200 times: it looks like a zip bomb")


def test_a_header_that_understates_the_size_is_caught_while_unpacking(tmp_path):
    honest = make_zip(tmp_path / "honest.zip", {"train/a.png": bytes(20 << 20)}, level=9)
    lying = tmp_path / "lying.zip"
    lying.write_bytes(patch_single_member(honest.read_bytes(), file_size=1000))
    with zipfile.ZipFile(lying) as archive:
        assert archive.infolist()[0].file_size == 1000  # passes every header check
    dest = tmp_path / "dest"
    assert_refused(lying, dest, "damaged")
    assert not dest.exists()


def test_unpacking_needs_an_empty_destination(tmp_path, digits_zip_members):
    archive = make_zip(tmp_path / "d.zip", digits_zip_members)
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep.txt").write_text("someone's file")
    with pytest.raises(ValueError, match="must be a new or empty folder"):
        extract_dataset_zip(archive, tmp_path / "dest")
    assert [p.name for p in (tmp_path / "dest").iterdir()] == ["keep.txt"]


def test_a_good_zip_round_trips_to_the_same_dataset(tmp_path):
    source = write_dataset(tmp_path / "src", [i % 3 for i in range(9)], size=(6, 10), mode="RGB")
    (source / "test").mkdir()
    Image.new("RGB", (5, 5), (9, 8, 7)).save(source / "test" / "t.png")
    (source / "test.csv").write_text("filename\nt.png\n")
    with open(source / "train.csv", "a") as csv:
        csv.write("missing.png,1\n")
    dest = tmp_path / "upload"
    dataset = extract_dataset_zip(zip_folder(source, tmp_path / "d.zip"), dest)
    original = load_dataset(source)
    assert dataset.root == dest and dataset.layout == original.layout == "csv"
    pd.testing.assert_frame_equal(dataset.index, original.index)
    pd.testing.assert_frame_equal(dataset.test_index, original.test_index)
    assert dataset.problems == original.problems == [("missing.png", "no such file in train/")]
    assert dataset.pick(128) == original.pick(128)
    for name in original.index["filename"]:
        assert (dest / "train" / name).read_bytes() == (source / "train" / name).read_bytes()
    assert np.asarray(dataset.load_image("t.png", "RGB", "test"))[0, 0].tolist() == [9, 8, 7]


def test_a_zip_of_one_folder_is_read_from_inside_it(tmp_path):
    source = write_dataset(tmp_path / "src", [0, 1, 1])
    archive = zip_folder(source, tmp_path / "mnist.zip", prefix="mnist/")
    with zipfile.ZipFile(archive, "a") as opened:  # what macOS's Archive Utility adds
        opened.writestr("__MACOSX/mnist/._train.csv", b"\0\5\26\7")
        opened.writestr("mnist/.DS_Store", b"\0")
    dest = tmp_path / "upload"
    dataset = extract_dataset_zip(archive, dest)
    assert dataset.root == dest / "mnist"
    assert sorted(p.name for p in dest.iterdir()) == ["mnist"]
    pd.testing.assert_frame_equal(dataset.index, load_dataset(source).index)


def test_a_zip_of_label_folders_loads_as_an_image_folder_dataset(tmp_path):
    source = write_image_folder(tmp_path / "src", ["cat", "dog", "cat"], size=4, mode="RGB")
    archive = zip_folder(source, tmp_path / "pets.zip")
    dataset = extract_dataset_zip(archive, tmp_path / "upload")
    assert dataset.root == tmp_path / "upload" and dataset.layout == "image-folder"
    assert list(dataset.index["filename"]) == ["cat/img_0.png", "cat/img_2.png", "dog/img_1.png"]
    assert dataset.labels == ["cat", "dog"]


def test_a_zip_that_is_no_dataset_is_refused_and_cleared(tmp_path):
    archive = make_zip(tmp_path / "notes.zip", {"notes.txt": b"hello", "more.txt": b"world"})
    assert_refused(archive, tmp_path / "dest", "cnnlens reads two layouts")


# Upload folders -------------------------------------------------------------------------


def test_each_upload_gets_its_own_folder_and_cleans_up(tmp_path):
    base = tmp_path / "uploads"
    first, second = upload_folder(base), upload_folder(base)
    assert first.path.parent == second.path.parent == base and first.path != second.path
    assert first.path.is_dir() and list(first.path.iterdir()) == []
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o700
    first.cleanup()
    first.cleanup()  # twice is harmless
    assert not first.path.exists() and second.path.is_dir()
    with pytest.raises(RuntimeError), upload_folder(base) as third:
        (third.path / "data.zip").write_bytes(b"x")
        raise RuntimeError("the upload failed")
    assert not third.path.exists()


def test_the_default_upload_base_is_in_the_temp_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(sources.tempfile, "gettempdir", lambda: str(tmp_path))
    with upload_folder() as upload:
        assert upload.path.parent == tmp_path / "cnnlens-uploads"
    link = tmp_path / "elsewhere"
    link.symlink_to(tmp_path / "cnnlens-uploads")
    with pytest.raises(ValueError, match="symbolic link"):
        upload_folder(link)


def test_stale_upload_folders_are_removed_and_nothing_else(tmp_path):
    base = tmp_path / "uploads"
    old, fresh = upload_folder(base), upload_folder(base)
    (old.path / "dataset").mkdir()
    stranger = base / "keep-me"
    stranger.mkdir()
    two_days_ago = time.time() - 48 * 3600
    for path in (old.path, stranger):
        os.utime(path, (two_days_ago, two_days_ago))
    assert remove_stale_uploads(24, base) == [old.path]
    assert sorted(base.iterdir()) == sorted([fresh.path, stranger])
    assert remove_stale_uploads(24, tmp_path / "never-made") == []


# Recent folders ---------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    """A private cache folder and an allowed root with three dataset folders a, b, c."""
    monkeypatch.setenv("CNNLENS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CNNLENS_DATA_ROOTS", str(tmp_path / "data"))
    for name in "abc":
        (tmp_path / "data" / name).mkdir(parents=True)
    return tmp_path / "cache"


def test_recent_folders_come_newest_first_without_repeats(cache, tmp_path):
    data = tmp_path / "data"
    assert recent_folders() == []
    for name in ("a", "b", "c", "a"):
        remember_folder(data / name)
    assert recent_folders() == [data / "a", data / "c", data / "b"]
    assert recent_folders(limit=2) == [data / "a", data / "c"]
    stored = json.loads((cache / "recent_folders.json").read_text())
    assert stored == [str(data / n) for n in "acb"]
    assert [p.name for p in cache.iterdir()] == ["recent_folders.json"]  # no temp files left


def test_recent_folders_survive_a_corrupt_or_odd_file(cache, tmp_path):
    data = tmp_path / "data"
    cache.mkdir()
    for content in ("{not json", '{"folders": []}', "", "\x00\xff"):
        (cache / "recent_folders.json").write_text(content, encoding="latin-1")
        assert recent_folders() == []
    (cache / "recent_folders.json").write_text(json.dumps([3, None, str(data / "b")]))
    assert recent_folders() == [data / "b"]
    remember_folder(data / "a")
    assert recent_folders() == [data / "a", data / "b"]


def test_only_existing_folders_under_the_roots_are_listed(cache, tmp_path, monkeypatch):
    data = tmp_path / "data"
    for name in "abc":
        remember_folder(data / name)
    (data / "b").rmdir()
    assert recent_folders() == [data / "c", data / "a"]
    monkeypatch.setenv("CNNLENS_DATA_ROOTS", str(data / "a"))
    assert recent_folders() == [data / "a"]
    with pytest.raises(ValueError, match="outside the folders"):
        remember_folder(data / "c")


def test_a_failed_write_keeps_the_old_list(cache, tmp_path, monkeypatch):
    data = tmp_path / "data"
    remember_folder(data / "a")

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(sources.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        remember_folder(data / "b")
    assert recent_folders() == [data / "a"]
    assert [p.name for p in cache.iterdir()] == ["recent_folders.json"]
