"""The demo CNN, its accuracy, safe weights loading and batching."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cnnlens import build_lens, demo_dataset, demo_model, layer_names, load_weights, to_batch
from cnnlens.models import DEMO_DATASET_DIR, pick_device


def test_demo_model_reaches_97_percent_on_the_1000_test_digits():
    dataset = demo_dataset()
    truth = pd.read_csv(DEMO_DATASET_DIR / "test_labels.csv")
    assert list(truth["filename"]) == list(dataset.test_index["filename"])
    batch = to_batch([dataset.load_image(name, "L", "test") for name in truth["filename"]])
    model = demo_model()
    assert not model.training
    with torch.inference_mode():
        predicted = model(batch).argmax(1).numpy()
    accuracy = (predicted == truth["label"].to_numpy()).mean()
    assert accuracy >= 0.97, accuracy


def test_demo_layers_and_lens_values():
    model = demo_model()
    names = layer_names(model)
    assert names == [
        "conv_1", "relu_1", "conv_2", "relu_2", "pool_2",
        "conv_3", "relu_3", "conv_4", "relu_4", "pool_4",
    ]  # fmt: skip
    dataset = demo_dataset()
    batch = to_batch([dataset.load_image(n) for n in dataset.pick_many(128, 4)])
    convs = [n for n in names if n.startswith("conv")]
    out = build_lens(model, convs)(batch)
    for name in convs:
        index = names.index(name)
        with torch.no_grad():
            expected = model.features[: index + 1](batch)
        assert (expected < 0).any(), "pre-ReLU values, negatives included"
        torch.testing.assert_close(out[name], expected, atol=1e-5, rtol=1e-4)


def test_to_batch_scales_pixels_into_0_1_and_resizes():
    image = Image.fromarray(np.array([[0, 255], [51, 102]], dtype=np.uint8))
    batch = to_batch(image)
    assert batch.shape == (1, 1, 28, 28) and batch.dtype == torch.float32
    assert batch.min() == 0.0 and batch.max() == 1.0
    exact = to_batch(Image.fromarray(np.full((28, 28), 51, dtype=np.uint8)))
    assert torch.all(exact == 0.2)


def test_weights_round_trip_through_torch_save(tmp_path):
    state = demo_model().state_dict()
    path = tmp_path / "w.pt"
    torch.save(state, path)
    loaded = load_weights(path)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


class Payload:
    def __reduce__(self):
        return (print, ("this code ran while loading weights",))


def test_a_pickle_that_carries_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"weight": Payload()}, f)
    with pytest.raises(ValueError, match="could not be loaded as weights"):
        load_weights(path)
    assert "this code ran" not in capsys.readouterr().out


def test_files_that_are_not_state_dicts_are_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="is not a state_dict"):
        load_weights(path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not weights")
    with pytest.raises(ValueError, match="junk.safetensors could not be loaded"):
        load_weights(junk)
    with pytest.raises(ValueError, match="No weights file"):
        load_weights(tmp_path / "nothing.pt")


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="Unknown device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no usable GPU"):
            pick_device("cuda")
