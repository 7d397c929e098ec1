"""The dashboard's pages: their titles and icons, for navigation, links and switches."""

from __future__ import annotations

import streamlit as st

from cnnlens.ui.serve import PAGES_DIR

__all__ = ["PAGES", "all_pages", "page"]

PAGES = {
    "home": ("Home", ":material/home:"),
    "dataset": ("Dataset", ":material/photo_library:"),
    "layers": ("Layers", ":material/stacks:"),
    "network": ("Network", ":material/account_tree:"),
    "feature_maps": ("Feature maps", ":material/grid_view:"),
    "where_it_looks": ("Where it looks", ":material/center_focus_strong:"),
    "insights": ("Insights", ":material/insights:"),
}
"""Each page's file name under ``pages/`` (without ``.py``): its title and icon."""


def page(name: str) -> st.Page:
    """The st.Page of ``pages/<name>.py``, for navigation, links and switches."""
    title, icon = PAGES[name]
    return st.Page(PAGES_DIR / f"{name}.py", title=title, icon=icon, default=name == "home")


def all_pages() -> list[st.Page]:
    """Every page, in the order the sidebar lists them."""
    return [page(name) for name in PAGES]
