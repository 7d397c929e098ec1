"""Preprocessing: images to the tensors a network takes, and tensors back to pixels.

Every path gives the same values as torchvision's ``ImageClassification``
transforms: the image in the model's mode, its shorter side resized to
``spec.resize`` and the centre cropped to ``spec.size`` (or resized straight to
``spec.size``), scaled to [0, 1], then normalised when the spec has a mean and std.

:func:`to_batch` does it all on the CPU in float32. The batch pipeline instead
sends uint8 pixels (:func:`to_uint8_batch`, a quarter of the bytes) and scales
them on the model's device with :func:`scale_uint8_batch`, to the same values.
:func:`to_uint8_image` undoes the scaling for display.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

from cnnlens.images import open_image, open_plain_png, to_mode
from cnnlens.registry import DEMO_INPUT, InputSpec

__all__ = [
    "as_input",
    "decode_as_input",
    "scale_uint8_batch",
    "to_batch",
    "to_uint8_batch",
    "to_uint8_image",
]


def _resized(image: Image.Image, spec: InputSpec) -> Image.Image:
    """Resize as torchvision's ``ImageClassification``: shorter side, then centre crop."""
    height, width = spec.size
    resample = (
        Image.Resampling.BICUBIC if spec.interpolation == "bicubic" else Image.Resampling.BILINEAR
    )
    if spec.resize is None:
        return image if image.size == (width, height) else image.resize((width, height), resample)
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_short, new_long = spec.resize, int(spec.resize * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    if size != image.size:
        image = image.resize(size, resample)
    left = round((size[0] - width) / 2.0)
    top = round((size[1] - height) / 2.0)
    return image.crop((left, top, left + width, top + height))


def as_input(image: Image.Image, spec: InputSpec = DEMO_INPUT) -> Image.Image:
    """The image as the network sees it, before scaling: in the model's mode, resized
    and centre-cropped as :func:`to_batch` does. A map lies over this, not over the
    uncropped image."""
    return _resized(to_mode(image, spec.mode), spec)


def decode_as_input(data: bytes, spec: InputSpec, name: str = "the image") -> Image.Image:
    """Decode image bytes straight to :func:`as_input`.

    A plain PNG already at the model's size (MNIST-style data) skips Pillow's
    file parser, with the same values for half the time.

    Raises:
        ValueError: if the bytes cannot be decoded, with the reason.
    """
    image = _plain_png(data, spec)
    if image is None:
        return as_input(open_image(data, name=name), spec)
    return image if image.mode == spec.mode else to_mode(image, spec.mode)


def _plain_png(data: bytes, spec: InputSpec) -> Image.Image | None:
    """:func:`cnnlens.images.open_plain_png` where the spec keeps such an image as it is."""
    if spec.resize is not None and spec.resize != min(spec.size):
        return None  # a resize of the shorter side changes even an image of spec.size
    return open_plain_png(data, spec.size)


Pictures = Image.Image | np.ndarray | list[Image.Image] | list[np.ndarray]
"""Images a batch is made of: Pillow images, or uint8 pixels (H×W or H×W×3), one or a list."""


def to_batch(images: Pictures, spec: InputSpec = DEMO_INPUT) -> torch.Tensor:
    """Turn images into an N×C×H×W float batch for a model.

    Each image (Pillow, or uint8 pixels H×W or H×W×3) is converted to the model's
    mode, resized (with ``spec.resize``, its shorter side to that and the centre
    cropped to ``spec.size``, as torchvision's transforms do; else straight to
    ``spec.size``) and scaled to [0, 1], then normalised when the spec has a mean and std.
    """
    if isinstance(images, Image.Image | np.ndarray):
        images = [images]
    arrays = []
    for image in images:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        image = as_input(image, spec)
        array = np.asarray(image, dtype=np.float32) / 255.0
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    batch = torch.from_numpy(np.stack(arrays))
    if spec.mean is not None and spec.std is not None:
        mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
        std = torch.tensor(spec.std).view(1, -1, 1, 1)
        batch = (batch - mean) / std
    return batch


def to_uint8_batch(images: list[Image.Image], spec: InputSpec) -> torch.Tensor:
    """Images already in the model's mode and size as one N×C×H×W uint8 batch.

    They are pasted into one tall image, read out once: reading a small image
    out of Pillow costs as much as decoding it.
    """
    height, width = spec.size
    strip = Image.new(spec.mode, (width, height * len(images)))
    for i, image in enumerate(images):
        strip.paste(image, (0, i * height))
    pixels = torch.frombuffer(bytearray(strip.tobytes()), dtype=torch.uint8)
    return pixels.view(len(images), height, width, -1).permute(0, 3, 1, 2).contiguous()


def scale_uint8_batch(
    pixels: torch.Tensor, spec: InputSpec, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Scale an N×C×H×W uint8 batch on ``device`` as :func:`to_batch` scales images.

    The arithmetic is float32 whatever ``dtype``, so the values equal
    ``to_batch(images, spec).to(dtype)``.
    """
    scale, mean, std = _constants(spec, torch.device(device))
    x = pixels.to(device, non_blocking=True).float() / scale
    if mean is not None and std is not None:
        x = (x - mean) / std
    return x.to(dtype)


@functools.lru_cache(maxsize=16)
def _constants(
    spec: InputSpec, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The scaling tensors of a spec on a device, made once: making them waits for the GPU.

    The divisor is a 0-dim tensor, not a Python number, which torch would turn
    into a multiplication by its reciprocal, one rounding away from to_batch.
    """
    scale = torch.tensor(255.0, device=device)
    if spec.mean is None or spec.std is None:
        return scale, None, None
    mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
    return scale, mean, std


def to_uint8_image(batch: torch.Tensor, spec: InputSpec) -> np.ndarray:
    """The first image of a network batch back as uint8 pixels, for display.

    Undoes the spec's normalisation, so the pixels are :func:`as_input`'s
    and crops of them line up with the maps.

    Returns:
        H×W for a 1-channel model, H×W×3 for an RGB one.
    """
    image = batch[0].detach().float().cpu()
    if spec.mean is not None and spec.std is not None:
        std = torch.tensor(spec.std).view(-1, 1, 1)
        image = image * std + torch.tensor(spec.mean).view(-1, 1, 1)
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
