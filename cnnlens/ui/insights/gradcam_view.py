"""Insights, Grad-CAM: where the chosen layer holds the evidence for a class, over the
current image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

from cnnlens import figures
from cnnlens.ui.caching import in_memory
from cnnlens.ui.image_input import input_image
from cnnlens.ui.insights.focus import PLAIN, Focus
from cnnlens.ui.plain_words import plain_words
from cnnlens.ui.resources import get_model
from cnnlens.ui.state import ModelChoice

__all__ = ["GradCamOverlay", "get_grad_cam", "gradcam_section"]


@dataclass(frozen=True)
class GradCamOverlay:
    """Grad-CAM of one image, ready to lay over it."""

    pixels: np.ndarray  # the image as the network sees it, uint8
    cam: np.ndarray  # H×W float32 at the input's size
    class_index: int

    @property
    def nbytes(self) -> int:
        """The memory its arrays take."""
        return self.pixels.nbytes + self.cam.nbytes


@in_memory(64)
def get_grad_cam(
    choice: ModelChoice, pixels: np.ndarray, layer: str, class_index: int | None
) -> GradCamOverlay:
    """Grad-CAM for one image (uint8 pixels) and class; ``None``: the predicted class.

    Raises:
        ValueError: for a layer without maps or a model without class scores.
    """
    from cnnlens.gradcam import grad_cam
    from cnnlens.preprocess import to_uint8_image

    loaded = get_model(choice)
    if loaded.classes is None:
        raise ValueError(f"{loaded.name} has no classes, so there is no decision to explain.")
    batch = loaded.batch(pixels)
    if class_index is None:
        class_index = int(np.argmax(loaded.probabilities(batch)[0]))
    cam = grad_cam(loaded, batch, layer, class_index)
    return GradCamOverlay(to_uint8_image(batch, loaded.spec), cam, class_index)


def _class_ui(classes: tuple[str, ...]) -> int | None:
    """The class to explain (``None``: the network's answer) and the overlay's opacity."""
    choices = [None, *range(len(classes))]
    if st.session_state.get("gradcam_class") not in choices:
        st.session_state["gradcam_class"] = None  # a class of the previous model
    return st.selectbox(
        "Class to explain",
        choices,
        format_func=lambda i: "The network's answer" if i is None else classes[i],
        key="gradcam_class",
    )


def gradcam_section(focus: Focus) -> None:
    """Where the layer holds the evidence for a class, over the current image."""
    ctx, layer = focus.ctx, focus.layer
    classes = ctx.loaded.classes
    if classes is None:
        st.info(f"{ctx.info.title} has no classes, so there is no decision to explain.")
        return
    try:
        pixels, caption = input_image(focus.view, ctx)
    except ValueError as error:
        st.error(str(error))
        return
    left, right = st.columns([1, 2])
    with left:
        st.image(pixels, caption=caption, width="stretch")
        class_index = _class_ui(classes)
        opacity = st.slider(
            "Overlay opacity",
            0.0,
            1.0,
            0.8,
            0.05,
            key="gradcam_opacity",
            help="How opaque the strongest evidence is; where there is none, the image "
            "always shows through.",
        )
    try:
        with st.spinner("Tracing the decision back…"):
            overlay = get_grad_cam(ctx.choice, pixels, layer, class_index)
    except ValueError as error:
        st.error(str(error), icon=":material/error:")
        return
    with right:
        st.plotly_chart(
            figures.overlay_figure(
                overlay.pixels,
                overlay.cam,
                opacity=opacity,
                title=f"Where {layer} holds the evidence for {classes[overlay.class_index]}",
            ),
            config=PLAIN,
            key="gradcam",
            theme=None,
        )
        st.caption(f"Evidence: {figures.map_colours(overlay.cam).overlay_words}.")
    plain_words("gradcam")
