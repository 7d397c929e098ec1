"""Reusable dashboard pieces: plain-words explanations and the image chooser.

Each ``*_ui()`` builder draws its widgets and returns plain values.
"""

from __future__ import annotations

import functools
import runpy
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from cnnlens.registry import ModelInfo, model_info
from cnnlens.ui import cache, state

if TYPE_CHECKING:
    from cnnlens.data import Dataset

ENTRYPOINT = Path(__file__).resolve().parents[2] / "dashboard.py"
PAGES_DIR = ENTRYPOINT.parent / "pages"
_PAGES = {
    "home": ("Home", ":material/home:"),
    "dataset": ("Dataset", ":material/photo_library:"),
    "layers": ("Layers", ":material/stacks:"),
    "feature_maps": ("Feature maps", ":material/grid_view:"),
}


def page(name: str) -> st.Page:
    """The st.Page of ``pages/<name>.py``, for navigation, links and switches."""
    title, icon = _PAGES[name]
    return st.Page(PAGES_DIR / f"{name}.py", title=title, icon=icon, default=name == "home")


def all_pages() -> list[st.Page]:
    """Every page, in the order the sidebar lists them."""
    return [page(name) for name in _PAGES]


EXPLANATIONS = {
    "dataset": """
A **dataset** here is a folder of images with a table saying what each one
shows (its **label**). The **seed** makes the random pick repeatable: the same
seed always picks the same images, so a colleague who types the same seed sees
the same thing. The **test** images have no label: the network has to guess.
""",
    "heatmap": """
A **heatmap** paints each number as a colour. Here bright yellow means a high
value, dark purple a low one. In a feature map, bright marks the places where
the network found the pattern that channel looks for.
""",
    "convolution": """
A **convolution layer** slides many small filters (3×3 pixels here) over the
image. Each filter looks for one pattern, such as an edge at an angle, and
writes how strongly it finds it at each place. The result of one filter is a
**channel**; its picture is a **feature map**. Early layers find edges and
strokes; deeper layers combine them into larger shapes.
""",
    "relu": """
**ReLU** keeps positive values and turns negatives into zero: "pattern found"
stays, "opposite of the pattern" becomes nothing. **Batch norm** rescales each
channel so values stay in a useful range. **Pooling** keeps the largest value in
each 2×2 square, halving the map's size, so later layers see a wider area.
""",
    "brightness": """
**Bright** means a strong response; **dark** means none. A conv or batch-norm
layer comes before its ReLU, so its values can be negative: there the darkest
places are where the image looks most unlike the pattern. With *per channel*
normalisation each map uses its full colour range, so faint channels are
visible too; with *per layer* all maps share one scale, so you can compare how
strongly channels respond. A **dead** channel is zero everywhere for this image.
""",
}


def explain(*topics: str, title: str = "What am I looking at?") -> None:
    """A collapsible explanation in plain words, for people who do not program."""
    with st.expander(title, icon=":material/help:"):
        st.markdown("\n".join(EXPLANATIONS[topic] for topic in topics))


def show_notices(notices: list[str]) -> None:
    """Show each notice (a URL value that fell back to its default) as a warning."""
    for notice in notices:
        st.warning(notice, icon=":material/link_off:")


def input_pixels(view: state.View, ctx: Context) -> tuple[np.ndarray, str]:
    """The pixels of the current input (upload or dataset image) and a caption.

    Raises:
        ValueError: for an upload that is not a usable image; the caller shows it.
    """
    if view.upload is not None:
        name, data = view.upload
        return cache.get_uploaded_image(data, name, ctx.info.spec.mode), f"your image {name}"
    pixels = cache.get_dataset_image(ctx.root, view.split, view.image, ctx.info.spec.mode)
    label = ctx.dataset.label_of(view.image) if view.split == "train" else None
    caption = f"{view.image}" + (f" · label {label}" if label is not None else " · unlabelled")
    return pixels, caption


def upload_ui(mode: str) -> None:
    """A PNG/JPEG uploader that replaces the dataset image until it is cleared.

    The upload is decoded as it arrives: a file that is not a usable image gets
    an error here and the current image stays.
    """

    def take_upload() -> None:
        uploaded = st.session_state.get("upload_widget")
        if uploaded is None:
            st.session_state[state.UPLOAD_KEY] = None
            return
        data = uploaded.getvalue()
        try:
            cache.get_uploaded_image(data, uploaded.name, mode)
        except ValueError as error:
            st.session_state["upload_error"] = str(error)
            return
        st.session_state[state.UPLOAD_KEY] = (uploaded.name, data)

    st.file_uploader(
        "Use your own image",
        type=["png", "jpg", "jpeg"],
        key="upload_widget",
        on_change=take_upload,
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


class Context:
    """This run's dataset folder and model, settled by the entrypoint for the pages.

    The dataset is read when a page first needs it, so a page paints its title
    before pandas has even been imported. The view itself is read with
    :func:`state.current_view` after the page's own widgets: a widget's new
    value is visible only once the widget has been drawn in this run.
    """

    def __init__(self, root: str, model_name: str) -> None:
        self.root = root
        self.model_name = model_name
        self.info: ModelInfo = model_info(model_name)

    @functools.cached_property
    def dataset(self) -> Dataset:
        """The indexed dataset; a folder that is not one stops the page with an error."""
        try:
            dataset = cache.get_dataset(self.root)
        except ValueError as error:
            st.error(f"The dataset folder cannot be used: {error}", icon=":material/error:")
            st.stop()
        show_notices(state.init_state(dataset))
        return dataset


_CONTEXT_KEY = "_context"


def build_context(root: str) -> Context:
    """Record this run's dataset folder and model for the pages; called by ``dashboard.py``."""
    context = Context(root, st.session_state[state.MODEL_KEY])
    st.session_state[_CONTEXT_KEY] = context
    return context


def forget_context() -> None:
    """Drop this run's context once the page has run; called by ``dashboard.py``."""
    st.session_state.pop(_CONTEXT_KEY, None)


def context(with_layers: bool = False) -> tuple[Context, list[str]]:
    """This run's context for a page, and the model's layer names when asked for.

    Asking for layers loads the model (and torch) and settles the layer state.
    """
    ctx: Context | None = st.session_state.get(_CONTEXT_KEY)
    if ctx is None:
        # Until a session has run the entrypoint, Streamlit treats pages/ as its old
        # multipage folder and runs a deep-linked page alone. Run the entrypoint,
        # which draws this page through st.navigation, and stop here.
        runpy.run_path(str(ENTRYPOINT), run_name="__main__")
        st.stop()
    if not with_layers:
        return ctx, []
    names = cache.get_layer_names(ctx.model_name)
    show_notices(state.init_layers(names))
    return ctx, names


def sidebar_ui(ctx: Context) -> None:
    """The model's note, the dataset and the current input (drawn after the page)."""
    if ctx.info.note:
        st.info(ctx.info.note, icon=":material/info:")
    dataset = ctx.dataset
    st.caption("Dataset")
    st.markdown(
        f"**{dataset.root.name}** · {len(dataset.index):,} images · {len(dataset.labels)} labels"
    )
    try:
        view = state.current_view(ctx.dataset)
        pixels, caption = input_pixels(view, ctx)
    except ValueError as error:
        st.error(str(error))
        return
    st.caption("Current image")
    st.image(pixels, caption=caption, width=112)
