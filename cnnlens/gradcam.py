"""Grad-CAM: where in an image a layer holds the evidence for a class.

It runs on the loaded model's private copy, like every other look inside the
model: the layer's output becomes, for this call only, a leaf whose gradient is
kept, and the rest of the forward goes on from a copy of it, so in-place ops
after the layer change nothing and calls from many threads never meet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from cnnlens.private_copy import check_batch

if TYPE_CHECKING:
    from cnnlens.models import LoadedModel

__all__ = ["grad_cam"]


def _class_score(logits: object, class_index: int | None) -> torch.Tensor:
    """The logit of the class to explain (default: the predicted class) of a 1×K output."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"Grad-CAM needs class scores, but this model outputs {shape}.")
    classes = logits.shape[1]
    if class_index is None:
        class_index = int(logits.argmax(dim=1))
    elif not 0 <= class_index < classes:
        raise ValueError(f"class_index must be between 0 and {classes - 1}; got {class_index}.")
    return logits[0, class_index]


def _whole_class(loaded: LoadedModel, class_index: object) -> int | None:
    """The class index as an int, or ``None`` for the predicted class.

    Raises:
        TypeError: for anything but a whole number, naming the valid range.
    """
    if class_index is None:
        return None
    if isinstance(class_index, bool) or not isinstance(class_index, int | np.integer):
        span = f" from 0 to {len(loaded.classes) - 1}" if loaded.classes else ""
        raise TypeError(
            f"class_index must be a whole number{span}, or None for the predicted class; "
            f"got {class_index!r}."
        )
    return int(class_index)


def grad_cam(
    loaded: LoadedModel, batch: torch.Tensor, layer: str, class_index: int | None = None
) -> np.ndarray:
    """Grad-CAM: where in the image a layer holds the evidence for a class.

    Each channel of the layer is weighted by the mean gradient of the class score
    with respect to it; the weighted sum, negatives set to zero, is scaled up
    (bilinear) to the input's size.

    Example:
        >>> from cnnlens import demo_dataset, grad_cam, open_model
        >>> loaded, dataset = open_model("demo"), demo_dataset()
        >>> batch = loaded.batch(dataset.load_image(dataset.pick(128)))
        >>> grad_cam(loaded, batch, "relu_4").shape  # the predicted class, at the input's size
        (28, 28)

    Args:
        loaded: the model; it must output class scores.
        batch: one preprocessed image, 1×C×H×W (``loaded.batch(image)``).
        layer: a layer name of ``loaded.layer_names()``, or any module's qualified name.
        class_index: the class to explain; default the predicted class.

    Returns:
        An H×W float32 map in input resolution, zero where the layer holds no evidence.

    Raises:
        TypeError: for a batch that is not a tensor (a numpy array: the message says how
            to convert it), or a class index that is not a whole number.
        ValueError: for an unknown layer, a class out of range (the message names the
            range), a batch that is not one 1×C×H×W image or holds NaN, an input the
            network does not take, or a model that does not output class scores.
    """
    check_batch(batch, one_image=True, name="Grad-CAM")
    chosen = _whole_class(loaded, class_index)
    path = loaded.layers.path(layer)
    activation, gradient = loaded.private_copy.gradient(
        batch, path, lambda logits: _class_score(logits, chosen)
    )
    if activation.dim() != 4:
        raise ValueError(f"{layer} gives no feature maps; choose a convolutional layer.")
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = (weights * activation).sum(dim=1, keepdim=True).clamp(min=0)
    cam = F.interpolate(cam.float(), size=tuple(batch.shape[-2:]), mode="bilinear")
    return cam[0, 0].cpu().numpy()
