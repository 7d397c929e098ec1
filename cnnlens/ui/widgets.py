"""Reusable dashboard pieces: plain-words explanations and the image chooser.

Each ``*_ui()`` builder draws its widgets and returns plain values.
"""

from __future__ import annotations

import functools
import runpy
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from cnnlens.registry import DEMO_DATASET_DIR, MODELS, InputSpec, ModelInfo, model_info
from cnnlens.ui import cache, state

if TYPE_CHECKING:
    import numpy as np

    from cnnlens.data import Dataset
    from cnnlens.export import Recipe
    from cnnlens.models import LoadedModel

ENTRYPOINT = Path(__file__).resolve().parents[2] / "dashboard.py"
PAGES_DIR = ENTRYPOINT.parent / "pages"
_PAGES = {
    "home": ("Home", ":material/home:"),
    "dataset": ("Dataset", ":material/photo_library:"),
    "layers": ("Layers", ":material/stacks:"),
    "feature_maps": ("Feature maps", ":material/grid_view:"),
    "insights": ("Insights", ":material/insights:"),
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
    "top_images": """
**Top images** are the images of the whole dataset that make one channel fire
most strongly: they show what pattern the channel has learned to look for.
Each crop is the part of the image the channel's strongest value depends on
(its **receptive field**); below it, the channel's map, all on one colour scale.
""",
    "class_matrix": """
The **class × channel** table averages each channel over all images of a class.
A bright cell means the channel responds to that class more than to others:
the layer has a detector that helps tell that class apart. Click a cell to see
the images of that class that excite that channel most.
""",
    "embedding": """
The **embedding map** places every image as a point so that images the layer
describes alike lie close together. Colours are the labels: well-separated
colours mean this layer already tells the classes apart. A cross marks an
image the network classifies wrongly. **PCA** keeps the broad layout and is
instant; **t-SNE** and **UMAP** keep close neighbours together but take longer.
Draw a box or lasso around points to see those images.
""",
    "gradcam": """
**Grad-CAM** shows where in the image the chosen layer holds the evidence for a
class: each channel is weighted by how much raising it would raise that class's
score, and the weighted maps are added up. Bright places pushed the network
towards the class; dark ones did not. Deep layers give the clearest pictures.
""",
    "compare": """
**Compare** puts two images side by side on the same channel. The difference
map is the first image's map minus the second's: red where the first image
excites the channel more, blue where the second one does.
""",
}


def explain(*topics: str, title: str = "What am I looking at?") -> None:
    """A collapsible explanation in plain words, for people who do not program."""
    with st.expander(title, icon=":material/help:"):
        st.markdown("\n".join(EXPLANATIONS[topic] for topic in topics))


_MAP_VIEW_JS = (Path(__file__).parent / "map_view.js").read_text(encoding="utf-8")
_MAP_VIEW_CSS = (Path(__file__).parent / "map_view.css").read_text(encoding="utf-8")


def map_view_ui(data: dict, key: str) -> None:
    """Show feature maps from :func:`cnnlens.figures.map_view_data`, values on hover.

    A custom component (``map_view.js``) that keeps its element across reruns and
    only swaps the picture, so a new image paints at once; its element is styled
    ``.st-key-<key>``.
    """
    # Registering the same definition again is free and silent; doing it here
    # registers it with whichever runtime runs this script (AppTest makes several).
    component = st.components.v2.component(
        "cnnlens_map_view", js=_MAP_VIEW_JS, css=_MAP_VIEW_CSS, isolate_styles=False
    )
    component(data=data, key=key)


def show_notices(notices: list[str]) -> None:
    """Show each notice (a URL value that fell back to its default) as a warning."""
    for notice in notices:
        st.warning(notice, icon=":material/link_off:")


def input_pixels(view: state.View, ctx: Context) -> tuple[np.ndarray, str]:
    """The pixels of the current input (upload or dataset image) and a caption.

    For a page that shows the input: the sidebar then leaves it out. Shown twice, it
    delayed every new image's paint by about 0.1 s in the browser, and a page may
    change it in a fragment, whose reruns do not redraw the sidebar.

    Raises:
        ValueError: for an upload that is not a usable image; the caller shows it.
    """
    ctx.shows_input = True
    return _input_pixels(view, ctx)


def _input_pixels(view: state.View, ctx: Context) -> tuple[np.ndarray, str]:
    if view.upload is not None:
        name, data = view.upload
        return cache.get_uploaded_image(data, name, ctx.info.spec.mode), f"your image {name}"
    pixels = cache.get_dataset_image(ctx.dataset, view.split, view.image, ctx.info.spec.mode)
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

    The dataset and the model are loaded when a page first needs them, so a page
    paints its title before pandas or torch have even been imported. The view
    itself is read with :func:`state.current_view` after the page's own widgets:
    a widget's new value is visible only once the widget has been drawn in this run.
    """

    def __init__(self, root: str, choice: state.ModelChoice) -> None:
        self.root = root
        self.choice = choice
        self.model_name = choice.name
        self.info: ModelInfo = model_info(choice.name)
        self.shows_input = False  # set when the page shows the input image itself

    @functools.cached_property
    def dataset(self) -> Dataset:
        """The indexed dataset; a folder that is not one stops the page with an error."""
        try:
            dataset = cache.get_dataset(self.root)
        except ValueError as error:
            st.error(
                f"The dataset folder cannot be used: {error} Choose another dataset in the "
                "sidebar.",
                icon=":material/error:",
            )
            st.stop()
        show_notices(state.init_state(dataset))
        return dataset

    @functools.cached_property
    def loaded(self) -> LoadedModel:
        """The model with its weights; weights that fail fall back to the default ones."""
        try:
            return cache.get_model(self.choice)
        except ValueError as error:
            if self.choice.weights == state.DEFAULT_WEIGHTS and self.choice.device == "auto":
                raise
            st.session_state[_NOTICES_KEY] = [
                f"{error} Showing {self.info.title} with its default weights on the default "
                "device instead."
            ]
            st.session_state[state.WEIGHTS_KEY] = state.DEFAULT_WEIGHTS
            st.session_state[state.DEVICE_KEY] = "auto"
            st.rerun()

    @property
    def spec(self) -> InputSpec:
        """What the loaded model takes (its weights may change the registry's default)."""
        return self.loaded.spec


_CONTEXT_KEY = "_context"
_NOTICES_KEY = "_carried_notices"  # shown in the next run, after a fallback and rerun


def build_context() -> Context:
    """Record this run's dataset folder and model for the pages; called by ``dashboard.py``."""
    show_notices(st.session_state.pop(_NOTICES_KEY, []))
    context = Context(st.session_state[state.DATA_KEY], state.model_choice())
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
    names = cache.get_layer_names(ctx.choice)
    ctx.loaded  # noqa: B018  (a failing weights file falls back before the layers settle)
    show_notices(state.init_layers(names, cache.get_default_layers(ctx.choice)))
    return ctx, names


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
        cache.get_dataset(str(folder))  # refuses a folder that is not a dataset, with the reason
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
        cache.get_model(choice)
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


def controls_ui() -> None:
    """The sidebar's dataset, model, weights and device pickers; drawn before the page.

    Nothing here imports torch or pandas: the first page paints without them.
    Errors (a folder that is not a dataset, a weights file for another network)
    are shown here and the previous choice stays.
    """
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

    st.selectbox(
        "Model",
        list(MODELS),
        format_func=_model_title,
        key=state.MODEL_KEY,
        on_change=lambda: st.session_state.update({state.WEIGHTS_KEY: state.DEFAULT_WEIGHTS}),
        persist_state="session",
        help="The demo CNN, or any torchvision classification network.",
    )
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
    if _HAS_NVIDIA:
        st.segmented_control(
            "Device",
            ["auto", "cpu", "cuda"],
            required=True,
            key=state.DEVICE_KEY,
            persist_state="session",
        )
        st.toggle("bfloat16 on the GPU", key=state.BF16_KEY, persist_state="session")


# Whether to offer a GPU: the NVIDIA driver is there (asking torch would import it).
_HAS_NVIDIA = Path("/proc/driver/nvidia/version").exists()


def download_ui(ctx: Context) -> None:
    """Offer the pretrained weights when they are missing here but the server is online."""
    from cnnlens.models import download_weights, weights_status

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
    st.cache_resource.clear()
    st.cache_data.clear()
    st.rerun()


def sidebar_ui(ctx: Context) -> None:
    """The model's note, the dataset and the current input (drawn after the page)."""
    if "loaded" in ctx.__dict__:  # only when the page loaded the model
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
    try:
        pixels, caption = _input_pixels(state.current_view(ctx.dataset), ctx)
    except ValueError as error:
        st.error(str(error))
        return
    st.caption("Current image")
    st.image(pixels, caption=caption, width=112)


def recipe_of(view: state.View, layer: str, channel: int, norm: str, ctx: Context) -> Recipe | None:
    """The recipe of the current view, or ``None`` for an uploaded image (it cannot travel)."""
    from cnnlens.export import Recipe

    if view.upload is not None:
        return None
    return Recipe(
        dataset=ctx.root,
        split=view.split,
        seed=view.seed,
        image=view.image,
        model=ctx.model_name,
        weights_id=ctx.loaded.weights_id,
        layers=view.layers,
        layer=layer,
        channel=int(channel),
        norm=norm,
    )


def _open_recipe() -> None:
    """Callback of the recipe uploader: check every part, then switch the whole view."""
    from cnnlens.export import Recipe
    from cnnlens.sources import resolve_under_roots

    uploaded = st.session_state.get("recipe_widget")
    if uploaded is None:
        return
    try:
        recipe = Recipe.from_json(uploaded.getvalue())
        model_info(recipe.model)
        root = recipe.dataset
        if root != state.default_dataset():
            root = str(resolve_under_roots(root))
        cache.get_dataset(root).path_of(recipe.image, recipe.split)
        choice = state.ModelChoice(recipe.model, state.DEFAULT_WEIGHTS, "auto", False)
        names = cache.get_layer_names(choice)
        unknown = [name for name in recipe.layers if name not in names]
        if unknown:
            raise ValueError(f"{recipe.model} has no layer {', '.join(unknown)}.")
    except ValueError as error:
        st.session_state["recipe_error"] = f"{uploaded.name}: {error}"
        return
    state.choose_dataset(root)
    st.session_state.update(
        {
            state.MODEL_KEY: recipe.model,
            state.WEIGHTS_KEY: state.DEFAULT_WEIGHTS,
            state.SPLIT_KEY: recipe.split,
            state.SEED_KEY: recipe.seed,
            state.IMAGE_KEY: recipe.image,
            state.LAYERS_KEY: list(recipe.layers),
            state.LAYER_KEY: recipe.layer,
            state.CHANNEL_KEY: recipe.channel,
            state.NORM_KEY: recipe.norm,
        }
    )
    if cache.get_model(choice).weights_id != recipe.weights_id:
        st.session_state[_NOTICES_KEY] = [
            f"The recipe was made with other weights (id {recipe.weights_id}); the maps show "
            f"{recipe.model} with its default weights. Load the same weights file in the "
            "sidebar to see the same maps."
        ]


def recipe_ui() -> None:
    """An uploader that reopens a saved recipe's view."""
    st.file_uploader(
        "Open a recipe (.json)",
        type=["json"],
        key="recipe_widget",
        on_change=_open_recipe,
        help="A recipe saved from this page reopens its dataset, image, model and layers.",
    )
    error = st.session_state.pop("recipe_error", None)
    if error:
        st.error(error, icon=":material/error:")
