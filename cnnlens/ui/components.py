"""cnnlens's own components (Streamlit components v2): each is a ``<name>.js``, and a
``<name>.css`` when it has one, beside this file, drawn in the page itself (no iframe)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import streamlit as st

__all__ = ["own_component"]


@cache
def _source(file: str) -> str | None:
    """A component's file, read once per process; ``None`` when it has none."""
    path = Path(__file__).parent / file
    return path.read_text(encoding="utf-8") if path.exists() else None


def own_component(name: str) -> Callable:
    """The component ``cnnlens_<name>``, from ``<name>.js`` and ``<name>.css`` here.

    Call it where it is drawn: registering the same definition again is free and silent,
    and registers it with whichever runtime runs this script (AppTest makes several).
    """
    return st.components.v2.component(
        f"cnnlens_{name}",
        js=_source(f"{name}.js"),
        css=_source(f"{name}.css"),
        isolate_styles=False,
    )
