"""What every Insights section looks at, and the pieces they share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from cnnlens.insights import (
    LayerStats,
    LayerStatsSpec,
    Predictions,
    PredictionsSpec,
    labels_name_classes,
)
from cnnlens.ui import state
from cnnlens.ui.bars import bars_html
from cnnlens.ui.context import Context
from cnnlens.ui.resources import pass_options
from cnnlens.ui.runner import result_ui

__all__ = ["PLAIN", "Focus", "channel_ui", "scores_chart", "scores_differ", "stats_spec"]

PLAIN = {"displayModeBar": False}  # plotly's config for charts without a toolbar


@dataclass(frozen=True)
class Focus:
    """What every section looks at: this run's context, the view and the chosen layer."""

    ctx: Context
    view: state.View
    layer: str

    @property
    def frame(self) -> pd.DataFrame:
        """The dataset's table of the view's split (train or test)."""
        dataset = self.ctx.dataset
        return dataset.index if self.view.split == "train" else dataset.test_index

    def stats_spec(self) -> LayerStatsSpec:
        """The layer's statistics over the split (see :func:`stats_spec`)."""
        return stats_spec(self.ctx, self.view, self.layer)

    def predictions_spec(self) -> PredictionsSpec:
        """The network's answer for every image of the split."""
        return self.stats_spec().predictions

    def stats(self) -> LayerStats | None:
        """The layer's statistics: stored, or computed now with progress; ``None`` meanwhile."""
        return result_ui(self.stats_spec(), key="insights_stats")

    def predictions(self) -> Predictions | None:
        """The network's answers: stored, or computed now with progress; ``None`` meanwhile."""
        return result_ui(self.predictions_spec(), key="insights_predictions")


def stats_spec(ctx: Context, view: state.View, layer: str) -> LayerStatsSpec:
    """A layer's statistics over the view's split, as Insights and the channel card ask
    for them: a pass still to make summarises every chosen layer and, when the labels
    name the model's classes, classifies every image too, so one pass answers all."""
    loaded = ctx.loaded
    return LayerStatsSpec(
        loaded,
        ctx.dataset,
        layer,
        split=view.split,
        along=tuple(view.layers),
        with_predictions=labels_name_classes(ctx.dataset, loaded.classes, view.split),
        **pass_options(loaded),
    )


def channel_ui(channels: int, layer: str) -> int:
    """The channel to show, the same one as on the Feature maps page."""
    shown = st.session_state.get(state.CHANNEL_KEY, 0)
    return st.number_input(
        "Channel",
        min_value=0,
        max_value=channels - 1,
        step=1,
        help=f"{layer} has {channels} channels, 0 to {channels - 1}.",
        **state.shared_widget(
            state.CHANNEL_KEY, "insights_channel", shown if shown < channels else 0
        ),
    )


SAME_SCORES = 0.05
"""Scores within this share of the highest one look equal: a chart of them says nothing."""


def scores_differ(scores: np.ndarray) -> bool:
    """Whether the highest and lowest score differ by more than :data:`SAME_SCORES`."""
    if len(scores) < 2:
        return False
    return float(scores.max() - scores.min()) > SAME_SCORES * float(np.abs(scores).max())


def scores_chart(rows: pd.DataFrame, title: str, by: str, key: str) -> None:
    """The example images' scores as bars, or one line when they hardly differ."""
    scores = rows["score"].to_numpy()
    if not scores_differ(scores):
        if len(scores):
            st.caption(
                f"Their {by} activations hardly differ ({scores.min():.3g} to "
                f"{scores.max():.3g}): each excites the channel about as much."
            )
        return
    # HTML bars, not plotly: the page's first chart shows before plotly's code has loaded.
    with st.container(key=key):
        st.html(
            bars_html(list(rows["filename"]), rows["score"].to_numpy(), title, f"{by} activation")
        )
