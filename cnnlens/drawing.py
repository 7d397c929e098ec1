"""A digit drawn on a pad: its strokes, their compact text form, and the network's input.

The pad's strokes are polylines on a ``PAD_SIDE``-pixel square (whole coordinates
0 to ``PAD_SIDE - 1``) drawn with one round pen. :class:`Drawing` holds them, writes
them as a short URL-safe text (:meth:`Drawing.encode`, a few hundred characters for a
digit, so a link carries the drawing) and paints them as white ink on black
(:meth:`Drawing.ink`).

:func:`drawing_pixels` turns the ink into what a model takes. A grayscale model of
28×28 (the demo, any MNIST network) gets the drawing as MNIST's digits were made
(:func:`mnist_fit`): cropped to its ink, scaled to fit a 20×20 box with its aspect kept,
and placed in 28×28 with its centre of mass in the middle. Any other input gets the
whole pad resized, black strokes on white for a colour model.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from cnnlens.registry import InputSpec

__all__ = [
    "MNIST_BOX",
    "MNIST_SIDE",
    "PAD_SIDE",
    "PEN_WIDTH",
    "SAMPLE",
    "Drawing",
    "check_ink",
    "drawing_pixels",
    "mnist_fit",
]

PAD_SIDE = 256
"""The pad's side in its own pixels: a point's coordinates are whole numbers below it."""
PEN_WIDTH = 22
"""The pen's width on the pad. A digit drawn about 200 of the pad's 256 pixels tall
becomes 20 pixels tall in MNIST's 28×28, and its strokes about 2.2 pixels wide:
MNIST's own strokes are 2 to 3 pixels."""
MNIST_SIDE = 28
MNIST_BOX = 20
"""MNIST's digits fit a 20×20 box (aspect kept), centred by mass in 28×28."""
MAX_STROKES = 64
MAX_POINTS = 4096
"""A drawing holds at most this many strokes and points in all (a digit needs a few
hundred points): the text form stays a few kilobytes at most."""
FULL_PAD = 0.5
"""A drawing whose ink covers more of the pad than this is refused: no digit left."""
_VERSION = 1


@dataclass(frozen=True)
class Drawing:
    """Strokes on the pad, each a polyline of ``(x, y)`` points, and the pen's width.

    Raises:
        ValueError: for a point off the pad, too many strokes or points, an empty
            stroke, or a pen width outside 1 to 64.
        TypeError: for coordinates that are not whole numbers.
    """

    strokes: tuple[tuple[tuple[int, int], ...], ...]
    width: int = PEN_WIDTH

    def __post_init__(self) -> None:
        if not isinstance(self.width, int) or isinstance(self.width, bool):
            raise TypeError(f"The pen width must be a whole number; got {self.width!r}.")
        if not 1 <= self.width <= 64:
            raise ValueError(f"The pen width must be 1 to 64 pad pixels; got {self.width}.")
        if len(self.strokes) > MAX_STROKES:
            raise ValueError(
                f"A drawing holds at most {MAX_STROKES} strokes; this one has "
                f"{len(self.strokes)}. Clear the pad and draw again."
            )
        points = sum(len(stroke) for stroke in self.strokes)
        if points > MAX_POINTS:
            raise ValueError(
                f"A drawing holds at most {MAX_POINTS} points; this one has {points}. "
                "Clear the pad and draw again."
            )
        for stroke in self.strokes:
            if not stroke:
                raise ValueError("A stroke has no points.")
            for point in stroke:
                _check_point(point)

    @classmethod
    def of(cls, strokes: Sequence[Sequence[Sequence[int]]], width: int = PEN_WIDTH) -> Drawing:
        """A drawing from nested lists, as the pad sends them: ``[[[x, y], ...], ...]``.

        >>> Drawing.of([[[10, 10], [10, 200]]]).strokes
        (((10, 10), (10, 200)),)
        """
        if isinstance(strokes, (str, bytes)) or not isinstance(strokes, Sequence):
            raise TypeError("Strokes must be a list of lists of [x, y] points.")
        try:
            shaped = tuple(tuple((point[0], point[1]) for point in stroke) for stroke in strokes)
        except (TypeError, IndexError, KeyError) as error:
            raise TypeError("Strokes must be a list of lists of [x, y] points.") from error
        return cls(shaped, width)

    @property
    def empty(self) -> bool:
        """Whether nothing is drawn."""
        return not self.strokes

    def encode(self) -> str:
        """The drawing as a short URL-safe text, which :meth:`decode` reads back.

        >>> Drawing.decode(Drawing.of([[[0, 5], [255, 9]]]).encode()).strokes
        (((0, 5), (255, 9)),)
        """
        data = bytearray((_VERSION, self.width))
        for stroke in self.strokes:
            data += len(stroke).to_bytes(2, "big")
            for x, y in stroke:
                data += bytes((x, y))
        return base64.urlsafe_b64encode(bytes(data)).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Drawing:
        """The drawing written by :meth:`encode`; ``""`` is the empty pad.

        Raises:
            ValueError: if the text is not a drawing (a link cut short or edited).
        """
        if not text:
            return cls(())
        try:
            data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError) as error:
            raise ValueError("This is not a drawing: its text is damaged.") from error
        if len(data) < 2 or data[0] != _VERSION:
            raise ValueError("This is not a drawing: its text is damaged.")
        strokes, at = [], 2
        while at < len(data):
            count = int.from_bytes(data[at : at + 2], "big")
            points = data[at + 2 : at + 2 + 2 * count]
            if count == 0 or len(points) != 2 * count:
                raise ValueError("This is not a drawing: its text is cut short.")
            strokes.append(tuple(zip(points[::2], points[1::2], strict=True)))
            at += 2 + 2 * count
        return cls(tuple(strokes), data[1])

    def ink(self) -> np.ndarray:
        """The strokes painted with the round pen: white ink on black, PAD_SIDE² uint8."""
        image = Image.new("L", (PAD_SIDE, PAD_SIDE), 0)
        draw = ImageDraw.Draw(image)
        radius = self.width / 2
        for stroke in self.strokes:
            if len(stroke) > 1:
                draw.line(stroke, fill=255, width=self.width, joint="curve")
            for x, y in (stroke[0], stroke[-1]):  # round caps, and a lone point's dot
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
        return np.asarray(image)


def _check_point(point: tuple[int, int]) -> None:
    for value in point:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"A point's coordinates must be whole numbers; got {point!r}.")
        if not 0 <= value < PAD_SIDE:
            raise ValueError(f"The point {tuple(point)} is off the {PAD_SIDE}×{PAD_SIDE} pad.")


SAMPLE = Drawing(
    (
        (
            (75, 61), (88, 58), (98, 56), (111, 53), (124, 52), (136, 54), (147, 56),
            (158, 61), (165, 67), (171, 78), (171, 90), (164, 102), (155, 109), (142, 114),
            (134, 120), (139, 131), (152, 136), (164, 142), (172, 150), (178, 158),
            (179, 167), (178, 176), (172, 184), (163, 191), (151, 197), (138, 201),
            (125, 202), (111, 201), (98, 197), (88, 194), (78, 190), (75, 190),
        ),
    )
)  # fmt: skip
"""A handwritten 3, on the pad when a session starts, until it is cleared."""


def mnist_fit(ink: np.ndarray) -> np.ndarray:
    """Ink (H×W uint8, white on black) as MNIST made its digits: 28×28 uint8.

    The ink is cropped to its bounding box, scaled (Lanczos, aspect kept) so its longer
    side is 20 pixels, and placed in 28×28 with its centre of mass at pixel (14, 14),
    rounded to whole pixels and kept inside the frame. The demo's own training digits
    have their centre of mass at (13.98, 14.01) on average.

    Raises:
        ValueError: if there is no ink.
    """
    rows, cols = np.nonzero(ink)
    if rows.size == 0:
        raise ValueError("There is no ink: draw a digit.")
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = crop.shape
    scale = MNIST_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    box = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS))
    out = np.zeros((MNIST_SIDE, MNIST_SIDE), np.uint8)
    mass = box.astype(np.float64)
    total = mass.sum()
    if total == 0:  # ink too faint to survive the scaling: centre the box instead
        centre_y, centre_x = (box.shape[0] - 1) / 2, (box.shape[1] - 1) / 2
    else:
        centre_y = (mass.sum(axis=1) @ np.arange(box.shape[0])) / total
        centre_x = (mass.sum(axis=0) @ np.arange(box.shape[1])) / total
    top = _place(MNIST_SIDE // 2 - centre_y, box.shape[0])
    left = _place(MNIST_SIDE // 2 - centre_x, box.shape[1])
    out[top : top + box.shape[0], left : left + box.shape[1]] = box
    return out


def _place(offset: float, length: int) -> int:
    """Where a box of ``length`` starts: ``offset`` rounded (halves away from zero),
    kept inside the 28-pixel frame."""
    start = int(np.floor(abs(offset) + 0.5)) * (1 if offset >= 0 else -1)
    return min(max(start, 0), MNIST_SIDE - length)


def drawing_pixels(drawing: Drawing, spec: InputSpec) -> np.ndarray:
    """What a model with this input takes from the drawing, as uint8 pixels.

    A grayscale 28×28 model gets :func:`mnist_fit` of the ink; any other grayscale model
    the pad resized to its size; a colour model black strokes on white, resized (H×W×3).

    Raises:
        ValueError: for an empty pad, a single dot, or a pad filled with ink, saying
            what to draw instead.
    """
    ink = drawing.ink()
    check_ink(drawing, ink)
    if spec.mode == "L" and tuple(spec.size) == (MNIST_SIDE, MNIST_SIDE):
        return mnist_fit(ink)
    height, width = spec.size
    resized = np.asarray(Image.fromarray(ink).resize((width, height), Image.Resampling.LANCZOS))
    if spec.mode == "L":
        return resized
    return np.repeat((255 - resized)[:, :, None], 3, axis=2)


def check_ink(drawing: Drawing, ink: np.ndarray) -> None:
    """Refuse a drawing that holds no digit, in words a person can act on.

    Raises:
        ValueError: for an empty pad, a drawing no larger than a dot of the pen, or ink
            over more than half the pad.
    """
    if drawing.empty:
        raise ValueError("The pad is empty: draw a digit on it.")
    points = np.array([point for stroke in drawing.strokes for point in stroke])
    if np.ptp(points, axis=0).max() < drawing.width:
        raise ValueError(
            "That is a dot, not a digit: draw a digit's strokes, about as tall as the pad."
        )
    covered = float(np.count_nonzero(ink)) / ink.size
    if covered > FULL_PAD:
        raise ValueError(
            f"Ink covers {covered:.0%} of the pad, so no digit stands out: clear the pad "
            "and draw one digit with the pen."
        )
