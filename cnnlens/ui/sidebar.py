"""The sidebar: the dataset, model, weights and device pickers, and what a run shows.

:func:`controls_ui` draws the pickers; :func:`sidebar_ui` the model's notes, the
weights download, the dataset and the current image. Nothing here imports torch or
pandas at module level: the first page paints without them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from cnnlens.registry import DEMO_DATASET_DIR, MODELS, model_info
from cnnlens.ui import resources, state
from cnnlens.ui.caching import clear_all
from cnnlens.ui.image_input import input_problem_ui, read_input

if TYPE_CHECKING:
    from cnnlens.ui.context import Context

__all__ = ["controls_ui", "download_ui", "sidebar_ui"]


def controls_ui() -> None:
    """The sidebar's dataset, model, weights and device pickers; drawn before the page.

    Errors (a folder that is not a dataset, a weights file for another network) are
    shown here and the previous choice stays.
    """
    dataset_picker_ui()
    model_picker_ui()
    weights_picker_ui()
    if _has_nvidia_driver():
        device_picker_ui()


def dataset_picker_ui() -> None:
    """The dataset folder: a list of the known ones, a typed path or an uploaded zip."""
    st.selectbox(
        "Dataset",
        _dataset_folders(),
        format_func=_folder_title,
        key=state.DATA_KEY,
        on_change=lambda: state.choose_dataset(st.session_state[state.DATA_KEY]),
        persist_state="session",
        help="Folders with a train.csv (filename,label) and train/ images, or one "
        "subfolder of images per label, under the server's data roots.",
    )
    with st.popover("Open other data", icon=":material/folder_open:", width="stretch"):
        st.text_input(
            "Folder path",
            key="folder_path",
            placeholder="MNIST or /data/photos",
            help="Relative to the first data root, or absolute under one of them "
            "(set CNNLENS_DATA_ROOTS on the server to allow more).",
        )
        st.button("Open folder", on_click=_open_folder, width="stretch")
        st.file_uploader(
            "…or upload a .zip in the same layout",
            type=["zip"],
            key="zip_widget",
            on_change=_take_zip,
        )
        data_error = st.session_state.pop("data_error", None)
        if data_error:
            st.error(data_error, icon=":material/folder_off:")


def model_picker_ui() -> None:
    """The network: the demo CNN or a torchvision classifier."""
    st.selectbox(
        "Model",
        list(MODELS),
        format_func=_model_title,
        key=state.MODEL_KEY,
        on_change=lambda: st.session_state.update({state.WEIGHTS_KEY: state.DEFAULT_WEIGHTS}),
        persist_state="session",
        help="The demo CNN, or any torchvision classification network.",
    )


def weights_picker_ui() -> None:
    """The model's weights: default, random, or a state_dict file uploaded or typed."""
    weights, model = st.session_state[state.WEIGHTS_KEY], st.session_state[state.MODEL_KEY]
    choices = list(dict.fromkeys([state.DEFAULT_WEIGHTS, "random", weights]))
    st.selectbox(
        "Weights",
        choices,
        format_func={value: _weights_title(value, model) for value in choices}.get,
        key=state.WEIGHTS_KEY,
        persist_state="session",
        help="Pretrained weights come from the server's torch hub cache; without them "
        "the network runs with random weights.",
    )
    with st.popover("Use your own weights", icon=":material/upload_file:", width="stretch"):
        st.file_uploader(
            "A state_dict file",
            type=["pt", "pth", "safetensors"],
            key="weights_widget",
            on_change=_take_weights,
            help="Saved with torch.save(model.state_dict(), path) or safetensors. "
            "Files that carry code are refused.",
        )
        st.text_input("…or its path on the server", key="weights_path")
        st.button("Use file", on_click=_open_weights, width="stretch")
        weights_error = st.session_state.pop("weights_error", None)
        if weights_error:
            st.error(weights_error, icon=":material/error:")


def device_picker_ui() -> None:
    """CPU or GPU, and bfloat16 on the GPU."""
    st.segmented_control(
        "Device",
        ["auto", "cpu", "cuda"],
        required=True,
        key=state.DEVICE_KEY,
        persist_state="session",
    )
    st.toggle("bfloat16 on the GPU", key=state.BF16_KEY, persist_state="session")


@functools.cache
def _has_nvidia_driver() -> bool:
    """Whether to offer a GPU: the NVIDIA driver is there (asking torch would import it)."""
    return Path("/proc/driver/nvidia/version").exists()


def _folder_title(folder: str) -> str:
    """A dataset folder as the sidebar lists it: its name and where it sits."""
    from cnnlens.sources import data_roots

    path = Path(folder)
    if path == DEMO_DATASET_DIR:
        return "Demo digits (MNIST, embedded)"
    for root in data_roots():
        if path.is_relative_to(root):
            return f"{path.relative_to(root)}  ·  {root.name}/"
    return f"{path.name}  ·  uploaded"


def _dataset_folders() -> list[str]:
    """The folders the dataset picker offers: current, demo, recent, then the roots' datasets."""
    from cnnlens.sources import data_roots, recent_folders

    found = [st.session_state[state.DATA_KEY], state.default_dataset()]
    found += [str(folder) for folder in recent_folders()]
    for root in data_roots():
        try:
            children = sorted(entry for entry in root.iterdir() if entry.is_dir())
        except OSError:
            continue
        found += [str(child) for child in children[:50] if not child.name.startswith(".")]
    return list(dict.fromkeys(found))


def _open_folder() -> None:
    """Callback of "Open": a folder typed by path, accepted only under the data roots."""
    from cnnlens.sources import remember_folder, resolve_under_roots

    typed = st.session_state.get("folder_path", "").strip()
    try:
        folder = resolve_under_roots(typed)
        resources.get_dataset(
            str(folder)
        )  # refuses a folder that is not a dataset, with the reason
        remember_folder(folder)
    except (ValueError, OSError) as error:
        st.session_state["data_error"] = str(error)
        return
    state.choose_dataset(str(folder))


def _take_zip() -> None:
    """Callback of the zip uploader: unpack it safely into a folder of its own."""
    from cnnlens.sources import extract_dataset_zip, upload_folder

    uploaded = st.session_state.get("zip_widget")
    if uploaded is None:
        return
    folder = upload_folder()
    archive = folder.path / "upload.zip"
    archive.write_bytes(uploaded.getvalue())
    try:
        dataset = extract_dataset_zip(archive, folder.path / "data")
    except ValueError as error:
        folder.cleanup()
        st.session_state["data_error"] = f"{uploaded.name}: {error}"
        return
    finally:
        archive.unlink(missing_ok=True)
    state.choose_dataset(str(dataset.root))


def _take_weights() -> None:
    """Callback of the weights uploader: keep the file on the server and try it at once."""
    from cnnlens.sources import upload_folder

    uploaded = st.session_state.get("weights_widget")
    if uploaded is None:
        return
    folder = upload_folder()
    path = folder.path / Path(uploaded.name).name
    path.write_bytes(uploaded.getvalue())
    _try_weights(str(path), cleanup=folder.cleanup)


def _open_weights() -> None:
    """Callback of "Use file": a weights file typed by path, only under the data roots."""
    from cnnlens.sources import resolve_under_roots

    try:
        path = resolve_under_roots(st.session_state.get("weights_path", "").strip())
    except ValueError as error:
        st.session_state["weights_error"] = str(error)
        return
    _try_weights(str(path))


def _try_weights(path: str, cleanup: Callable[[], None] | None = None) -> None:
    """Load the weights now: a file that does not fit is refused and the model stays."""
    choice = state.model_choice()._replace(weights=path)
    try:
        resources.get_model(choice)
    except ValueError as error:
        st.session_state["weights_error"] = str(error)
        if cleanup is not None:
            cleanup()
        return
    st.session_state[state.WEIGHTS_KEY] = path


def _weights_title(value: str, model: str) -> str:
    if value == state.DEFAULT_WEIGHTS:
        return "Trained (embedded)" if model_info(model).weights is None else "Pretrained if cached"
    return "Random" if value == "random" else f"Your file: {Path(value).name}"


def _model_title(name: str) -> str:
    info = model_info(name)
    return info.title if info.family == "demo" else f"{info.group} · {info.title}"


def download_ui(ctx: Context) -> None:
    """Offer the pretrained weights when they are missing here and downloads are allowed."""
    from cnnlens.weights import download_weights, weights_status

    wanted = ctx.choice.weights == state.DEFAULT_WEIGHTS and ctx.info.weights is not None
    if not wanted or ctx.loaded.weights != "random weights":
        return
    if weights_status(ctx.model_name) != "downloadable":
        return
    if not st.button(
        f"Download the pretrained weights of {ctx.info.title}",
        icon=":material/download:",
        help="From download.pytorch.org into the server's torch hub cache, once for everyone.",
        width="stretch",
    ):
        return
    bar = st.progress(0.0, text="Downloading…")

    def progress(done: int, total: int) -> None:
        share = done / total if total else 0.0
        bar.progress(min(share, 1.0), text=f"Downloading: {done / 1e6:,.0f} MB")

    try:
        download_weights(ctx.model_name, progress)
    except ValueError as error:
        bar.empty()
        st.error(str(error), icon=":material/error:")
        return
    # Every cache keyed by "the default weights" now means other weights: start afresh,
    # so every session gets the pretrained network and its maps.
    clear_all()
    st.rerun()


def sidebar_ui(ctx: Context) -> None:
    """The model's note, the dataset and the current input (drawn after the page)."""
    if ctx.model_loaded:
        for note in ctx.loaded.notes:
            st.info(note, icon=":material/info:")
        download_ui(ctx)
        st.caption(f"{ctx.info.title} · {ctx.loaded.weights} · {ctx.loaded.device}")
    dataset = ctx.dataset
    st.caption("Dataset")
    st.markdown(
        f"**{dataset.root.name}** · {len(dataset.index):,} images · {len(dataset.labels)} labels"
    )
    if ctx.shows_input:
        return
    view = state.current_view(ctx.dataset)
    try:
        pixels, caption = read_input(view, ctx)
    except ValueError as error:
        input_problem_ui(view, error)
        return
    st.caption("Current image")
    st.image(pixels, caption=caption, width=112)
