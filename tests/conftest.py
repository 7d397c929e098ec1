"""Shared fixtures: tiny synthetic models, generated datasets, the demo model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

from tests.generated import write_dataset

if TYPE_CHECKING:
    from cnnlens.models import LoadedModel


@pytest.fixture(scope="module")
def demo() -> LoadedModel:
    """The embedded demo model, opened once per test module."""
    from cnnlens.models import open_model

    return open_model("demo")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module's tests (``pytest.mark.usefixtures``): hundreds of
    small forwards or optimisation steps run fastest on one, since two threads on two
    busy cores wait on each other at every layer (4× slower beside other tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_cnn() -> nn.Sequential:
    """Conv, BN, in-place ReLU, pool, dropout and a second block: every naming case."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(2),
    )
    # Non-trivial BN statistics so eval mode differs from train mode.
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    """Twenty 8×8 images with labels 0-3."""
    return write_dataset(tmp_path / "small", [i % 4 for i in range(20)])
