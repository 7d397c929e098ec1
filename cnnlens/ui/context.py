"""This run's dataset folder and model, settled by the entrypoint and read by the pages.

``dashboard.py`` calls :func:`build_context` before the page runs and
:func:`forget_context` after it; a page starts with :func:`page_context`.
"""

from __future__ import annotations

import functools
import runpy
from typing import TYPE_CHECKING

import streamlit as st

from cnnlens.registry import InputSpec, ModelInfo, model_info
from cnnlens.ui import resources, state
from cnnlens.ui.serve import DASHBOARD

if TYPE_CHECKING:
    from cnnlens.data import Dataset
    from cnnlens.models import LoadedModel

__all__ = [
    "Context",
    "build_context",
    "carry_notices",
    "forget_context",
    "page_context",
    "show_notices",
]

_CONTEXT_KEY = "_context"
_NOTICES_KEY = "_carried_notices"  # shown in the next run, after a fallback and rerun


def show_notices(notices: list[str]) -> None:
    """Show each notice (a URL value that fell back to its default) as a warning."""
    for notice in notices:
        st.warning(notice, icon=":material/link_off:")


def carry_notices(notices: list[str]) -> None:
    """Show these notices in the next run: for a callback or a run that ends in a rerun."""
    st.session_state[_NOTICES_KEY] = notices


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
            dataset = resources.get_dataset(self.root)
        except ValueError as error:
            st.error(
                f"The dataset folder cannot be used: {error} Choose another dataset in the "
                "sidebar.",
                icon=":material/error:",
            )
            st.stop()
        show_notices(state.init_state(dataset, self.info.spec.mode))
        return dataset

    @functools.cached_property
    def loaded(self) -> LoadedModel:
        """The model with its weights; weights that fail fall back to the default ones."""
        try:
            return resources.get_model(self.choice)
        except ValueError as error:
            if self.choice.weights == state.DEFAULT_WEIGHTS and self.choice.device == "auto":
                raise
            carry_notices(
                [
                    f"{error} Showing {self.info.title} with its default weights on the "
                    "default device instead."
                ]
            )
            st.session_state[state.WEIGHTS_KEY] = state.DEFAULT_WEIGHTS
            st.session_state[state.DEVICE_KEY] = "auto"
            st.rerun()

    @property
    def model_loaded(self) -> bool:
        """Whether this run has loaded the model (a page that shows no layers does not)."""
        return "loaded" in self.__dict__

    @property
    def spec(self) -> InputSpec:
        """What the loaded model takes (its weights may change the registry's default)."""
        return self.loaded.spec


def build_context() -> Context:
    """Record this run's dataset folder and model for the pages; called by ``dashboard.py``."""
    show_notices(st.session_state.pop(_NOTICES_KEY, []))
    context = Context(st.session_state[state.DATA_KEY], state.model_choice())
    st.session_state[_CONTEXT_KEY] = context
    return context


def forget_context() -> None:
    """Drop this run's context once the page has run; called by ``dashboard.py``."""
    st.session_state.pop(_CONTEXT_KEY, None)


def page_context(with_layers: bool = False) -> tuple[Context, list[str]]:
    """This run's context for a page, and the model's layer names when asked for.

    Asking for layers loads the model (and torch) and settles the layer state.
    """
    ctx: Context | None = st.session_state.get(_CONTEXT_KEY)
    if ctx is None:
        # Streamlit runs a page alone while it treats pages/ as its old multipage folder:
        # in a server until the first st.navigation call (a deep link as its first visit),
        # in AppTest on every run. No setting turns that off, and a rerun would drop the
        # click that started this run: run the entrypoint, which draws this page.
        runpy.run_path(str(DASHBOARD), run_name="__main__")
        st.stop()
    if not with_layers:
        return ctx, []
    names = resources.get_layer_names(ctx.choice)
    ctx.loaded  # noqa: B018  (a failing weights file falls back before the layers settle)
    show_notices(state.init_layers(names, resources.get_default_layers(ctx.choice)))
    return ctx, names
