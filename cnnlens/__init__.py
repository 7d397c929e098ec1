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
    "MAX_IMAGE_PIXELS": "cnnlens.images",
    "MAX_DECODED_SIDE": "cnnlens.images",
    "LAYOUTS": "cnnlens.data",
    "Dataset": "cnnlens.data",
    "Problem": "cnnlens.data",
    "load_dataset": "cnnlens.data",
    "open_image": "cnnlens.images",
    "to_mode": "cnnlens.images",
    "Extractor": "cnnlens.lens",
    "Lens": "cnnlens.lens",
    "build_lens": "cnnlens.lens",
    "Layers": "cnnlens.layers",
    "layer_names": "cnnlens.layers",
    "module_names": "cnnlens.layers",
    "FeatureExtractor": "cnnlens.extractor",
    "build_extractor": "cnnlens.extractor",
    "DemoCNN": "cnnlens.models",
    "LoadedModel": "cnnlens.models",
    "demo_dataset": "cnnlens.models",
    "demo_model": "cnnlens.models",
    "download_weights": "cnnlens.weights",
    "explain_value": "cnnlens.explain",
    "load_weights": "cnnlens.weights",
    "open_model": "cnnlens.models",
    "pick_device": "cnnlens.models",
    "to_batch": "cnnlens.preprocess",
    "weights_status": "cnnlens.weights",
    "visualize": "cnnlens.feature_visualization",
    "ablate": "cnnlens.ablation",
    "MODELS": "cnnlens.registry",
    "InputSpec": "cnnlens.registry",
    "ModelInfo": "cnnlens.registry",
    "model_groups": "cnnlens.registry",
    "model_info": "cnnlens.registry",
}

__all__ = [
    "LAYOUTS",
    "MAX_DECODED_SIDE",
    "MAX_IMAGE_PIXELS",
    "MODELS",
    "Dataset",
    "DemoCNN",
    "Extractor",
    "FeatureExtractor",
    "InputSpec",
    "Layers",
    "Lens",
    "LoadedModel",
    "ModelInfo",
    "Problem",
    "ablate",
    "build_extractor",
    "build_lens",
    "demo_dataset",
    "demo_model",
    "download_weights",
    "explain_value",
    "layer_names",
    "load_dataset",
    "load_weights",
    "model_groups",
    "model_info",
    "module_names",
    "open_image",
    "open_model",
    "pick_device",
    "to_batch",
    "to_mode",
    "visualize",
    "weights_status",
]

if TYPE_CHECKING:
    from cnnlens.ablation import ablate
    from cnnlens.data import LAYOUTS, Dataset, Problem, load_dataset
    from cnnlens.explain import explain_value
    from cnnlens.extractor import FeatureExtractor, build_extractor
    from cnnlens.feature_visualization import visualize
    from cnnlens.images import MAX_DECODED_SIDE, MAX_IMAGE_PIXELS, open_image, to_mode
    from cnnlens.layers import Layers, layer_names, module_names
    from cnnlens.lens import Extractor, Lens, build_lens
    from cnnlens.models import (
        DemoCNN,
        LoadedModel,
        demo_dataset,
        demo_model,
        open_model,
        pick_device,
    )
    from cnnlens.preprocess import to_batch
    from cnnlens.registry import MODELS, InputSpec, ModelInfo, model_groups, model_info
    from cnnlens.weights import download_weights, load_weights, weights_status


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cnnlens' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
