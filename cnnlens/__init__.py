"""cnnlens: see what a convolutional network sees.

The core is plain Python and torch; the dashboard (``dashboard.py``, ``pages/``
and ``cnnlens.ui``) is the only part that imports streamlit. Names are imported
on first use, so ``import cnnlens.data`` does not pay for importing torch: the
dashboard paints its first page before torch has loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "MAX_IMAGE_PIXELS": "cnnlens.data",
    "Dataset": "cnnlens.data",
    "Problem": "cnnlens.data",
    "load_dataset": "cnnlens.data",
    "open_image": "cnnlens.data",
    "to_mode": "cnnlens.data",
    "Extractor": "cnnlens.lens",
    "Lens": "cnnlens.lens",
    "build_lens": "cnnlens.lens",
    "layer_names": "cnnlens.lens",
    "layer_table": "cnnlens.lens",
    "DemoCNN": "cnnlens.models",
    "InputSpec": "cnnlens.registry",
    "demo_dataset": "cnnlens.models",
    "demo_model": "cnnlens.models",
    "load_weights": "cnnlens.models",
    "pick_device": "cnnlens.models",
    "to_batch": "cnnlens.models",
}

__all__ = [
    "MAX_IMAGE_PIXELS",
    "Dataset",
    "DemoCNN",
    "Extractor",
    "InputSpec",
    "Lens",
    "Problem",
    "build_lens",
    "demo_dataset",
    "demo_model",
    "layer_names",
    "layer_table",
    "load_dataset",
    "load_weights",
    "open_image",
    "pick_device",
    "to_batch",
    "to_mode",
]

if TYPE_CHECKING:
    from cnnlens.data import MAX_IMAGE_PIXELS, Dataset, Problem, load_dataset, open_image, to_mode
    from cnnlens.lens import Extractor, Lens, build_lens, layer_names, layer_table
    from cnnlens.models import (
        DemoCNN,
        demo_dataset,
        demo_model,
        load_weights,
        pick_device,
        to_batch,
    )
    from cnnlens.registry import InputSpec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cnnlens' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
