"""Start the dashboard: ``python -m cnnlens.ui.serve [streamlit flags]``, what ``make run`` does.

The same as ``streamlit run dashboard.py [flags]``, with two of Streamlit's start-up
costs left out, which together make the server answer about 0.45 s sooner on a
2-core machine (see the README's Performance section):

- Streamlit looks for component packages by reading the metadata of every installed
  distribution (about 90 in this project's virtualenv, with torch's). cnnlens brings
  its one component inline and uses no installed ones, so the search is skipped.
- ``import streamlit`` builds Streamlit's plotly template, which imports plotly. Every
  figure of cnnlens sets its own template, so this waits for the first page to be
  painted: ``cache.warm_up_in_background`` calls :func:`restore_plotly_theme` then.

If a Streamlit release moves either of these, the launcher leaves it be and the server
starts as ``streamlit run`` would.
"""

from __future__ import annotations

import sys
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard.py"


def import_streamlit_lean() -> None:
    """Import streamlit without its plotly template, and turn off its component search."""
    if "streamlit" not in sys.modules and "plotly" not in sys.modules:
        # Streamlit builds its plotly template only if plotly imports; None in
        # sys.modules makes that import fail for as long as streamlit's takes.
        sys.modules["plotly"] = None  # type: ignore[assignment]
        try:
            import streamlit  # noqa: F401
        finally:
            del sys.modules["plotly"]
    try:
        from streamlit.components.v2 import manifest_scanner
    except ImportError:
        return
    if hasattr(manifest_scanner, "scan_component_manifests"):
        manifest_scanner.scan_component_manifests = _no_component_packages


def restore_plotly_theme() -> None:
    """Build Streamlit's plotly template if :func:`import_streamlit_lean` put it off."""
    import plotly.io as pio

    if "streamlit" in pio.templates:
        return
    from streamlit.elements.lib.streamlit_plotly_theme import configure_streamlit_plotly_theme

    configure_streamlit_plotly_theme()


def _no_component_packages(*args: object, **kwargs: object) -> list:
    """Stands in for Streamlit's search of installed packages: cnnlens uses none."""
    return []


def main(argv: list[str] | None = None) -> None:
    """Run ``streamlit run dashboard.py`` with ``argv`` (default: this command's arguments)."""
    import_streamlit_lean()
    from streamlit.web import cli

    args = sys.argv[1:] if argv is None else argv
    cli.main(args=["run", str(DASHBOARD), *args], prog_name="streamlit")


if __name__ == "__main__":
    main()
