"""The Network page's data: overview columns against the lens and the extractor, and the
architecture graph as valid DOT."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from cnnlens.explain import CLASS_SCORES
from cnnlens.models import LoadedModel, open_model
from cnnlens.network import Column, architecture_dot, overview


@pytest.fixture(scope="module")
def resnet() -> LoadedModel:
    return open_model("resnet18", weights="random")


def assert_maps_column(column: Column, maps: torch.Tensor, max_maps: int) -> None:
    """The column shows the layer's real maps: all, or the strongest by mean value."""
    values = maps[0].float().numpy()
    assert column.shape == values.shape and column.total == values.shape[0]
    np.testing.assert_array_equal(column.maps, values[column.channels])
    means = values.mean(axis=(1, 2))
    if column.total <= max_maps:
        np.testing.assert_array_equal(column.channels, np.arange(column.total))
    else:
        assert len(column.channels) == max_maps == len(set(column.channels.tolist()))
        left_out = np.setdiff1d(np.arange(column.total), column.channels)
        shown = means[column.channels]
        assert shown.min() >= means[left_out].max() - 1e-6
        assert (np.diff(shown) <= 1e-6).all()  # strongest first


def assert_scores_column(column: Column, loaded: LoadedModel, x: torch.Tensor, k: int) -> None:
    probabilities = loaded.probabilities(x)[0]
    order = np.argsort(-probabilities, kind="stable")[:k]
    assert column.kind == "scores" and column.total == len(probabilities)
    np.testing.assert_allclose(column.probabilities, probabilities[order], rtol=1e-5, atol=1e-7)
    assert column.classes == tuple(loaded.classes[i] for i in column.channels)
    np.testing.assert_allclose(probabilities[column.channels], column.probabilities, rtol=1e-5)


def test_demo_overview_equals_the_lens(demo: LoadedModel) -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 1, 28, 28)
    columns = overview(demo, x)
    assert [c.name for c in columns] == ["input", *demo.layer_names(), CLASS_SCORES]
    assert [c.kind for c in columns] == ["input"] + ["maps"] * 10 + ["scores"]
    np.testing.assert_array_equal(columns[0].maps, x[0].numpy())
    lens = demo.extractor(demo.layer_names())(x)
    for column in columns[1:-1]:
        assert_maps_column(column, lens[column.name], max_maps=16)
    # conv_1 has 32 channels: 16 of them are shown; the pre-ReLU values keep their sign.
    assert columns[1].total == 32 and len(columns[1].channels) == 16
    assert columns[1].maps.min() < 0
    assert_scores_column(columns[-1], demo, x, k=5)


def test_max_maps_and_top_k(demo: LoadedModel) -> None:
    x = torch.rand(1, 1, 28, 28)
    columns = overview(demo, x, max_maps=3, top_k=10)
    lens = demo.extractor(demo.layer_names())(x)
    for column in columns[1:-1]:
        assert_maps_column(column, lens[column.name], max_maps=3)
    assert_scores_column(columns[-1], demo, x, k=10)


def test_resnet_overview_equals_the_extractor(resnet: LoadedModel) -> None:
    """Any other network: the input, its trunk's stages and the class scores."""
    torch.manual_seed(1)
    x = torch.randn(1, 3, 64, 64)
    stages = resnet.default_layers()
    assert stages == ["relu", "layer1", "layer2", "layer3", "layer4"]
    columns = overview(resnet, x)
    assert [c.name for c in columns] == ["input", *stages, CLASS_SCORES]
    maps = resnet.extractor(stages)(x)
    for column in columns[1:-1]:
        assert_maps_column(column, maps[column.name], max_maps=16)
    assert columns[-1].classes[0] in resnet.classes
    assert_scores_column(columns[-1], resnet, x, k=5)


def test_overview_refuses_bad_arguments(demo: LoadedModel) -> None:
    with pytest.raises(ValueError, match=r"one image: pass a 1×C×H×W batch"):
        overview(demo, torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"max_maps and top_k must be at least 1"):
        overview(demo, torch.rand(1, 1, 28, 28), max_maps=0)
    with pytest.raises(ValueError, match=r"does not fit this network"):
        overview(demo, torch.rand(1, 3, 28, 28))
    with pytest.raises(TypeError, match=r"torch.Tensor"):
        overview(demo, np.zeros((1, 1, 28, 28)))


# ---- DOT ----

_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|->|[{}\[\];=,]|[A-Za-z_][\w.]*|-?[\d.]+)')


def parse_dot(text: str) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """A strict reader of the DOT subset the graph uses: (nodes, edges, clusters).

    It fails on anything else, on unbalanced braces or brackets, and on a statement
    without its semicolon.
    """
    tokens, position = [], 0
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        assert match, f"cannot read DOT at {text[position : position + 40]!r}"
        tokens.append(match.group(1))
        position = match.end()
    assert tokens[:3] == ["digraph", "network", "{"] and tokens[-1] == "}"
    nodes, edges, clusters, depth, i = [], [], [], 1, 3

    def attributes(i: int) -> int:
        assert tokens[i] == "["
        i += 1
        while tokens[i] != "]":
            assert re.fullmatch(r"[A-Za-z_]\w*", tokens[i]) and tokens[i + 1] == "="
            assert tokens[i + 2] not in "{}[];=,", tokens[i + 2]
            i += 3
            if tokens[i] == ",":
                i += 1
        return i + 1

    while depth:
        token = tokens[i]
        if token == "}":
            depth, i = depth - 1, i + 1
        elif token == "subgraph":
            assert tokens[i + 1].startswith('"cluster_') and tokens[i + 2] == "{"
            clusters.append(tokens[i + 1])
            depth, i = depth + 1, i + 3
        elif token in ("graph", "node", "edge"):
            i = attributes(i + 1)
            assert tokens[i] == ";"
            i += 1
        elif tokens[i + 1] == "=":
            assert tokens[i + 3] == ";", tokens[i : i + 4]
            i += 4
        elif tokens[i + 1] == "->":
            assert token.startswith('"') and tokens[i + 2].startswith('"')
            edges.append((token, tokens[i + 2]))
            assert tokens[i + 3] == ";"
            i += 4
        else:
            assert token.startswith('"'), token
            nodes.append(token)
            i = attributes(i + 1)
            assert tokens[i] == ";"
            i += 1
    assert i == len(tokens), "text after the graph"
    return nodes, edges, clusters


def assert_valid(text: str) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    nodes, edges, clusters = parse_dot(text)
    assert len(nodes) == len(set(nodes)), "a node is declared twice"
    declared = set(nodes)
    for source, target in edges:
        assert source in declared and target in declared, (source, target)
    connected = {name for edge in edges for name in edge}
    assert declared == connected, f"nodes without edges: {declared - connected}"
    return nodes, edges, clusters


def test_demo_architecture(demo: LoadedModel) -> None:
    text = architecture_dot(demo)
    nodes, edges, clusters = assert_valid(text)
    assert clusters == ['"cluster_features"', '"cluster_classifier"']
    assert len(nodes) == 2 + 10 + 6  # input, output, the stack's layers, the classifier's
    # One chain in execution order, from the input through the renamed layers.
    assert edges[0] == ('"input"', '"features.0#0"') and edges[-1][1] == '"output"'
    assert len(edges) == len(nodes) - 1
    assert 'label="conv_1\\nConv2d · 32×28×28"' in text
    assert 'label="pool_4\\nMaxPool2d · 64×7×7"' in text
    assert 'label="class scores\\n10"' in text
    collapsed, _, _ = assert_valid(architecture_dot(demo, depth=1))
    assert len(collapsed) == 4
    assert "10 modules inside" in architecture_dot(demo, depth=1)


def test_resnet_architecture_depths_and_skips(resnet: LoadedModel) -> None:
    counts = []
    for depth in (1, 2, 3):
        nodes, edges, _ = assert_valid(architecture_dot(resnet, depth=depth))
        counts.append(len(nodes))
    assert counts[0] < counts[1] < counts[2]
    assert counts[0] == 2 + 10  # input, output, conv1 ... fc
    text = architecture_dot(resnet, depth=3)
    _, edges, clusters = assert_valid(text)
    assert '"cluster_layer1.0"' in clusters
    # The skip connection of the first block: from the stem's maxpool, past the block's
    # convs, to the ReLU after the addition (the block's shared ReLU, second call).
    assert ('"maxpool#0"', '"layer1.0.relu#1"') in edges
    assert ('"layer1.0.bn2#0"', '"layer1.0.relu#1"') in edges
    assert 'label="relu (call 2)\\nReLU · 64×56×56"' in text
    # A downsampling block's skip goes through its downsample branch.
    assert ('"layer1.1.relu#1"', '"layer2.0.downsample#0"') in edges
    assert ('"layer2.0.downsample#0"', '"layer2.0.relu#1"') in edges
    assert "layer4\\nSequential · 512×7×7\\n15 modules inside" in architecture_dot(resnet, depth=1)


def test_architecture_of_a_plain_module_without_shapes_follows_module_order() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    )
    _, edges, _ = assert_valid(architecture_dot(model, depth=2))
    assert [edge[1] for edge in edges] == ['"0#0"', '"1#0"', '"2.0#0"', '"2.1#0"', '"output"']
    with_shapes = architecture_dot(model, depth=2, input_shape=(1, 4, 4))
    assert "Linear · 3" in with_shapes and "class scores" in with_shapes
    assert_valid(with_shapes)
    with pytest.raises(ValueError, match="depth must be a whole number"):
        architecture_dot(model, depth=0)
    with pytest.raises(TypeError, match="nn.Module"):
        architecture_dot("resnet18")


def test_architecture_quotes_odd_names() -> None:
    """Module names may hold characters DOT gives a meaning to."""
    model = nn.Sequential()
    model.add_module('odd "name" {x}', nn.Conv2d(1, 1, 1))
    model.add_module("b\\c", nn.ReLU())
    text = architecture_dot(model, input_shape=(1, 2, 2))
    nodes, _, _ = assert_valid(text)
    assert '"odd \\"name\\" {x}#0"' in nodes
