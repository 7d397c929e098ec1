"""The input image: the drawing pad's digit, the dataset's pick or an upload, read for a
page, and the uploader."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from cnnlens.ui import state
from cnnlens.ui.caching import in_memory

if TYPE_CHECKING:
    from cnnlens.data import Dataset
    from cnnlens.ui.context import Context

__all__ = [
    "DISPLAY_SIDE",
    "get_dataset_image",
    "get_uploaded_image",
    "input_image",
    "input_problem_ui",
    "read_input",
    "upload_ui",
]

DISPLAY_SIDE = 512
"""Input images are shown at most this large; the maps are laid over them."""


# Taking the dataset itself (not its folder) spares a lookup of the shared dataset on
# every new image.
@in_memory(64)
def get_dataset_image(dataset: Dataset, split: str, filename: str, mode: str) -> np.ndarray:
    """A dataset image as a uint8 array in the model's mode (H×W or H×W×3), at most
    ``DISPLAY_SIDE`` a side (a large JPEG is decoded straight at a reduced scale)."""
    return np.asarray(dataset.load_image(filename, mode, split, max_side=DISPLAY_SIDE))


@in_memory(32)
def get_uploaded_image(data: bytes, name: str, mode: str) -> np.ndarray:
    """An uploaded image, decoded safely and converted to the model's mode."""
    from cnnlens.images import open_image, to_mode

    return np.asarray(to_mode(open_image(data, name=name, max_side=DISPLAY_SIDE), mode))


def input_image(view: state.View, ctx: Context) -> tuple[np.ndarray, str]:
    """The current input image's pixels and caption, for a page that shows the image.

    The sidebar then leaves it out. Shown twice, it delayed every new image's paint
    by about 0.1 s in the browser, and a page may change it in a fragment, whose
    reruns do not redraw the sidebar.

    Raises:
        ValueError: for an upload that is not a usable image; the caller shows it.
    """
    ctx.shows_input = True
    return read_input(view, ctx)


def read_input(view: state.View, ctx: Context) -> tuple[np.ndarray, str]:
    """The pixels of the current input (the pad's drawing, an upload or a dataset image)
    and a caption.

    Raises:
        ValueError: for an upload that is not a usable image, or a drawing that holds no
            digit (empty, a dot, all ink); the caller shows it.
    """
    if view.drawing is not None:
        from cnnlens.ui.drawing_pad import get_drawn_pixels

        return get_drawn_pixels(view.drawing, ctx.info.spec), "your drawing"
    if view.upload is not None:
        name, data = view.upload
        return get_uploaded_image(data, name, ctx.info.spec.mode), f"your image {name}"
    pixels = get_dataset_image(ctx.dataset, view.split, view.image, ctx.info.spec.mode)
    label = ctx.dataset.label_of(view.image) if view.split == "train" else None
    caption = f"{view.image}" + (f" · label {label}" if label is not None else " · unlabelled")
    return pixels, caption


def input_problem_ui(view: state.View, error: ValueError) -> None:
    """Say why the input has nothing to show: for a drawing, where to draw (no fault)."""
    if view.drawing is not None:
        st.info(
            f"{error} The pad is on the Feature maps and Network pages; or choose an image there.",
            icon=":material/draw:",
        )
    else:
        st.error(str(error), icon=":material/error:")


def _take_upload(mode: str) -> None:
    """Callback of the image uploader: keep a usable image, or say why it is not one."""
    uploaded = st.session_state.get("upload_widget")
    if uploaded is None:
        st.session_state[state.UPLOAD_KEY] = None
        return
    data = uploaded.getvalue()
    try:
        get_uploaded_image(data, uploaded.name, mode)
    except ValueError as error:
        st.session_state["upload_error"] = str(error)
        return
    st.session_state[state.UPLOAD_KEY] = (uploaded.name, data)
    st.session_state[state.INPUT_KEY] = "image"


def upload_ui(mode: str) -> None:
    """A PNG/JPEG uploader that replaces the dataset image until it is cleared.

    The upload is decoded as it arrives: a file that is not a usable image gets
    an error here and the current image stays.
    """
    st.file_uploader(
        "Use your own image",
        type=["png", "jpg", "jpeg"],
        key="upload_widget",
        on_change=_take_upload,
        args=(mode,),
        help="PNG or JPEG. It is converted to what the model takes and resized.",
    )
    error = st.session_state.pop("upload_error", None)
    if error:
        st.error(f"{error} The maps show the image on the left.", icon=":material/broken_image:")
    if st.session_state.get(state.UPLOAD_KEY) is not None:
        st.button(
            "Back to the dataset image",
            on_click=state.choose_image,
            args=(st.session_state[state.IMAGE_KEY],),
            icon=":material/undo:",
        )
