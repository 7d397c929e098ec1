"""What one forward pass shows about one image: the chosen layers' maps, the class
probabilities and the image as the network sees it.

The dashboard's Feature maps page, its Compare section and the exports read this.
With probabilities to show, it is one forward of the model's private copy to the
end, keeping a copy of each target's output on the way (the extractor alone would
stop at the deepest target, and the probabilities cost a second, full forward).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cnnlens.preprocess import as_input
from cnnlens.private_copy import ModuleNotRun, tensor_output

if TYPE_CHECKING:
    from cnnlens.models import LoadedModel

__all__ = ["ImageFeatures", "image_features", "maps_and_logits"]

# Below this many input values per channel a forward is a few ms: one thread does it
# fastest, and OpenMP's second thread, contending with a server's other work for two
# cores, can turn 3 ms into 100 ms.
_ONE_THREAD_PIXELS = 64 * 64


@dataclass(frozen=True)
class ImageFeatures:
    """What one forward pass shows about one image.

    Attributes:
        maps: each target layer's output for the image (C×H×W float32 for a map).
        probabilities: one per class, or ``None`` without a classifier or with random
            weights (whose guesses mean nothing).
        seen: the image as the network sees it (resized, cropped), uint8.
    """

    maps: dict[str, np.ndarray]
    probabilities: np.ndarray | None
    seen: np.ndarray

    @property
    def nbytes(self) -> int:
        """The memory its arrays take."""
        arrays = [*self.maps.values(), self.seen]
        if self.probabilities is not None:
            arrays.append(self.probabilities)
        return sum(array.nbytes for array in arrays)


@dataclass
class _KeepTargets:
    """A :class:`~cnnlens.private_copy.Call` that lets the forward run to the end and
    keeps a copy of each target's first output: later in-place ops (a ReLU after a
    conv) write into the forward's own tensors, never into the copies."""

    paths: frozenset[str]
    kept: dict[str, torch.Tensor] = field(default_factory=dict)

    def on_output(self, path: str, inputs: tuple[Any, ...], output: Any) -> None:
        if path in self.paths and path not in self.kept:
            self.kept[path] = tensor_output(path, output).clone()


def maps_and_logits(
    loaded: LoadedModel, batch: torch.Tensor, targets: Sequence[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The targets' outputs and the model's output, from one forward of the private copy.

    Returns:
        ``{target: tensor}`` in network order, and the model's output (the logits).

    Raises:
        ValueError: if a target is not a layer, does not run or returns no tensor, or the
            batch does not fit the network.
    """
    layers = loaded.layers
    paths = {name: layers.path(name) for name in layers.check(targets)}
    call = _KeepTargets(frozenset(paths.values()))
    copy = loaded.private_copy
    with torch.inference_mode():
        logits = copy.run(copy.prepare(batch), call)
    missing = [path for path in paths.values() if path not in call.kept]
    if missing:
        raise ModuleNotRun(missing)
    return {name: call.kept[path] for name, path in paths.items()}, logits


def image_features(
    loaded: LoadedModel, pixels: np.ndarray, targets: Sequence[str]
) -> ImageFeatures:
    """The target layers' maps, the class probabilities and the network's view of one image.

    Example:
        >>> import numpy as np
        >>> from cnnlens import image_features, open_model
        >>> pixels = np.zeros((28, 28), np.uint8)
        >>> seen = image_features(open_model("demo"), pixels, ["conv_1", "conv_3"])
        >>> seen.maps["conv_3"].shape, seen.probabilities.shape
        ((64, 14, 14), (10,))

    Args:
        loaded: the model.
        pixels: the image, uint8 (H×W or H×W×3), any size: it is resized as the weights expect.
        targets: the layers.

    Raises:
        ValueError: if the image does not fit the model, holds NaN or infinite values,
            or a target is not a layer.
    """
    from PIL import Image

    if np.issubdtype(np.asarray(pixels).dtype, np.inexact) and not np.isfinite(pixels).all():
        bad = int((~np.isfinite(pixels)).sum())
        raise ValueError(
            f"The image holds NaN (or infinite) values: {bad:,} of {np.size(pixels):,}, so "
            "its maps and answers would mean nothing. Replace them (np.nan_to_num) or check "
            "how the image was made."
        )
    batch = loaded.batch(pixels)
    threads = torch.get_num_threads()  # per thread: other sessions keep theirs
    if batch[0].numel() <= _ONE_THREAD_PIXELS * batch.shape[1]:
        torch.set_num_threads(1)
    try:
        if loaded.classes is None or loaded.weights.startswith("random"):
            # Nothing to predict (random weights' guesses mean nothing): stop at the maps.
            maps, probabilities = loaded.extractor(list(targets))(batch), None
        else:
            maps, logits = maps_and_logits(loaded, batch, targets)
            probabilities = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
    finally:
        torch.set_num_threads(threads)
    return ImageFeatures(
        {name: value[0].float().cpu().numpy() for name, value in maps.items()},
        probabilities,
        np.asarray(as_input(Image.fromarray(pixels), loaded.spec)),
    )
