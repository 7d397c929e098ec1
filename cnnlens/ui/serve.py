"""Start the dashboard: ``cnnlens serve [streamlit flags]``, what ``make run`` does.

The same as ``streamlit run dashboard.py [flags]``, with the dashboard's settings
wherever it runs, and two of Streamlit's start-up costs left out when the installed
Streamlit is one they are tested with (:mod:`cnnlens.ui.streamlit_internals`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

_SHIPPED_APP = Path(__file__).resolve().parents[1] / "app"
# An installed wheel carries the dashboard's files in cnnlens/app/ (see pyproject.toml);
# a checkout or an editable install serves them from the repository root.
APP_DIR = (
    _SHIPPED_APP
    if (_SHIPPED_APP / "dashboard.py").is_file()
    else Path(__file__).resolve().parents[2]
)
DASHBOARD = APP_DIR / "dashboard.py"
PAGES_DIR = APP_DIR / "pages"
CONFIG = APP_DIR / ".streamlit" / "config.toml"


def config_flags(config: Path, user_args: Sequence[str]) -> list[str]:
    """The settings of a Streamlit config.toml as flags, leaving out those the user set.

    Streamlit reads ``.streamlit/config.toml`` from the working directory only, which
    an installed cnnlens run from elsewhere does not have; as flags, the dashboard's
    settings (no usage statistics, ``localhost``) hold wherever it runs.

    Args:
        config: the config.toml file.
        user_args: the user's Streamlit flags, ``--section.key value`` or
            ``--section.key=value``; a setting named there is left to the user.

    Returns:
        ``--section.key=value`` flags, in the file's order.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib

    given = {arg[2:].split("=", 1)[0] for arg in user_args if arg.startswith("--")}
    settings = _flat(tomllib.loads(config.read_text(encoding="utf-8")))
    return [f"--{name}={value}" for name, value in settings.items() if name not in given]


def _flat(table: dict, prefix: str = "") -> dict[str, str]:
    """``{"server": {"port": 1}}`` -> ``{"server.port": "1"}``; booleans as ``true``/``false``."""
    flat: dict[str, str] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return flat


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``streamlit run dashboard.py`` with the dashboard's settings and ``argv``.

    Args:
        argv: Streamlit flags such as ``--server.port 8601``, which win over the
            dashboard's config.toml (default: this command's arguments).
    """
    from cnnlens.ui.streamlit_internals import import_streamlit_lean

    import_streamlit_lean()
    from streamlit.web import cli

    args = sys.argv[1:] if argv is None else list(argv)
    flags = [*config_flags(CONFIG, args), *args]
    cli.main(args=["run", str(DASHBOARD), *flags], prog_name="streamlit")


if __name__ == "__main__":
    main()
