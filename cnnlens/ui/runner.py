"""The one way the dashboard draws a dataset-wide result (a spec of :mod:`cnnlens.results`).

- Stored (or, for a derived result, its inputs stored): returned at once, nothing drawn.
- Not stored: a start button (``start=``), or it starts by itself.
- Cancelled before: says so, with a button to go on; it never restarts by itself.
- Running: a progress bar saying what is being computed, and a Cancel button.

A result runs in the script, or, with ``in_background=True``, in a thread of its own.

- In the script, Cancel reruns the page, which stops the computation at its next
  progress update (Streamlit interrupts the run there).
- In the background (the channel atlas), the page stays usable while it runs: a
  small fragment polls the thread every :data:`POLL_SECONDS` (progress, Cancel and
  what is done so far), a click elsewhere leaves the computation going, and the
  page is drawn again once it ends. Cancel asks the thread to stop at its next step.
  Call it from inside a fragment (``@st.fragment``): its start button then reruns
  that fragment only, where a button inside a running fragment would wait for its
  end (Streamlit does not interrupt a fragment for its own widgets).

Either way the results store keeps nothing unfinished, except the finished parts of
a resumable result. Which results were cancelled, and which run in the background,
is kept in session state by this module only, under each result's key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import streamlit as st

from cnnlens.results import Cancelled, Spec
from cnnlens.store import ResultStore
from cnnlens.ui.resources import result_store

__all__ = ["POLL_SECONDS", "result_ui", "running", "was_cancelled"]

T = TypeVar("T")

POLL_SECONDS = 1.0
"""How often the page asks a result running in the background how far it is."""

_CANCELLED = "_cancelled_results"  # session state: the keys of the results cancelled
_BACKGROUND = "_background_results"  # session state: {key: _Job} running in a thread
_THREAD_PREFIX = "cnnlens-result-"


class _Job(Generic[T]):
    """A result computing in a thread of its own, which never calls Streamlit: the
    script reads its progress and its end, and asks it to stop."""

    def __init__(self, spec: Spec[T], store: ResultStore) -> None:
        self.spec = spec
        self.done, self.total = 0, 0
        self.text = f"{_sentence(spec.title)}…"
        self.error: Exception | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self._work, args=(store,), name=_THREAD_PREFIX + spec.key, daemon=True
        )
        self.thread.start()

    def _work(self, store: ResultStore) -> None:
        current = [self.spec]  # the spec computing now: a result may need another one first

        def phase(started: Spec) -> None:
            current[0] = started
            self.done, self.text = 0, f"{_sentence(started.title)}…"

        def progress(done: int, total: int) -> None:
            self.done, self.total = done, total
            self.text = current[0].progress_text(done, total)

        try:
            store.run(self.spec, on_progress=progress, should_stop=self.stop.is_set, on_phase=phase)
        except Cancelled:
            pass  # asked for; the store kept the finished parts
        except Exception as error:  # handed to the script, which shows or raises it
            self.error = error

    @property
    def running(self) -> bool:
        """Whether the thread still computes."""
        return self.thread.is_alive()

    @property
    def fraction(self) -> float:
        """How far it is, 0 to 1."""
        return min(self.done / max(self.total, 1), 1.0)


def _background() -> dict[str, _Job]:
    """This session's results running in the background, by key; ended ones without an
    error are forgotten."""
    jobs = st.session_state.setdefault(_BACKGROUND, {})
    for key in [key for key, job in jobs.items() if not job.running and job.error is None]:
        del jobs[key]
    return jobs


def _cancel(key: str) -> None:
    """Callback of Cancel: remember the result, so it is not started again by itself, and
    stop its thread if it runs in the background."""
    st.session_state[_CANCELLED] = st.session_state.get(_CANCELLED, frozenset()) | {key}
    job = st.session_state.get(_BACKGROUND, {}).pop(key, None)
    if job is not None:
        job.stop.set()


def _go_on(key: str) -> None:
    """Callback of a start or "Go on" button."""
    st.session_state[_CANCELLED] = st.session_state.get(_CANCELLED, frozenset()) - {key}


def was_cancelled(spec: Spec) -> bool:
    """Whether this session cancelled the result's computation (and has not started it again)."""
    return spec.key in st.session_state.get(_CANCELLED, frozenset())


def running(spec: Spec) -> bool:
    """Whether this session computes the result in the background now."""
    job = _background().get(spec.key)
    return job is not None and job.running


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


@st.fragment(run_every=POLL_SECONDS)
def _watch_ui(key: str, widget_key: str, so_far: Callable[[], None] | None) -> None:
    """A result running in the background: its progress, Cancel, and what is done so far.

    A fragment that reruns on its own every :data:`POLL_SECONDS`; once the
    computation has ended (or was cancelled), the whole page is drawn again, which
    shows the result and ends this fragment and its timer.
    """
    job = _background().get(key)
    if job is None or not job.running:
        st.rerun()
    st.progress(job.fraction, text=job.text)
    st.button(
        "Cancel",
        on_click=_cancel,
        args=(key,),
        icon=":material/cancel:",
        key=f"{widget_key}_cancel",
    )
    if so_far is not None:
        so_far()


def _run_in_background(
    spec: Spec[T],
    key: str,
    asked: Callable[[], bool],
    so_far: Callable[[], None] | None,
) -> None:
    """Start or follow the result's computation in a thread of its own; show how it ended.

    Raises:
        Exception: what the computation raised, other than a ValueError (which is shown).
    """
    jobs = _background()
    job = jobs.get(spec.key)
    if job is not None and not job.running:  # it ended with an error, or just now
        del jobs[spec.key]
        if job.error is None:
            st.rerun()  # it finished after the store was asked: draw the page with it
        if not isinstance(job.error, ValueError):
            raise job.error
        st.error(str(job.error), icon=":material/error:")
        return  # not started again in this run: a result that starts by itself would loop
    if job is None:
        if not asked():
            return
        job = jobs[spec.key] = _Job(spec, result_store())
    _watch_ui(spec.key, key, so_far)


def result_ui(
    spec: Spec[T],
    *,
    key: str,
    start: str | None = None,
    help: str | None = None,
    icon: str = ":material/play_arrow:",
    in_background: bool = False,
    so_far: Callable[[], None] | None = None,
) -> T | None:
    """A dataset-wide result: at once when stored, else computed with progress and Cancel.

    Args:
        spec: the result.
        key: the prefix of this place's widget keys (unique on the page).
        start: the label of a button that starts the computation; ``None`` starts it
            by itself (unless this session cancelled it).
        help: the start button's tooltip.
        icon: the start button's icon.
        in_background: compute in a thread of its own while the page stays usable
            (see the module's notes); call this from inside a fragment.
        so_far: with ``in_background``, draws what is done so far (a resumable
            result's stored parts) each time the page asks how far it is.

    Returns:
        The result, or ``None`` while it is not there (not started, running in the
        background, cancelled, or an error, which is shown).

    Raises:
        Exception: with ``in_background``, what the computation raised other than a
            ValueError; computed in the script, it passes through as it is raised.
    """
    found = result_store().peek(spec)
    if found is not None:
        return found
    if in_background:
        _run_in_background(spec, key, lambda: _asked(spec, key, start, help, icon), so_far)
        return None
    if not _asked(spec, key, start, help, icon):
        return None
    return _compute(spec, key)
