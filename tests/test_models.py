"""The model zoo: the demo CNN, registry, weights (pretrained, random, own) and batching."""

from __future__ import annotations

import hashlib
import pickle
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision import models as tvm

from cnnlens import build_lens, demo_dataset, demo_model, layer_names, load_weights, to_batch
from cnnlens import models as models_module
from cnnlens import weights as weights_module
from cnnlens.layers import Layers
from cnnlens.models import (
    DEMO_DATASET_DIR,
    DemoCNN,
    _trunk_stages,
    open_model,
    pick_device,
)
from cnnlens.preprocess import as_input
from cnnlens.registry import DEMO_WEIGHTS, MODELS, RANDOM_WEIGHTS_NOTE, model_groups, model_info
from cnnlens.weights import download_weights, weights_status

REAL_URLOPEN = urllib.request.urlopen


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
    with pytest.raises(ValueError, match="evil.pt could not be loaded as weights"):
        open_model("demo", weights=path)
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


def test_exact_float32_turns_off_tf32_convolutions():
    cudnn = torch.backends.cudnn
    # On a GPU an earlier test's open_model may have set it already: start from
    # torch's default (the legacy setter puts every flag back to it), end as found.
    was_exact = cudnn.conv.fp32_precision == "ieee"
    cudnn.allow_tf32 = True
    assert cudnn.conv.fp32_precision == cudnn.rnn.fp32_precision == "tf32"
    try:
        models_module.exact_float32()
        assert cudnn.conv.fp32_precision == "ieee"  # what a convolution reads
        assert cudnn.rnn.fp32_precision == "ieee"
        assert not cudnn.allow_tf32  # the older flag agrees, and reading it does not raise
    finally:
        if not was_exact:
            cudnn.allow_tf32 = True


# --- The model zoo: registry, pretrained / random / own weights, preprocessing ---

# SqueezeNet's .features holds Fire blocks, not plain layers: qualified names only.
TORCHVISION_SEQUENTIAL = {
    "alexnet",
    *(f"vgg{depth}{bn}" for depth in (11, 13, 16, 19) for bn in ("", "_bn")),
}


def _gradient_image(height: int, width: int) -> Image.Image:
    """A non-square RGB image with smooth structure and noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 0.6 + 40 * np.sin(y / 9)) % 256, y * 0.8 % 256, (x + y) / 3 % 256], -1)
    pixels = np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def _seeded(builder, seed: int = 1, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return builder(**kwargs).eval()


def _assert_same_tensors(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert own.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(own[key], value), key


@pytest.fixture(scope="module")
def random_resnet():
    """ResNet-18 with its seeded random weights, shared: tests only read it."""
    return open_model("resnet18", weights="random")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache under a temporary TORCH_HOME; any connection fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("CNNLENS_OFFLINE", raising=False)
    monkeypatch.delenv("CNNLENS_CHECK_ONLINE", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError(f"the network was used: {args}")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    weights_module._online.cache_clear()
    yield tmp_path / "torch" / "hub" / "checkpoints"
    weights_module._online.cache_clear()


def test_the_registry_lists_every_torchvision_classifier_as_its_weights_expect():
    names = tvm.list_models(module=tvm)
    assert set(MODELS) == {"demo", *names} and len(MODELS) == len(names) + 1
    for name in names:
        info = model_info(name)
        weights = tvm.get_model_weights(name).DEFAULT
        transforms = weights.transforms()
        assert info.weights == weights.name, name
        assert info.parameters == weights.meta["num_params"], name
        assert info.spec.mode == "RGB"
        assert info.spec.size == (transforms.crop_size[0],) * 2, name
        assert info.spec.resize == transforms.resize_size[0], name
        assert info.spec.mean == tuple(transforms.mean), name
        assert info.spec.std == tuple(transforms.std), name
        assert info.spec.interpolation == transforms.interpolation.value, name
        assert info.sequential == (name in TORCHVISION_SEQUENTIAL), name
        assert info.family == ("sequential" if info.sequential else "torchvision")
    assert model_info("demo").family == "demo" and model_info("demo").sequential
    assert [model_info(n).title for n in ("resnet18", "vgg16_bn", "vit_b_16")] == [
        "ResNet-18",
        "VGG-16 BN",
        "ViT-B/16",
    ]
    groups = model_groups()
    assert next(iter(groups)) == "Demo" and groups["Demo"] == ["demo"]
    assert {"resnet18", "resnext50_32x4d", "wide_resnet50_2"} <= set(groups["ResNet"])
    assert sorted(n for ns in groups.values() for n in ns) == sorted(MODELS)


def test_the_registrys_renamed_flag_is_the_layer_rule_of_every_built_network():
    """One rule: a network has renamed layers exactly where the registry says so."""
    renamed = []
    for name in MODELS:
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = DemoCNN() if name == "demo" else tvm.get_model(name)
        except NotImplementedError:  # RegNet's builder computes with tensors
            assert name.startswith("regnet"), name
            continue
        if Layers(model).renamed:
            renamed.append(name)
    assert renamed == [name for name, info in MODELS.items() if info.sequential]
    assert set(renamed) == {"demo", *TORCHVISION_SEQUENTIAL}
    regnet = tvm.regnet_y_400mf()  # every RegNet is this class: no .features, not Sequential
    assert not Layers(regnet).renamed


def test_the_registry_imports_without_torch():
    code = (
        "import sys, cnnlens.registry as r; r.model_info('resnet18'); r.model_groups(); "
        "assert not {'torch', 'torchvision'} & set(sys.modules), 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_open_demo_model_with_its_trained_weights():
    loaded = open_model("demo")
    assert loaded.weights == "trained demo weights" and loaded.notes == ()
    assert loaded.weights_id == hashlib.sha256(DEMO_WEIGHTS.read_bytes()).hexdigest()[:16]
    assert loaded.classes == tuple("0123456789") and loaded.sequential
    assert not loaded.model.training
    assert loaded.default_layers() == ["conv_1", "conv_2", "conv_3", "conv_4"]
    assert loaded.layer_names() == layer_names(demo_model())
    dataset = demo_dataset()
    images = [dataset.load_image(name, "L", "test") for name in dataset.test_index["filename"][:3]]
    reference = demo_model()
    with torch.inference_mode():
        expected = torch.softmax(reference(to_batch(images)), dim=1).numpy()
    probabilities = loaded.probabilities(loaded.batch(images))
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    _assert_same_tensors(loaded.model, reference.state_dict())


def test_pretrained_weights_come_from_the_local_hub_cache_without_network(hub):
    weights = tvm.ResNet18_Weights.DEFAULT
    state = _seeded(tvm.resnet18).state_dict()
    hub.mkdir(parents=True)
    torch.save(state, hub / Path(weights.url).name)
    assert weights_status("resnet18") == "cached"

    loaded = open_model("resnet18")
    assert loaded.weights == "pretrained IMAGENET1K_V1" and loaded.weights_id == "IMAGENET1K_V1"
    assert loaded.notes == () and not loaded.sequential and not loaded.model.training
    _assert_same_tensors(loaded.model, state)
    assert loaded.classes == tuple(weights.meta["categories"]) and loaded.classes[0] == "tench"
    assert loaded.spec == model_info("resnet18").spec


def test_without_cache_a_model_gets_random_weights_and_a_note_without_connecting(
    hub, monkeypatch, random_resnet
):
    # Downloads are allowed, but nothing asks the server whether it answers.
    assert weights_status("resnet18") == "downloadable"
    assert weights_status("demo") == "cached"
    loaded = open_model("resnet18")
    assert loaded.weights == "random weights" and loaded.weights_id == "random-seed0"
    assert loaded.notes == (
        "The pretrained weights of resnet18 are not in the local torch hub cache.",
        RANDOM_WEIGHTS_NOTE,
    )
    # Seeded: every process draws the same random network.
    _assert_same_tensors(random_resnet.model, loaded.model.state_dict())

    hub.mkdir(parents=True)
    (hub / Path(tvm.ResNet18_Weights.DEFAULT.url).name).write_bytes(b"truncated")
    broken = open_model("resnet18")
    assert broken.weights == "random weights" and broken.notes[1] == RANDOM_WEIGHTS_NOTE
    assert broken.notes[0].startswith(
        "The cached pretrained weights of resnet18 cannot be used: resnet18-f37072fd.pth could "
        "not be loaded as weights"
    )


def test_offline_forbids_the_check_and_every_download(hub, monkeypatch):
    monkeypatch.setenv("CNNLENS_OFFLINE", "1")
    monkeypatch.setenv("CNNLENS_CHECK_ONLINE", "1")  # offline wins
    assert weights_status("resnet18") == "unavailable"
    assert weights_status("demo") == "cached"
    with pytest.raises(ValueError, match=r"CNNLENS_OFFLINE=1 forbids connecting out\. Unset"):
        download_weights("resnet18")
    loaded = open_model("resnet18", allow_download=True)
    assert loaded.weights == "random weights" and loaded.notes[1] == RANDOM_WEIGHTS_NOTE
    assert loaded.notes[0].startswith(
        "The weights of resnet18 were not downloaded: CNNLENS_OFFLINE=1 forbids connecting out."
    )
    assert not hub.exists()


def test_the_check_setting_asks_the_weights_server_once(hub, monkeypatch):
    monkeypatch.setenv("CNNLENS_CHECK_ONLINE", "1")
    asked: list[tuple[str, int]] = []

    def unreachable(address, timeout):
        asked.append(address)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    assert weights_status("resnet18") == "unavailable"
    assert weights_status("resnet18") == "unavailable"
    assert asked == [("download.pytorch.org", 443)]

    class Connection:
        def close(self) -> None:
            asked.append(("closed", 0))

    weights_module._online.cache_clear()
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout: Connection())
    assert weights_status("resnet18") == "downloadable"
    assert asked[-1] == ("closed", 0)


def test_a_download_that_cannot_reach_the_server_says_so(hub, monkeypatch):
    def unreachable(url, timeout):
        raise urllib.error.URLError(OSError("Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    with pytest.raises(ValueError, match="the weights server could not be reached"):
        download_weights("resnet18")
    assert list(hub.iterdir()) == []  # no .partial left behind
    loaded = open_model("resnet18", allow_download=True)
    assert loaded.weights == "random weights"
    assert "could not be reached (Name or service not known)" in loaded.notes[0]


def _serve(tmp_path, monkeypatch, hub, state, hash_prefix: str | None = None) -> Path:
    """Serve a state_dict file at a file:// URL as resnet18's weights; return its cache path."""
    source = tmp_path / "served.pth"
    torch.save(state, source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    cached = hub / f"resnet18-{hash_prefix or digest[:8]}.pth"
    monkeypatch.setattr(weights_module, "_cached_file", lambda name: cached)
    monkeypatch.setattr(weights_module, "_weights_url", lambda name: source.as_uri())
    monkeypatch.setattr(urllib.request, "urlopen", REAL_URLOPEN)
    return cached


def test_download_streams_into_the_cache_with_progress(hub, tmp_path, monkeypatch):
    state = _seeded(tvm.resnet18, seed=2).state_dict()
    cached = _serve(tmp_path, monkeypatch, hub, state)
    assert open_model("resnet18").weights == "random weights"  # no download unless allowed
    assert not cached.exists()

    calls: list[tuple[int, int]] = []
    loaded = open_model("resnet18", allow_download=True, progress=lambda *a: calls.append(a))
    size = cached.stat().st_size
    assert calls[-1] == (size, size) and all(total == size for _, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert not cached.with_name(cached.name + ".partial").exists()
    assert loaded.weights == "pretrained IMAGENET1K_V1" and loaded.notes == ()
    _assert_same_tensors(loaded.model, state)


def test_a_download_that_does_not_match_its_hash_is_refused(hub, tmp_path, monkeypatch):
    cached = _serve(tmp_path, monkeypatch, hub, {"w": torch.zeros(2)}, hash_prefix="00000000")
    with pytest.raises(ValueError, match="is corrupt"):
        download_weights("resnet18")
    assert list(hub.iterdir()) == []  # neither the file nor its .partial
    loaded = open_model("resnet18", allow_download=True)
    assert loaded.weights == "random weights" and "is corrupt" in loaded.notes[0]
    assert not cached.exists()


def test_own_weights_round_trip_through_checkpoints_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    state = _seeded(tvm.resnet18, seed=3).state_dict()
    checkpoint = tmp_path / "run.pth"
    wrapped = {f"module.{k}": v for k, v in state.items()}  # DataParallel
    torch.save({"epoch": 3, "state_dict": wrapped}, checkpoint)
    loaded = open_model("resnet18", weights=checkpoint)
    assert loaded.weights == "your file run.pth" and loaded.notes == ()
    assert loaded.weights_id == hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:16]
    _assert_same_tensors(loaded.model, state)

    # A Lightning checkpoint: the network under one attribute name of the training module.
    demo_state = demo_model().state_dict()
    torch.save({"model": {f"net.{k}": v for k, v in demo_state.items()}}, tmp_path / "l.ckpt")
    _assert_same_tensors(open_model("demo", weights=tmp_path / "l.ckpt").model, demo_state)
    with pytest.raises(TypeError, match="weights must be None, 'random' or the path"):
        open_model("demo", weights=demo_state)

    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(plain))
    _assert_same_tensors(open_model("resnet18", weights=str(plain)).model, state)


def test_weights_that_do_not_fit_are_listed_in_words(tmp_path, random_resnet):
    state = _seeded(tvm.resnet18, seed=4).state_dict()
    random_state = random_resnet.model.state_dict()
    del state["layer1.0.conv1.weight"], state["layer1.0.bn1.bias"]
    state["extra.weight"] = torch.ones(3)
    state["layer2.0.conv1.weight"] = torch.ones(128, 64, 1, 1)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    loaded = open_model("resnet18", weights=path)
    assert loaded.notes == (
        "w.pt lacks 2 tensors of the network, which keep random values: "
        "layer1.0.conv1.weight, layer1.0.bn1.bias.",
        "w.pt has 1 tensor that resnet18 (ResNet-18) does not use, left out: extra.weight.",
        "w.pt has 1 tensor of another shape than resnet18 (ResNet-18) expects, left out: "
        "layer2.0.conv1.weight (128×64×1×1, expected 128×64×3×3).",
    )
    own = loaded.model.state_dict()
    for key in ("layer1.0.conv1.weight", "layer1.0.bn1.bias", "layer2.0.conv1.weight"):
        assert torch.equal(own[key], random_state[key]), key
    assert torch.equal(own["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])


def test_weights_for_another_network_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"These weights are not for resnet18 \(ResNet-18\)"):
        open_model("resnet18", weights=DEMO_WEIGHTS)
    with pytest.raises(ValueError, match="No weights file"):
        open_model("demo", weights=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="Unknown model 'resnet9'"):
        open_model("resnet9")


def test_a_fine_tuned_head_gets_its_own_classes(tmp_path):
    source = _seeded(tvm.resnet18, seed=5, num_classes=7)
    path = tmp_path / "seven.pt"
    torch.save(source.state_dict(), path)
    loaded = open_model("resnet18", weights=path)
    assert loaded.classes == tuple("0123456") and loaded.notes == (
        "The classifier has 7 outputs: classes are named by index.",
    )
    image = _gradient_image(90, 120)
    with torch.inference_mode():
        expected = torch.softmax(source(to_batch(image, loaded.spec)), dim=1).numpy()
    np.testing.assert_allclose(loaded.probabilities(loaded.batch(image)), expected, atol=1e-6)

    names = [f"kind {i}" for i in range(7)]
    named = open_model("resnet18", weights=path, classes=names)
    assert named.classes == tuple(names) and named.notes == ()
    with pytest.raises(ValueError, match="3 class names were given, but the classifier has 7"):
        open_model("resnet18", weights=path, classes=names[:3])


def test_a_one_channel_first_conv_makes_a_grayscale_model(tmp_path):
    source = _seeded(tvm.resnet18, seed=6)
    source.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    path = tmp_path / "gray.pt"
    torch.save(source.state_dict(), path)
    loaded = open_model("resnet18", weights=path)
    assert loaded.notes == (
        "gray.pt takes grayscale (1 channel) images: inputs are converted to that.",
    )
    assert loaded.spec.mode == "L" and loaded.spec.shape == (1, 224, 224)
    assert loaded.spec.mean == pytest.approx((np.mean(model_info("resnet18").spec.mean),))
    assert loaded.spec.std == pytest.approx((np.mean(model_info("resnet18").spec.std),))
    image = _gradient_image(100, 80)  # an RGB image goes in as grayscale
    gray = to_batch(image.convert("L"), loaded.spec)
    with torch.inference_mode():
        expected = torch.softmax(source(gray), dim=1).numpy()
    np.testing.assert_allclose(loaded.probabilities(loaded.batch(image)), expected, atol=1e-6)

    colour = DemoCNN()
    colour.features[0] = torch.nn.Conv2d(3, 32, 3, padding=1)
    torch.save(colour.state_dict(), tmp_path / "rgb.pt")
    rgb = open_model("demo", weights=tmp_path / "rgb.pt")
    assert rgb.spec.mode == "RGB" and rgb.spec.mean is None and rgb.classes == tuple("0123456789")
    assert rgb.batch(Image.new("L", (28, 28), 51)).shape == (1, 3, 28, 28)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "inception_v3"])
def test_to_batch_matches_the_weights_transforms(name):
    transforms = tvm.get_model_weights(name).DEFAULT.transforms()
    spec = model_info(name).spec
    for image in (_gradient_image(300, 410), _gradient_image(410, 300)):
        # torchvision resizes a Pillow image with Pillow too: the same values.
        torch.testing.assert_close(
            to_batch(image, spec), transforms(image)[None], atol=1e-6, rtol=0
        )
        if spec.interpolation == "bilinear":
            # On a tensor it resizes with torch, which rounds some pixels one level apart.
            tensor_path = transforms(torch.from_numpy(np.array(image)).permute(2, 0, 1))
            difference = (to_batch(image, spec) - tensor_path[None]).abs()
            assert difference.max() <= 1.01 / 255 / min(spec.std)
            assert difference.mean() < 0.005


def test_a_grayscale_image_feeds_an_rgb_model_as_three_equal_channels():
    spec = model_info("resnet18").spec
    batch = to_batch(Image.new("L", (300, 260), 51), spec)
    assert batch.shape == (1, 3, 224, 224)
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    torch.testing.assert_close(batch[0] * std + mean, torch.full((3, 224, 224), 0.2))


def test_bfloat16_probabilities_on_cpu():
    dataset = demo_dataset()
    images = [dataset.load_image(name) for name in dataset.pick_many(128, 2)]
    full = open_model("demo")
    half = open_model("demo", dtype=torch.bfloat16)
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert half.batch(images).dtype == torch.bfloat16
    probabilities = half.probabilities(half.batch(images))
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    expected = full.probabilities(full.batch(images))
    np.testing.assert_allclose(probabilities, expected, atol=3e-2)
    assert (probabilities.argmax(1) == expected.argmax(1)).all()


def test_default_layers_are_the_last_module_of_each_resolution_stage(random_resnet):
    resnet = random_resnet
    assert resnet.default_layers() == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert set(resnet.default_layers()) <= set(resnet.layer_names())
    # MobileNetV3-Small's strided blocks are features.0, .1, .2, .4 and .9.
    mobilenet = open_model("mobilenet_v3_small", weights="random")
    assert mobilenet.default_layers() == [f"features.{i}" for i in (0, 1, 3, 8, 12)]
    # SqueezeNet has no renamed layers: its stages, the class maps' ReLU last.
    squeezenet = open_model("squeezenet1_1", weights="random")
    assert squeezenet.default_layers() == ["features.1", "features.4", "features.7", "classifier.2"]


def test_trunk_stages_merge_near_sizes_open_whole_trunks_and_keep_five():
    # Inception-like: 149 and 147 rows are one stage (both half the 299 input).
    names = ["a", "b", "c", "d", "fc"]
    shapes = ["32×149×149", "32×147×147", "64×73×73", "80×71×71", "1000"]
    assert _trunk_stages(names, shapes, input_height=299) == ["b", "d"]
    # A trunk container (32 -> 4: three levels) is opened; a strided block (one level) is not.
    names = ["trunk", "trunk.0", "trunk.0.conv", "trunk.1", "trunk.2", "pool"]
    shapes = ["8×4×4", "8×16×16", "8×32×32", "8×8×8", "8×4×4", "8×1×1"]
    assert _trunk_stages(names, shapes, input_height=32) == ["trunk.0", "trunk.1", "trunk.2"]
    # Seven stages: five kept, evenly spaced from the first to the last.
    names = [f"s{i}" for i in range(7)]
    shapes = [f"4×{256 >> i}×{256 >> i}" for i in range(1, 8)]
    assert _trunk_stages(names, shapes, input_height=256) == ["s0", "s2", "s3", "s4", "s6"]


def test_a_loaded_model_extracts_its_layers(random_resnet):
    loaded = random_resnet
    batch = loaded.batch(_gradient_image(64, 80))
    maps = loaded.extractor(["layer2"])(batch)
    net = loaded.model
    with torch.inference_mode():
        x = net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(batch))))))
    torch.testing.assert_close(maps["layer2"], x)

    squeezenet = open_model("squeezenet1_1", weights="random")
    assert squeezenet.layer_names()[:4] == ["features", "features.0", "features.1", "features.2"]
    small = squeezenet.batch(_gradient_image(64, 64))
    with torch.inference_mode():
        expected = squeezenet.model.features[:4](small)
    torch.testing.assert_close(squeezenet.extractor(["features.3"])(small)["features.3"], expected)
    assert squeezenet.probabilities(small).shape == (1, 1000)


def test_network_view_is_the_crop_the_batch_is_made_of():
    """A map lies over the resized, centre-cropped image, not over the whole photo."""
    spec = model_info("resnet18").spec
    rng = np.random.default_rng(3)
    photo = Image.fromarray(rng.integers(0, 256, (300, 450, 3), dtype=np.uint8))
    seen = as_input(photo, spec)
    assert seen.size == (224, 224) and seen.mode == "RGB"
    batch = to_batch(photo, spec)[0]
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    pixels = ((batch * std + mean) * 255).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(pixels, np.asarray(seen, dtype=np.float32), atol=1e-3)
    grey = as_input(photo.convert("L"), model_info("demo").spec)
    assert grey.size == (28, 28) and grey.mode == "L"
