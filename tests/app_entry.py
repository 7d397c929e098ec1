"""The dashboard as AppTest runs it.

AppTest re-detects Streamlit's old pages/-folder mode on every run when a
``pages/`` folder sits beside the script, and then runs a page without the
entrypoint. Running ``dashboard.py`` from here (no ``pages/`` beside this file)
keeps every run going through the entrypoint, as the real server does.
"""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parent.parent / "dashboard.py"), run_name="__main__")
