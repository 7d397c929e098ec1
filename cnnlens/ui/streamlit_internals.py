"""The only place cnnlens touches Streamlit's private internals, each for a measured gain.

Every trick here applies only when the installed Streamlit is in :data:`TESTED`, the
release series that ``requirements.lock`` pins and the tests run against. With any
other Streamlit, each function leaves Streamlit alone and the dashboard behaves as
Streamlit's public API says, only slower to start. docs/performance.md gives each
trick's gain.

- :func:`skip_repl_check`: before its first element in a process, Streamlit asks
  whether it runs in a Python REPL by walking the stack with ``inspect.stack()``,
  which reads the source of every frame. A server never is one.
- :func:`import_streamlit_lean`: skip the search for component packages (the metadata
  of every installed distribution; cnnlens brings its one component inline), and put
  off building Streamlit's plotly template (which imports plotly) until
  :func:`restore_plotly_theme`, after the first page is painted.
"""

from __future__ import annotations

import functools
import sys
from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import Version

TESTED = SpecifierSet("~=1.67.0")
"""The Streamlit releases these tricks are tested with: the series requirements.lock pins."""


@functools.cache
def _streamlit_version() -> str:
    # From the package metadata: importing streamlit here would build the plotly template.
    # Read once: dashboard.py asks on every rerun, and the read costs about 0.4 ms.
    return metadata.version("streamlit")


def applies() -> bool:
    """Whether the installed Streamlit is one the tricks are tested with (:data:`TESTED`)."""
    return Version(_streamlit_version()) in TESTED


def skip_repl_check() -> None:
    """Tell Streamlit its "not run with streamlit run" warning was shown: no stack walk."""
    if not applies():
        return
    import streamlit.delta_generator

    streamlit.delta_generator._use_warning_has_been_displayed = True


def import_streamlit_lean() -> None:
    """Import streamlit without its plotly template, and turn off its component search.

    Call it before anything imports streamlit: in the launcher, before the server starts.
    """
    if not applies():
        return
    if "streamlit" not in sys.modules and "plotly" not in sys.modules:
        # Streamlit builds its plotly template only if plotly imports; None in
        # sys.modules makes that import fail for as long as streamlit's takes.
        sys.modules["plotly"] = None  # type: ignore[assignment]
        try:
            import streamlit  # noqa: F401
        finally:
            del sys.modules["plotly"]
    from streamlit.components.v2 import manifest_scanner

    manifest_scanner.scan_component_manifests = _no_component_packages


def restore_plotly_theme() -> None:
    """Build Streamlit's plotly template if :func:`import_streamlit_lean` put it off."""
    if not applies():
        return
    import plotly.io as pio

    if "streamlit" in pio.templates:
        return
    from streamlit.elements.lib.streamlit_plotly_theme import configure_streamlit_plotly_theme

    configure_streamlit_plotly_theme()


def _no_component_packages(*args: object, **kwargs: object) -> list:
    """Stands in for Streamlit's search of installed packages: cnnlens uses none."""
    return []
