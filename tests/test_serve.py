"""Streamlit's private internals (cnnlens.ui.streamlit_internals), each both ways.

Inside the tested range each trick takes effect; with the version set outside it,
nothing of Streamlit is touched. The start-up checks run in a fresh interpreter, since
they work on the first import of streamlit. The browser tests (tests/test_browser.py,
tests/test_sessions.py) serve the dashboard through the launcher.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from cnnlens.ui import streamlit_internals

REPO = Path(__file__).resolve().parent.parent
INSIDE = next(iter(streamlit_internals.TESTED)).version  # "1.67.0" for "~=1.67.0"
OUTSIDE = "import cnnlens.ui.streamlit_internals as si\nsi._streamlit_version = lambda: '1.99.0'\n"

_TEMPLATE = """
import json
import plotly.io as pio
print(json.dumps({"default": pio.templates.default,
                  "template": pio.templates["streamlit"].to_plotly_json()}))
"""

_LEAN = (
    "import sys\n"
    "from cnnlens.ui.streamlit_internals import import_streamlit_lean, _no_component_packages\n"
    "import_streamlit_lean()\n"
    "print('streamlit' in sys.modules, 'plotly' in sys.modules)\n"
    "from streamlit.components.v2 import manifest_scanner\n"
    "scan = manifest_scanner.scan_component_manifests\n"
    "print(scan is _no_component_packages)\n"
    "import plotly.io as pio\n"
    "print('streamlit' in pio.templates)\n"
)


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_tested_range_holds_the_locked_and_the_installed_streamlit() -> None:
    lock = (REPO / "requirements.lock").read_text(encoding="utf-8")
    pinned = re.search(r"^streamlit==(\S+)", lock, re.MULTILINE)
    assert pinned is not None, "requirements.lock pins no streamlit"
    assert pinned[1] in streamlit_internals.TESTED
    assert metadata.version("streamlit") in streamlit_internals.TESTED
    assert streamlit_internals.applies()
    assert "1.99.0" not in streamlit_internals.TESTED


def test_lean_import_skips_the_component_search_and_the_plotly_template() -> None:
    assert run_python(_LEAN).splitlines() == ["True False", "True", "False"]


def test_outside_the_range_the_import_is_streamlits_own() -> None:
    # Nothing is imported early, the search stays, and the template is built on import.
    assert run_python(OUTSIDE + _LEAN).splitlines() == ["False False", "False", "True"]


def test_the_plotly_template_put_off_is_streamlits_own() -> None:
    own = json.loads(run_python("import streamlit\n" + _TEMPLATE))
    later = json.loads(
        run_python(
            "from cnnlens.ui import streamlit_internals as si\n"
            "si.import_streamlit_lean()\n"
            "si.restore_plotly_theme()\n" + _TEMPLATE
        )
    )
    assert own["default"] == later["default"] == "streamlit"
    assert later["template"] == own["template"]
    assert own["template"]["layout"]["colorway"]  # a template with content, not an empty one


def test_outside_the_range_the_template_is_not_built_by_cnnlens() -> None:
    out = run_python(
        "from cnnlens.ui import streamlit_internals as si\n"
        "si.import_streamlit_lean()\n" + OUTSIDE + "si.restore_plotly_theme()\n"
        "import plotly.io as pio\n"
        "print('streamlit' in pio.templates)\n"
    )
    assert out.splitlines() == ["False"]


@pytest.mark.parametrize(("version", "skipped"), [(INSIDE, True), ("1.99.0", False)])
def test_the_repl_check_is_skipped_only_inside_the_range(monkeypatch, version, skipped) -> None:
    import streamlit.delta_generator as dg

    monkeypatch.setattr(streamlit_internals, "_streamlit_version", lambda: version)
    monkeypatch.setattr(dg, "_use_warning_has_been_displayed", False)
    streamlit_internals.skip_repl_check()
    assert dg._use_warning_has_been_displayed is skipped
