"""The one way the dashboard draws a dataset-wide result (a spec of :mod:`cnnlens.results`).

- Stored (or, for a derived result, its inputs stored): returned at once, nothing drawn.
- Not stored: a start button (``start=``), or it starts by itself.
- Cancelled before: says so, with a button to go on; it never restarts by itself.
- Running: a progress bar saying what is being computed, and a Cancel button.

Cancel reruns the page, which stops the computation at its next progress update
(Streamlit interrupts the run there): the results store keeps nothing unfinished,
except the finished parts of a resumable result. Which results were cancelled is
kept in session state by this module only, under each result's key.
"""

from __future__ import annotations

from typing import TypeVar

import streamlit as st

from cnnlens.results import Spec
from cnnlens.ui.resources import result_store

__all__ = ["result_ui", "was_cancelled"]

T = TypeVar("T")

_CANCELLED = "_cancelled_results"  # session state: the keys of the results cancelled


def _cancel(key: str) -> None:
    """Callback of Cancel: remember the result, so it is not started again by itself."""
    st.session_state[_CANCELLED] = st.session_state.get(_CANCELLED, frozenset()) | {key}


def _go_on(key: str) -> None:
    """Callback of a start or "Go on" button."""
    st.session_state[_CANCELLED] = st.session_state.get(_CANCELLED, frozenset()) - {key}


def was_cancelled(spec: Spec) -> bool:
    """Whether this session cancelled the result's computation (and has not started it again)."""
    return spec.key in st.session_state.get(_CANCELLED, frozenset())


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _asked(spec: Spec, key: str, start: str | None, help: str | None, icon: str) -> bool:
    """Whether to compute now: a click on the start button, or by itself unless cancelled."""
    cancelled = was_cancelled(spec)
    if start is None:
        if not cancelled:
            return True
        st.info(f"{_sentence(spec.title)} was cancelled.", icon=":material/pause_circle:")
        st.button(
            "Go on",
            on_click=_go_on,
            args=(spec.key,),
            icon=":material/play_arrow:",
            key=f"{key}_go",
        )
        return False
    if cancelled:
        st.caption(
            "Stopped; what was finished is kept, and the next start goes on from there."
            if spec.resumable
            else "Stopped; nothing was kept."
        )
    slot = st.empty()
    if not slot.button(
        start, on_click=_go_on, args=(spec.key,), help=help, icon=icon, key=f"{key}_start"
    ):
        return False
    slot.empty()  # the run shows only its progress
    return True


def _compute(spec: Spec[T], key: str) -> T | None:
    """Run the spec with a progress bar and Cancel; ``None`` after a ValueError, shown."""
    bar = st.progress(0.0, text=f"{_sentence(spec.title)}…")
    cancel = st.empty()
    cancel.button(
        "Cancel",
        on_click=_cancel,
        args=(spec.key,),
        icon=":material/cancel:",
        key=f"{key}_cancel",
    )
    current = [spec]  # the spec computing now: a result may need another one first

    def phase(started: Spec) -> None:
        current[0] = started
        bar.progress(0.0, text=f"{_sentence(started.title)}…")

    def progress(done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=current[0].progress_text(done, total))

    try:
        result = result_store().run(spec, on_progress=progress, on_phase=phase)
    except ValueError as error:
        bar.empty()
        cancel.empty()
        st.error(str(error), icon=":material/error:")
        return None
    bar.empty()
    cancel.empty()
    return result


def result_ui(
    spec: Spec[T],
    *,
    key: str,
    start: str | None = None,
    help: str | None = None,
    icon: str = ":material/play_arrow:",
) -> T | None:
    """A dataset-wide result: at once when stored, else computed here with progress and Cancel.

    Args:
        spec: the result.
        key: the prefix of this place's widget keys (unique on the page).
        start: the label of a button that starts the computation; ``None`` starts it
            by itself (unless this session cancelled it).
        help: the start button's tooltip.
        icon: the start button's icon.

    Returns:
        The result, or ``None`` while it is not there (not started, cancelled, or an
        error, which is shown).
    """
    found = result_store().peek(spec)
    if found is not None:
        return found
    if not _asked(spec, key, start, help, icon):
        return None
    return _compute(spec, key)
