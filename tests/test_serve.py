"""The launcher behind ``make run``: what it leaves out of Streamlit's start, and what it puts back.

Each check runs in a fresh interpreter, since the launcher works on the first import of
streamlit. The browser tests (tests/test_browser.py, tests/test_sessions.py) serve the
dashboard through it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_TEMPLATE = """
import json
import plotly.io as pio
print(json.dumps({"default": pio.templates.default,
                  "template": pio.templates["streamlit"].to_plotly_json()}))
"""


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_lean_import_skips_the_component_search_and_the_plotly_template() -> None:
    out = run_python(
        "import sys\n"
        "from cnnlens.ui import serve\n"
        "serve.import_streamlit_lean()\n"
        "from streamlit.components.v2 import manifest_scanner\n"
        "scan = manifest_scanner.scan_component_manifests\n"
        "print('plotly' in sys.modules, scan is serve._no_component_packages, scan())\n"
        "import plotly.io as pio\n"
        "print('streamlit' in pio.templates, pio.templates.default)\n"
    )
    assert out.splitlines() == ["False True []", "False plotly"]


def test_the_plotly_template_put_off_is_streamlits_own() -> None:
    own = json.loads(run_python("import streamlit\n" + _TEMPLATE))
    later = json.loads(
        run_python(
            "from cnnlens.ui import serve\n"
            "serve.import_streamlit_lean()\n"
            "serve.restore_plotly_theme()\n" + _TEMPLATE
        )
    )
    assert own["default"] == later["default"] == "streamlit"
    assert later["template"] == own["template"]
    assert own["template"]["layout"]["colorway"]  # a template with content, not an empty one
