"""The public API: written once, every name importable, every analysis with an example
in its docstring, and every example true."""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest
import torch

import cnnlens

ANALYSES = [
    "image_features",
    "build_extractor",
    "build_lens",
    "layer_stats",
    "summarise",
    "predict_split",
    "top_images",
    "class_channel_matrix",
    "embedding",
    "difference",
    "grad_cam",
    "attribute",
    "faithfulness",
    "sanity_check",
    "explain_value",
    "overview",
    "architecture_dot",
    "visualize",
    "ablate",
    "ablation_by_class",
    "features_parquet",
    "ResultStore",
]


def test_every_exported_name_imports_and_all_lists_each_once():
    assert len(cnnlens.__all__) == len(set(cnnlens.__all__))
    for name in cnnlens.__all__:
        assert getattr(cnnlens, name) is getattr(
            importlib.import_module(cnnlens._MODULE_OF[name]), name
        )
    with pytest.raises(AttributeError, match="no attribute 'load_model'"):
        cnnlens.load_model  # noqa: B018  (one name per thing: open_model(name).model)


@pytest.mark.parametrize("name", ANALYSES)
def test_each_analysis_is_exported_with_an_example_that_holds(name):
    assert name in cnnlens.__all__
    found = getattr(cnnlens, name)
    assert "Example:" in (inspect.getdoc(found) or ""), f"{name} has no example"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        finder = doctest.DocTestFinder(recurse=False)
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        for test in finder.find(found, name, globs={}):
            runner.run(test)
    finally:
        torch.set_num_threads(threads)
    assert runner.failures == 0 and runner.tries > 0, f"{name}'s example failed (see above)"
