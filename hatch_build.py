"""Build hook: the package's dependencies are the lower bounds in requirements.txt.

requirements.txt stays their one home, read by pip (``pip install -r``) and by
this hook when hatchling builds the wheel.
"""

from __future__ import annotations

from pathlib import Path

from hatchling.metadata.plugin.interface import MetadataHookInterface


class RequirementsHook(MetadataHookInterface):
    """Fills ``[project] dependencies`` from requirements.txt."""

    def update(self, metadata: dict) -> None:
        """Set the dependencies: each requirement line, without comments or blank lines."""
        lines = (Path(self.root) / "requirements.txt").read_text().splitlines()
        requirements = [line.split("#", 1)[0].strip() for line in lines]
        metadata["dependencies"] = [line for line in requirements if line]
