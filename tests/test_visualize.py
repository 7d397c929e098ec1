"""Feature visualization against references computed here: the demo's digits, noise, torch."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import cnnlens.feature_visualization as visualize_module
from cnnlens.borrow import layer_channels
from cnnlens.cli import main
from cnnlens.feature_visualization import (
    ChannelImageSpec,
    ChannelImagesSpec,
    ChannelMaskSpec,
    default_side,
    to_uint8,
    visualize,
)
from cnnlens.models import LoadedModel, demo_dataset, demo_model, open_model
from cnnlens.results import Cancelled
from cnnlens.store import ResultStore

# Hundreds of small forwards: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

CHANNELS = list(range(8))  # the first 8 of conv_2's 32 channels
CONV_2 = 2  # conv_2 is features[2] of the demo CNN


def conv_2_means(images: torch.Tensor) -> torch.Tensor:
    """Each channel's mean of conv_2 for pixel images, from a fresh copy of the demo CNN."""
    reference = demo_model().features[: CONV_2 + 1]
    with torch.no_grad():
        return reference(images).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def digit_means(demo) -> torch.Tensor:
    """conv_2's channel means on every one of the 4,000 training digits."""
    dataset = demo_dataset()
    names = dataset.rows("train")["filename"].tolist()
    assert len(names) == 4000
    return conv_2_means(demo.batch([dataset.load_image(name, "L") for name in names]))


@pytest.fixture(scope="module")
def noise_means() -> torch.Tensor:
    """conv_2's channel means on 64 images of uniform noise."""
    noise = torch.rand((64, 1, 28, 28), generator=torch.Generator().manual_seed(7))
    return conv_2_means(noise)


@pytest.fixture(scope="module")
def positive(demo) -> torch.Tensor:
    return visualize(demo, "conv_2", CHANNELS)


@pytest.fixture(scope="module")
def negative(demo) -> torch.Tensor:
    return visualize(demo, "conv_2", CHANNELS, negative=True)


def own_channel(means: torch.Tensor) -> torch.Tensor:
    """Each visualization's mean of its own channel."""
    return means[torch.arange(len(CHANNELS)), CHANNELS]


def test_images_are_one_grey_channel_in_0_1(positive, negative):
    for images in (positive, negative):
        assert images.shape == (8, 1, 28, 28)
        assert images.dtype == torch.float32 and images.device.type == "cpu"
        assert images.min() >= 0 and images.max() <= 1
        assert images.std() > 0.05  # an image, not the grey it starts from


def test_each_channel_beats_every_training_digit(positive, digit_means):
    reached = own_channel(conv_2_means(positive))
    strongest = digit_means[:, CHANNELS].max(dim=0).values
    assert int((reached > strongest).sum()) >= 7, (reached, strongest)


def test_each_channel_is_far_above_noise(positive, digit_means, noise_means):
    reached = own_channel(conv_2_means(positive))
    strongest = digit_means[:, CHANNELS].max(dim=0).values
    noise = noise_means[:, CHANNELS].mean(dim=0)
    assert bool((reached >= noise + (strongest - noise) / 2).all()), (reached, noise, strongest)


def test_negative_images_lower_the_channel_below_the_median_digit(negative, digit_means):
    reached = own_channel(conv_2_means(negative))
    median = digit_means[:, CHANNELS].median(dim=0).values
    assert int((reached < median).sum()) >= 6, (reached, median)


def test_same_seed_same_images_and_a_channel_does_not_depend_on_its_batch(demo):
    first = visualize(demo, "conv_2", [2, 5], steps=16, seed=3)
    again = visualize(demo, "conv_2", [2, 5], steps=16, seed=3)
    assert torch.equal(first, again)
    assert not torch.equal(first, visualize(demo, "conv_2", [2, 5], steps=16, seed=4))
    alone = visualize(demo, "conv_2", [5], steps=16, seed=3)
    torch.testing.assert_close(alone[0], first[1], rtol=0, atol=1e-4)
    # Groups of one channel give the same images as one group of two.
    grouped = visualize(demo, "conv_2", [2, 5], steps=16, seed=3, batch_size=1)
    torch.testing.assert_close(grouped, first, rtol=0, atol=1e-4)


def test_cnnlens_visualize_is_the_function(demo):
    import cnnlens
    import cnnlens.feature_visualization

    expected = visualize(demo, "conv_1", [4], steps=3)
    assert torch.equal(cnnlens.visualize(demo, "conv_1", [4], steps=3), expected)
    assert "visualize" in cnnlens.__all__ and "ablate" in cnnlens.__all__


def hooks(model: nn.Module) -> list[tuple[str, int, int, int]]:
    return [
        (name, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for name, m in model.named_modules()
    ]


def test_the_callers_model_is_untouched_even_after_errors():
    model = demo_model().train()
    model.features[0].weight.requires_grad_(False)
    own_hook = model.features[2].register_forward_hook(lambda *args: None)
    state = {name: value.clone() for name, value in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    before = hooks(model)
    images = visualize(model, "conv_2", [1], size=28, steps=4)
    with pytest.raises(Cancelled):
        visualize(model, "conv_2", [1], size=28, steps=4, should_stop=lambda: True)
    with pytest.raises(ValueError):
        visualize(model, "conv_2", [99], size=28, steps=4)
    assert images.shape == (1, 1, 28, 28)
    assert hooks(model) == before
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    own_hook.remove()


def test_a_loaded_model_keeps_its_shared_copy_and_gets_no_hooks(demo):
    on_copy = hooks(demo.private_copy.model)
    with torch.inference_mode():  # the caller's grad mode does not matter
        images = visualize(demo, "conv_1", [0], steps=2)
    assert images.shape == (1, 1, 28, 28)
    assert not demo.private_copy.closed and hooks(demo.private_copy.model) == on_copy
    assert all(entry[1:] == (0, 0, 0) for entry in hooks(demo.model))
    assert all(p.grad is None for p in demo.model.parameters())
    assert torch.is_grad_enabled()


def layer_means(model: nn.Module, path: str, pixels: torch.Tensor, spec) -> torch.Tensor:
    """A module's channel means (units for 2-D), from an independent copy with a plain hook."""
    reference = copy.deepcopy(model)
    found = {}

    def keep(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        found.setdefault("out", output.clone())

    reference.get_submodule(path).register_forward_hook(keep)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    with torch.no_grad():
        reference((pixels - mean) / std)
    out = found["out"]
    return out.mean(dim=(2, 3)) if out.dim() == 4 else out


@pytest.fixture(scope="module")
def resnet() -> LoadedModel:
    return open_model("resnet18", weights="random")


def test_the_default_side_is_the_models_input_at_most_128(demo, resnet):
    assert default_side(demo) == 28
    assert default_side(resnet) == 128  # not its 224: Lucid's size, a third of the time
    with pytest.raises(ValueError, match="pass size="):
        default_side(demo.model)


@pytest.mark.parametrize(
    ("path", "channels"), [("layer2", [0, 1, 2, 3]), ("layer3.0.conv1", [5, 9])]
)
def test_resnet18_random_channels_rise_5_std_above_noise(resnet, path, channels):
    loaded = resnet
    images = visualize(loaded, path, channels, size=32, steps=128)
    assert images.shape == (len(channels), 3, 32, 32)
    noise = torch.rand((64, 3, 32, 32), generator=torch.Generator().manual_seed(1))
    on_noise = layer_means(loaded.model, path, noise, loaded.spec)[:, channels]
    reached = layer_means(loaded.model, path, images, loaded.spec)
    reached = reached[torch.arange(len(channels)), channels]
    z = (reached - on_noise.mean(0)) / on_noise.std(0)
    assert bool((z >= 5).all()), z


@pytest.mark.parametrize(
    ("layer", "channels", "size", "error", "message"),
    [
        ("conv_9", [0], None, ValueError, r"Unknown layer 'conv_9'\. Valid layers: conv_1, relu_1"),
        ("conv_2", [3, 32], None, ValueError, r"conv_2 has channels 0 to 31; got 32\."),
        ("conv_2", [-1], None, ValueError, r"conv_2 has channels 0 to 31; got -1\."),
        ("conv_2", [], None, ValueError, r"Choose at least one channel"),
        ("conv_2", [1.5], None, TypeError, r"Channels are whole numbers, got 1\.5"),
        ("conv_2", [0], 4, ValueError, r"size must be a whole number of pixels, at least 8; got 4"),
        ("conv_2", [0], (28, 20), ValueError, r"square"),
    ],
)
def test_bad_choices_raise_clear_errors(demo, layer, channels, size, error, message):
    with pytest.raises(error, match=message):
        visualize(demo, layer, channels, size=size, steps=1)


def test_plain_modules_need_a_size_and_qualified_names_get_close_matches():
    from torchvision.models import resnet18

    model = resnet18(weights=None)
    with pytest.raises(ValueError, match=r"has no input size: pass size="):
        visualize(model, "layer2", [0], steps=1)
    with pytest.raises(ValueError, match=r"Unknown module 'layer3\.0\.conv'\. Close matches: "):
        visualize(model, "layer3.0.conv", [0], size=32, steps=1)
    assert layer_channels(model, "layer3.0.conv1", size=32) == list(range(256))
    assert layer_channels(model, "fc", [999, 3], size=32) == [999, 3]
    with pytest.raises(ValueError, match=r"fc has channels 0 to 999; got 1000\."):
        layer_channels(model, "fc", [1000], size=32)


def test_a_unit_of_a_linear_layer_rises_above_noise():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 5))
    image = visualize(model, "linear_1", [3], size=16, steps=128)
    with torch.no_grad():
        reached = model(image)[0, 3]
        noise = model(torch.rand((64, 3, 16, 16), generator=torch.Generator().manual_seed(0)))
    assert reached > noise[:, 3].mean() + 5 * noise[:, 3].std()


def test_progress_counts_every_step_of_every_group_and_a_stop_raises(demo):
    seen: list[tuple[int, int]] = []
    visualize(
        demo, "conv_1", [0, 1, 2], steps=3, batch_size=2, on_progress=lambda *p: seen.append(p)
    )
    assert seen == [(i, 6) for i in range(1, 7)]
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(Cancelled, match="Stopped after 2 of 3 steps"):
        visualize(demo, "conv_1", [0], steps=3, should_stop=stop)


def atlas(demo, channels, steps, **options) -> ChannelImagesSpec:
    return ChannelImagesSpec(demo, "conv_1", tuple(channels), steps=steps, **options)


def test_cached_tiles_are_stored_per_channel_and_read_back_without_computing(
    demo, tmp_path, monkeypatch
):
    store = ResultStore(tmp_path / "store")
    tiles = store.run(atlas(demo, [1, 2], 8))
    assert tiles.shape == (2, 28, 28) and tiles.dtype == np.uint8
    expected = to_uint8(visualize(demo, "conv_1", [1, 2], steps=8))
    np.testing.assert_array_equal(tiles, expected)
    keys = {ChannelImageSpec(demo, "conv_1", c, steps=8).key for c in (1, 2)}
    assert {p.stem for p in store.folder.glob("*.npz")} == keys
    assert atlas(demo, [2, 3, 1, 3], 8).missing(store) == [(3, False)]
    # Channel 3 alone is computed; 1 and 2 come from the store.
    computed: list[list[int]] = []
    real = visualize_module.visualize

    def counting(model, layer, channels, **kwargs):
        computed.append(list(channels))
        return real(model, layer, channels, **kwargs)

    monkeypatch.setattr(visualize_module, "visualize", counting)
    mixed = store.run(atlas(demo, [3, 1, 2], 8))
    assert computed == [[3]]
    np.testing.assert_array_equal(mixed[1:], tiles)
    # A new store object on the same folder (another process, a restart) computes nothing.
    monkeypatch.setattr(visualize_module, "visualize", None)
    again = ResultStore(store.folder).run(atlas(demo, [2, 3], 8))
    np.testing.assert_array_equal(again, mixed[[2, 0]])
    assert not again.flags.writeable
    both = ResultStore(store.folder).peek(atlas(demo, [1], 8, negatives=(False, True)))
    assert both is None  # the negative image of channel 1 is still to be painted


def test_negative_steps_and_seed_are_keyed_apart(demo):
    keys = {
        ChannelImageSpec(demo, "conv_1", 1, size=28, steps=8).key,
        ChannelImageSpec(demo, "conv_1", 1, steps=8).key,  # 28: the demo's side
        ChannelImageSpec(demo, "conv_1", 1, size=28, steps=8, negative=True).key,
        ChannelImageSpec(demo, "conv_1", 1, size=28, steps=9).key,
        ChannelImageSpec(demo, "conv_1", 1, size=28, steps=8, seed=1).key,
        ChannelImageSpec(demo, "conv_1", 1, size=32, steps=8).key,
        ChannelImageSpec(demo, "conv_2", 1, size=28, steps=8).key,
        ChannelImageSpec(demo, "conv_1", 2, size=28, steps=8).key,
        ChannelImageSpec(demo, "features.0", 1, size=28, steps=8).key,  # conv_1 by its path
    }
    assert len(keys) == 7


def test_a_cancelled_computation_stores_nothing_but_finished_groups_stay(demo, tmp_path):
    store = ResultStore(tmp_path / "store")
    with pytest.raises(Cancelled):
        store.run(atlas(demo, [0, 1], 4), should_stop=lambda: True)
    assert not store.folder.exists() or not list(store.folder.glob("*.npz"))
    seen: list[int] = []

    def stop_in_second_group() -> bool:
        return len(seen) >= 5

    with pytest.raises(Cancelled):
        store.run(
            atlas(demo, [0, 1], 4, batch_size=1),
            on_progress=lambda done, total: seen.append(done),
            should_stop=stop_in_second_group,
        )
    assert seen == [1, 2, 3, 4, 5]
    assert atlas(demo, [0, 1], 4).missing(store) == [(1, False)]


def test_cli_precomputes_tiles_that_the_dashboard_reads_without_computing(
    demo, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "atlas"
    argv = ["visualize", "none", "--model", "demo", "--layers", "conv_1,conv_2"]
    argv += ["--channels", "0-2,5", "--steps", "4", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert "Stored 8 images (8 computed) in " in capsys.readouterr().err
    keys = {
        ChannelImageSpec(demo, layer, c, size=28, steps=4).key
        for layer in ("conv_1", "conv_2")
        for c in (0, 1, 2, 5)
    }
    assert {p.stem for p in out.glob("*.npz")} == keys
    monkeypatch.setattr(visualize_module, "visualize", None)  # computing would fail
    store = ResultStore(out)
    tiles = store.run(ChannelImagesSpec(demo, "conv_2", (5, 0), steps=4))
    assert tiles.shape == (2, 28, 28)
    monkeypatch.undo()
    np.testing.assert_array_equal(tiles, to_uint8(visualize(demo, "conv_2", [5, 0], steps=4)))
    # Run again: everything is stored, nothing is computed.
    assert main(argv) == 0
    assert "Stored 8 images (0 computed) in " in capsys.readouterr().err


@pytest.mark.parametrize(
    ("dataset", "args", "message"),
    [
        ("none", ["--layers", "conv_9"], "Unknown layer 'conv_9'. Valid layers: conv_1, "),
        (
            "none",
            ["--layers", "conv_1", "--channels", "0-40"],
            "conv_1 has channels 0 to 31; got 32, ",
        ),
        ("none", ["--layers", "conv_1", "--channels", "a"], "--channels takes numbers and ranges"),
        ("nowhere", ["--layers", "conv_1"], "nowhere is neither a folder nor 'none'"),
    ],
)
def test_cli_user_errors_are_one_line_with_status_2(tmp_path, capsys, dataset, args, message):
    out = tmp_path / "store"
    argv = ["visualize", dataset, "--model", "demo", *args, "--out", str(out), "--steps", "1"]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlens visualize: error: " + message), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_python_m_cnnlens_visualize_help():
    done = subprocess.run(
        [sys.executable, "-m", "cnnlens", "visualize", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    for option in ("--model", "--layers", "--channels", "--out", "--engine", "--negative"):
        assert option in done.stdout
    assert "needs no data" in " ".join(done.stdout.split())


@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")
def test_ray_run_again_computes_only_the_layers_still_missing(demo, tmp_path, capsys):
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=tempfile.mkdtemp(prefix="ray"),  # short: Ray's socket paths have a limit
    )
    try:
        out = tmp_path / "atlas"
        argv = ["visualize", "none", "--model", "demo", "--channels", "0-1", "--steps", "2"]
        argv += ["--out", str(out), "--engine", "ray", "--quiet"]
        assert main([*argv, "--layers", "conv_2"]) == 0
        assert "Stored 2 images (2 computed)" in capsys.readouterr().err
        # conv_2 is stored: the rerun computes conv_4 alone, instead of stopping with
        # "Choose at least one channel" for the layer with nothing left to do.
        assert main([*argv, "--layers", "conv_2,conv_4"]) == 0
        assert "Stored 4 images (2 computed)" in capsys.readouterr().err
    finally:
        ray.shutdown()
    store = ResultStore(out)
    for layer in ("conv_2", "conv_4"):
        tiles = store.peek(ChannelImagesSpec(demo, layer, (0, 1), steps=2))
        expected = to_uint8(visualize(demo, layer, [0, 1], steps=2))
        # A task's batch rounds like another batch: a level of 255 at most, rarely.
        np.testing.assert_allclose(tiles, expected, atol=1)
        assert (tiles != expected).mean() < 0.01


def test_sigterm_stops_a_ray_run_as_it_stops_a_local_one(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "atlas"
    command = [sys.executable, "-m", "cnnlens", "visualize", "none", "--model", "demo"]
    command += ["--layers", "conv_4", "--steps", "100000", "--out", str(out), "--quiet"]
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray")}
    process = subprocess.Popen([*command, "--engine", "ray"], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # until a Ray task paints
        tasks = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        if "ray::_visualize_group" in tasks:
            break
        time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("no Ray task started within 90 s")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    err = err.decode()
    assert process.returncode == 143, err
    assert "Stopped: the finished groups are kept in" in err and "Traceback" not in err


# --- methods with a prior of the dataset's images -------------------------------------------


@pytest.fixture(scope="module")
def prior(demo):
    from cnnlens.priors import image_prior

    return image_prior(demo, demo_dataset(), images=300, components=16)


@pytest.mark.parametrize("method", ["pca", "maco"])
def test_each_method_gives_the_same_images_for_a_seed_and_others_for_another(demo, prior, method):
    first = visualize(demo, "conv_2", [0, 5], steps=8, method=method, prior=prior)
    again = visualize(demo, "conv_2", [0, 5], steps=8, method=method, prior=prior)
    other = visualize(demo, "conv_2", [0, 5], steps=8, method=method, prior=prior, seed=1)
    assert first.shape == (2, 1, 28, 28) and first.dtype == torch.float32
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, again) and not torch.equal(first, other)
    alone = visualize(demo, "conv_2", [5], steps=8, method=method, prior=prior)
    torch.testing.assert_close(alone[0], first[1], atol=1e-5, rtol=0)


def test_without_a_method_a_prior_picks_the_default_and_no_prior_lucid(demo, prior):
    assert visualize_module.DEFAULT_METHOD == "pca"
    assert torch.equal(
        visualize(demo, "conv_2", [1], steps=4, prior=prior),
        visualize(demo, "conv_2", [1], steps=4, prior=prior, method="pca"),
    )
    assert torch.equal(
        visualize(demo, "conv_2", [1], steps=4),
        visualize(demo, "conv_2", [1], steps=4, method="lucid"),
    )


def test_pca_images_lie_in_the_span_of_the_components_where_not_clipped(demo, prior):
    images = visualize(demo, "conv_2", [0, 3], steps=16, method="pca", prior=prior)
    basis = torch.from_numpy(prior.components).double().T  # 784×16
    mean = torch.from_numpy(prior.mean).double().flatten()
    for image in images.double().flatten(1):
        inside = (image > 1e-6) & (image < 1 - 1e-6)
        assert inside.sum() > 4 * basis.shape[1]  # enough pixels to pin 16 coefficients
        fit = torch.linalg.lstsq(basis[inside], (image - mean)[inside, None]).solution
        residual = (basis[inside] @ fit)[:, 0] - (image - mean)[inside]
        assert residual.abs().max() < 1e-4
        # Clipped pixels are the span image clipped: past 0 or 1 there.
        span = mean + (basis @ fit)[:, 0]
        assert (span[image <= 1e-6] < 1e-4).all() and (span[image >= 1 - 1e-6] > 1 - 1e-4).all()


def test_the_maco_mask_is_the_gradient_magnitude_added_up_over_the_steps(demo, prior):
    """Three steps by hand: the dataset's magnitude, the phase, Lucid's views, the rectified
    output of conv_2 (relu_2) on a fresh copy of the demo CNN, Adam."""
    found = visualize_module.visualize_with_masks(
        demo, "conv_2", [4], steps=3, method="maco", prior=prior, seed=2
    )
    [start], [draws] = visualize_module._start([(4, 0)], (1, 28, 15), 1.0, 3, seed=2)
    phase = start[None].clone().requires_grad_(True)
    magnitude = torch.from_numpy(prior.spectrum)
    free = torch.ones_like(magnitude)
    free[:, 0, 0] = 0  # the mean brightness stays the dataset's
    views = visualize_module._Views(28, draws[None])
    network = demo_model().features[: CONV_2 + 2]  # conv_2 and its ReLU
    optimizer = torch.optim.Adam([phase], lr=0.1)
    mask = torch.zeros((1, 1, 28, 28))

    def image() -> torch.Tensor:
        x = torch.fft.irfft2(torch.polar(magnitude, phase * free), s=(28, 28), norm="ortho")
        return x + (x.clamp(0, 1) - x).detach()

    for step in range(3):
        pixels = image()
        pixels.retain_grad()
        loss = -network(views(pixels, step))[0, 4].mean()
        optimizer.zero_grad()
        loss.backward()
        mask += pixels.grad.abs()
        optimizer.step()
    torch.testing.assert_close(found.masks, mask, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(found.images, image().detach(), rtol=0, atol=1e-5)
    assert found.method == "maco" and found.masks.sum() > 0


def test_diversity_gives_k_different_images_per_channel_and_one_is_the_plain_call(demo, prior):
    plain = visualize(demo, "conv_2", [0, 2], steps=8, method="pca", prior=prior)
    one = visualize(demo, "conv_2", [0, 2], steps=8, method="pca", prior=prior, diversity=1)
    assert torch.equal(plain, one)
    three = visualize(demo, "conv_2", [0, 2], steps=8, method="pca", prior=prior, diversity=3)
    assert three.shape == (6, 1, 28, 28)
    again = visualize(demo, "conv_2", [0, 2], steps=8, method="pca", prior=prior, diversity=3)
    assert torch.equal(three, again)
    for group in three.view(2, 3, -1):
        distances = torch.cdist(group, group)
        assert distances[~torch.eye(3, dtype=torch.bool)].min() > 1.0  # pixels, L2


def test_the_rectified_output_is_the_activation_that_follows_a_layer(demo):
    with visualize_module.borrowed_copy(demo) as (copy, layers, spec):
        found = {
            name: visualize_module._rectified(copy, layers.path(name), spec, 28)
            for name in ("conv_1", "relu_1", "conv_2", "pool_2", "conv_4")
        }
    assert found == {
        "conv_1": "features.1",
        "relu_1": "features.1",
        "conv_2": "features.3",
        "pool_2": "features.4",
        "conv_4": "features.8",
    }


def test_methods_with_a_prior_leave_the_callers_model_untouched(prior):
    model = demo_model().train()
    state = {name: value.clone() for name, value in model.state_dict().items()}
    before = hooks(model)
    for method in ("pca", "maco"):
        images = visualize(model, "conv_2", [1], steps=3, method=method, prior=prior)
        assert images.shape == (1, 1, 28, 28)  # the prior's side: no size needed
    assert hooks(model) == before and model.training
    assert all(p.grad is None for p in model.parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"method": "deepdream"}, ValueError, r"Unknown method 'deepdream': choose one of 'lucid'"),
        ({"method": "pca"}, ValueError, r"needs .*prior=image_prior\(model, dataset\)"),
        ({"method": "maco"}, ValueError, r"or use method='lucid'"),
        ({"diversity": 0}, ValueError, r"diversity must be a whole number, at least 1; got 0"),
        ({"prior": "digits"}, TypeError, r"prior must be an ImagePrior"),
    ],
)
def test_bad_methods_raise_clear_errors(demo, options, error, message):
    with pytest.raises(error, match=message):
        visualize(demo, "conv_2", [0], steps=1, **options)


def test_a_prior_of_another_side_or_model_is_refused(demo, prior):
    with pytest.raises(ValueError, match=r"make one with image_prior\(model, dataset, side=20\)"):
        visualize(demo, "conv_2", [0], size=20, steps=1, method="pca", prior=prior)
    with pytest.raises(ValueError, match=r"3-channel at 16 px"):
        visualize(
            open_model("resnet18"), "layer1", [0], size=16, steps=1, method="pca", prior=prior
        )


def test_stored_tiles_key_the_method_and_prior_and_lucid_keeps_its_keys(demo, tmp_path):
    from cnnlens.priors import ImagePriorSpec
    from cnnlens.results import result_key

    lucid = ChannelImageSpec(demo, "conv_1", 1, steps=8)
    old_parts = {
        "model": "demo",
        "weights": demo.weights_id,
        "dtype": "torch.float32",
        "layer": "features.0",
        "channel": 1,
        "size": 28,
        "steps": 8,
        "seed": 0,
        "negative": False,
    }
    assert lucid.key == result_key(kind="feature_visualization", version=1, **old_parts)
    digits = demo_dataset()
    priors = [ImagePriorSpec(demo, digits, images=n, components=8) for n in (60, 61)]
    keys = {
        lucid.key,
        ChannelImageSpec(demo, "conv_1", 1, steps=8, method="pca", prior=priors[0]).key,
        ChannelImageSpec(demo, "conv_1", 1, steps=8, method="maco", prior=priors[0]).key,
        ChannelImageSpec(demo, "conv_1", 1, steps=8, method="pca", prior=priors[1]).key,
    }
    assert len(keys) == 4
    store = ResultStore(tmp_path)
    tiles = store.run(
        ChannelImagesSpec(demo, "conv_2", (0, 1), steps=8, method="pca", prior=priors[0])
    )
    expected = visualize(demo, "conv_2", [0, 1], steps=8, method="pca", prior=store.run(priors[0]))
    np.testing.assert_array_equal(tiles, to_uint8(expected))
    with pytest.raises(ValueError, match=r"needs prior=ImagePriorSpec\(loaded, dataset\)"):
        ChannelImageSpec(demo, "conv_1", 1, method="pca")
    with pytest.raises(ValueError, match=r"Unknown method 'x'"):
        ChannelImagesSpec(demo, "conv_1", (1,), method="x")


def test_pca_raises_the_rectified_mean_plus_a_share_of_the_layers_own(demo, prior):
    """Three pca steps by hand on the demo's raw conv_1: the mean image plus the bounded
    components, Lucid's views, relu_1's mean plus 0.1 of conv_1's own, Adam."""
    found = visualize_module.visualize_with_masks(
        demo, "conv_1", [5], steps=3, method="pca", prior=prior, seed=1
    )
    k = len(prior.deviations)
    [start], [draws] = visualize_module._start([(5, 0)], (k,), 0.5, 3, seed=1)
    raw = start[None].clone().requires_grad_(True)
    basis = torch.from_numpy(prior.components) * torch.from_numpy(prior.deviations)[:, None]
    mean = torch.from_numpy(prior.mean)
    pixel_mean = torch.from_numpy(prior.pixel_mean).view(-1, 1, 1)
    pixel_std = torch.from_numpy(prior.pixel_std).view(-1, 1, 1)
    views = visualize_module._Views(28, draws[None])
    conv = demo_model().features[0]  # conv_1, without its in-place ReLU
    optimizer = torch.optim.Adam([raw], lr=0.05)
    mask = torch.zeros((1, 1, 28, 28))

    def image() -> torch.Tensor:
        coefficients = 3.0 * torch.tanh(raw / 3.0)
        typical = 0.7 * k**0.5
        coefficients = coefficients * (
            typical / coefficients.norm(dim=-1, keepdim=True).clamp(min=typical)
        )
        x = (mean + (coefficients @ basis).view(-1, *mean.shape)) * pixel_std + pixel_mean
        return x + (x.clamp(0, 1) - x).detach()

    for step in range(3):
        pixels = image()
        pixels.retain_grad()
        own = conv((views(pixels, step) - pixel_mean) / pixel_std)[0, 5]
        loss = -(torch.relu(own).mean() + 0.1 * own.mean())
        optimizer.zero_grad()
        loss.backward()
        mask += pixels.grad.abs()
        optimizer.step()
    torch.testing.assert_close(found.images, image().detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(found.masks, mask, rtol=1e-4, atol=1e-7)
    assert visualize_module._METHOD_VERSIONS["pca"] == 2  # its images changed: new keys


def test_a_mask_spec_stores_visualize_with_masks_mask_and_its_picture(demo, tmp_path):
    from cnnlens.priors import ImagePriorSpec

    digits = demo_dataset()
    prior_spec = ImagePriorSpec(demo, digits, images=60, components=8)
    tile = ChannelImageSpec(demo, "conv_2", 3, steps=8, method="pca", prior=prior_spec)
    spec = ChannelMaskSpec.of(tile)
    assert spec.image.key == tile.key and spec.key != tile.key
    store = ResultStore(tmp_path)
    assert store.peek(tile) is None
    mask = store.run(spec)
    expected = visualize_module.visualize_with_masks(
        demo, "conv_2", [3], steps=8, method="pca", prior=store.run(prior_spec)
    )
    assert mask.dtype == np.float32 and mask.shape == (1, 28, 28)
    np.testing.assert_array_equal(mask, expected.masks[0].numpy())
    np.testing.assert_array_equal(store.peek(tile), to_uint8(expected.images)[0])
    again = ResultStore(tmp_path)  # another session: read back from disk
    np.testing.assert_array_equal(again.peek(spec), mask)
