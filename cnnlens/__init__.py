"""cnnlens: see what a convolutional network sees.

Every analysis the dashboard runs is importable from here under one name, with an
example in its docstring: open a model and a dataset, read feature maps (of one
image, ``image_features``; of any batch, ``build_extractor`` / ``build_lens``; of a
digit drawn on a pad, ``drawing_pixels`` of a ``Drawing``),
summarise a layer over a dataset (``layer_stats``, ``summarise``) and read it
(``top_images``, ``class_channel_matrix``, ``embedding``), see how the network
computes (``overview``, ``architecture_dot``, ``explain_value``), where it looks
(``attribute``, eleven methods; ``grad_cam``) and whether to believe it
(``faithfulness``, ``sanity_check``), what a channel looks for and does (``visualize``, ``ablate``,
``ablation_by_class``), and export (``features_parquet``). Dataset-wide results
are also specs (``LayerStatsSpec``...) that a ``ResultStore`` computes once and keeps.

The core is plain Python and torch; the dashboard (``dashboard.py``, ``pages/``
and ``cnnlens.ui``) is the only part that imports streamlit. Names are imported
on first use, so ``import cnnlens.data`` does not pay for importing torch: the
dashboard paints its first page before torch has loaded.
"""

from __future__ import annotations

import importlib
from typing import Any

# The public API, written once: each module and the names it gives. ``__all__`` is made
# from it, and ``cnnlens.<name>`` imports the module on first use.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "cnnlens.data": ("LAYOUTS", "Dataset", "Problem", "load_dataset"),
    "cnnlens.images": ("MAX_DECODED_SIDE", "MAX_IMAGE_PIXELS", "open_image", "to_mode"),
    "cnnlens.preprocess": ("to_batch",),
    "cnnlens.drawing": ("Drawing", "drawing_pixels", "mnist_fit"),
    "cnnlens.registry": ("MODELS", "InputSpec", "ModelInfo", "model_groups", "model_info"),
    "cnnlens.models": (
        "DemoCNN",
        "LoadedModel",
        "demo_dataset",
        "demo_model",
        "open_model",
        "pick_device",
    ),
    "cnnlens.weights": ("download_weights", "load_weights", "weights_status"),
    "cnnlens.layers": ("Layers", "layer_names", "module_names"),
    "cnnlens.lens": ("Extractor", "Lens", "build_lens"),
    "cnnlens.extractor": ("FeatureExtractor", "build_extractor"),
    "cnnlens.one_image": ("ImageFeatures", "image_features"),
    "cnnlens.insights": (
        "ClassMatrixSpec",
        "LayerStats",
        "LayerStatsSpec",
        "Predictions",
        "PredictionsSpec",
        "TopImagesSpec",
        "class_channel_matrix",
        "difference",
        "layer_stats",
        "predict_split",
        "summarise",
        "top_images",
    ),
    "cnnlens.embeddings": ("EmbeddingSpec", "embedding"),
    "cnnlens.gradcam": ("grad_cam",),
    "cnnlens.attribution": (
        "AttributionMap",
        "OcclusionScores",
        "attribute",
        "cam_layer",
        "occlusion_scores",
    ),
    "cnnlens.faithfulness_metrics": (
        "FaithfulnessCurve",
        "FaithfulnessSpec",
        "faithfulness",
        "most_faithful",
    ),
    "cnnlens.sanity": ("SanityStep", "sanity_check"),
    "cnnlens.explain": ("ValueExplanation", "explain_value"),
    "cnnlens.network": ("architecture_dot", "overview"),
    "cnnlens.feature_visualization": (
        "ChannelImageSpec",
        "ChannelImagesSpec",
        "Visualization",
        "visualize",
        "visualize_with_masks",
    ),
    "cnnlens.priors": ("ImagePrior", "ImagePriorSpec", "image_prior"),
    "cnnlens.legibility": ("legibility_table", "near_uniform", "plausibility"),
    "cnnlens.accentuation": ("Accentuation", "accentuate"),
    "cnnlens.relevance": (
        "ChannelRelevance",
        "RelevanceSpec",
        "TopRelevantSpec",
        "rank_agreement",
        "top_relevant",
    ),
    "cnnlens.ablation": ("ClassAblation", "ClassAblationSpec", "ablate", "ablation_by_class"),
    "cnnlens.export": ("ParquetSpec", "Recipe", "features_parquet", "grid_png", "maps_npz"),
    "cnnlens.results": ("Cancelled",),
    "cnnlens.store": ("ResultStore",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'cnnlens' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
