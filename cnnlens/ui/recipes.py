"""Recipes: a view saved as JSON (dataset, image, model, weights id, layers) and reopened."""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from cnnlens.registry import model_info
from cnnlens.ui import resources, state
from cnnlens.ui.context import carry_notices

if TYPE_CHECKING:
    from cnnlens.export import Recipe
    from cnnlens.ui.context import Context

__all__ = ["recipe_of", "recipe_ui"]


def recipe_of(view: state.View, layer: str, channel: int, norm: str, ctx: Context) -> Recipe | None:
    """The recipe of the current view (a drawing included), or ``None`` for an uploaded
    image (it cannot travel)."""
    from cnnlens.export import Recipe

    if view.upload is not None and view.drawing is None:
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
        drawing=view.drawing,
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
        resources.get_dataset(root).path_of(recipe.image, recipe.split)
        choice = state.ModelChoice(recipe.model, state.DEFAULT_WEIGHTS, "auto", False)
        names = resources.get_layer_names(choice)
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
            state.INPUT_KEY: "image",
        }
    )
    if recipe.drawing is not None:
        state.set_drawing(recipe.drawing, from_pad=False)
    if resources.get_model(choice).weights_id != recipe.weights_id:
        carry_notices(
            [
                f"The recipe was made with other weights (id {recipe.weights_id}); the maps "
                f"show {recipe.model} with its default weights. Load the same weights file in "
                "the sidebar to see the same maps."
            ]
        )


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
