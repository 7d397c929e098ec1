"""The drawing pad's core: strokes and their text, MNIST's preprocessing, and the demo
reading digits drawn from stroke templates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from cnnlens.drawing import (
    MNIST_BOX,
    PAD_SIDE,
    PEN_WIDTH,
    SAMPLE,
    Drawing,
    drawing_pixels,
    mnist_fit,
)
from cnnlens.models import demo_model
from cnnlens.preprocess import to_batch
from cnnlens.registry import DEMO_INPUT, InputSpec

# Ten digits as a person writes them: polylines in a unit box (x right, y down).
TEMPLATES = {
    "0": [
        [(0.5, 0.05), (0.25, 0.15), (0.15, 0.5), (0.25, 0.85), (0.5, 0.95), (0.75, 0.85),
         (0.85, 0.5), (0.75, 0.15), (0.5, 0.05)],
    ],
    "1": [
        [(0.5, 0.05), (0.5, 0.95)],
    ],
    "2": [
        [(0.2, 0.25), (0.35, 0.08), (0.6, 0.05), (0.78, 0.2), (0.75, 0.42), (0.2, 0.92)],
        [(0.2, 0.92), (0.85, 0.92)],
    ],
    "3": [
        [(0.2, 0.12), (0.5, 0.05), (0.75, 0.15), (0.75, 0.35), (0.45, 0.48), (0.78, 0.6),
         (0.8, 0.82), (0.5, 0.95), (0.2, 0.85)],
    ],
    "4": [
        [(0.65, 0.95), (0.65, 0.05), (0.15, 0.65), (0.85, 0.65)],
    ],
    "5": [
        [(0.8, 0.05), (0.3, 0.05)],
        [(0.3, 0.05), (0.25, 0.45), (0.55, 0.4), (0.8, 0.55)],
        [(0.8, 0.55), (0.78, 0.82), (0.5, 0.95), (0.2, 0.88)],
    ],
    "6": [
        [(0.7, 0.05), (0.35, 0.35), (0.2, 0.7), (0.35, 0.93), (0.65, 0.93), (0.78, 0.72),
         (0.6, 0.52), (0.35, 0.55), (0.22, 0.7)],
    ],
    "7": [
        [(0.15, 0.08), (0.85, 0.08), (0.45, 0.95)],
    ],
    "8": [
        [(0.5, 0.5), (0.25, 0.3), (0.3, 0.1), (0.5, 0.05), (0.7, 0.1), (0.75, 0.3), (0.5, 0.5),
         (0.22, 0.7), (0.3, 0.92), (0.5, 0.95), (0.7, 0.92), (0.78, 0.7), (0.5, 0.5)],
    ],
    "9": [
        [(0.75, 0.3), (0.6, 0.08), (0.35, 0.1), (0.25, 0.3), (0.4, 0.48), (0.7, 0.42),
         (0.75, 0.3), (0.72, 0.6), (0.65, 0.95)],
    ],
}  # fmt: skip


def render_template(
    strokes: list[list[tuple[float, float]]], box: tuple[float, float, float] = (28, 28, 200)
) -> np.ndarray:
    """The test's own rendering of a template on a pad: supersampled 4×, then averaged.

    Args:
        box: left, top and side of the square the template is drawn in, in pad pixels.
    """
    scale = 4
    left, top, side = box
    image = Image.new("L", (PAD_SIDE * scale, PAD_SIDE * scale), 0)
    draw = ImageDraw.Draw(image)
    width = PEN_WIDTH * scale
    for stroke in strokes:
        points = [((left + x * side) * scale, (top + y * side) * scale) for x, y in stroke]
        draw.line(points, fill=255, width=width, joint="curve")
        for x, y in points:
            draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=255)
    return np.asarray(image.resize((PAD_SIDE, PAD_SIDE), Image.Resampling.BOX))


def reference_fit(ink: np.ndarray) -> np.ndarray:
    """MNIST's preprocessing written again from its description, with scipy's centre of
    mass: bounding box, longer side to 20 (Lanczos), centre of mass to (14, 14)."""
    ys, xs = np.where(ink > 0)
    crop = Image.fromarray(ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
    factor = 20 / max(crop.size)
    size = (max(1, int(crop.size[0] * factor + 0.5)), max(1, int(crop.size[1] * factor + 0.5)))
    small = np.asarray(crop.resize(size, Image.Resampling.LANCZOS))
    cy, cx = ndimage.center_of_mass(small.astype(np.float64))
    top = int(np.clip(np.sign(14 - cy) * np.floor(abs(14 - cy) + 0.5), 0, 28 - small.shape[0]))
    left = int(np.clip(np.sign(14 - cx) * np.floor(abs(14 - cx) + 0.5), 0, 28 - small.shape[1]))
    canvas = np.zeros((28, 28), np.uint8)
    canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
    return canvas


def test_a_block_of_ink_is_fit_to_20_pixels_and_centred_by_hand():
    ink = np.zeros((256, 256), np.uint8)
    ink[30:130, 150:200] = 255  # 100 tall, 50 wide, far from the centre
    fitted = mnist_fit(ink)
    expected = np.zeros((28, 28), np.uint8)
    # 20×10 box; its centre of mass (9.5, 4.5) goes to (14, 14): rows 4.5 → 5 (halves
    # away from zero), columns 9.5 → 10.
    expected[5:25, 10:20] = 255
    np.testing.assert_array_equal(fitted, expected)


def test_the_fit_keeps_the_aspect_and_reaches_20_pixels_on_the_longer_side():
    ink = render_template(TEMPLATES["7"], box=(10, 60, 120))
    fitted = mnist_fit(ink)
    ys, xs = np.nonzero(fitted)
    assert max(np.ptp(ys), np.ptp(xs)) + 1 == MNIST_BOX
    cy, cx = ndimage.center_of_mass(fitted.astype(np.float64))
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5


@pytest.mark.parametrize("digit", sorted(TEMPLATES))
def test_the_fit_equals_an_independent_reference(digit):
    for box in ((28, 28, 200), (0, 100, 90), (150, 10, 100)):
        ink = render_template(TEMPLATES[digit], box=box)
        np.testing.assert_array_equal(mnist_fit(ink), reference_fit(ink))


def test_a_digit_too_close_to_the_edge_stays_inside_the_frame():
    ink = np.zeros((256, 256), np.uint8)
    ink[0:200, 0:10] = 255  # a bar with a heavy head
    ink[0:20, 0:200] = 255
    fitted = mnist_fit(ink)
    assert fitted.shape == (28, 28)
    assert np.count_nonzero(fitted) > 0.8 * np.count_nonzero(reference_fit(ink))


def test_the_demo_reads_nine_of_ten_drawn_digits():
    model = demo_model()
    right = []
    for digit, strokes in TEMPLATES.items():
        pixels = mnist_fit(render_template(strokes))
        with torch.no_grad():
            answer = int(model(to_batch(pixels)).argmax())
        right.append(answer == int(digit))
    assert sum(right) >= 9, dict(zip(TEMPLATES, right, strict=True))


def test_a_small_digit_off_centre_reads_the_same_after_the_fit():
    model = demo_model()
    strokes = TEMPLATES["4"]
    answers = []
    for box in ((28, 28, 200), (150, 150, 90), (5, 120, 70)):
        with torch.no_grad():
            answers.append(int(model(to_batch(mnist_fit(render_template(strokes, box)))).argmax()))
    assert answers == [4, 4, 4]


def test_the_text_form_round_trips_and_stays_short():
    drawing = Drawing.of([[[0, 0], [255, 255], [3, 200]], [[10, 10]]], width=9)
    text = drawing.encode()
    assert Drawing.decode(text) == drawing
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(SAMPLE.encode()) < 120  # a link carries it


@pytest.mark.parametrize(
    ("text", "words"),
    [("!!", "damaged"), ("AQ", "damaged"), ("ARYAAw", "cut short"), ("AhYAAQAA", "damaged")],
)
def test_a_damaged_text_is_refused_in_words(text, words):
    with pytest.raises(ValueError, match=words):
        Drawing.decode(text)


def test_strokes_off_the_pad_or_not_numbers_are_refused():
    with pytest.raises(ValueError, match="off the 256×256 pad"):
        Drawing.of([[[0, 0], [256, 3]]])
    with pytest.raises(TypeError, match="whole numbers"):
        Drawing.of([[[0.5, 3]]])
    with pytest.raises(TypeError, match="list of lists"):
        Drawing.of("12")
    with pytest.raises(ValueError, match="at most 4096 points"):
        Drawing.of([[[1, 1]] * 4097])
    with pytest.raises(ValueError, match="pen width"):
        Drawing.of([[[1, 1]]], width=0)


def test_the_ink_is_the_strokes_with_a_round_pen():
    ink = Drawing.of([[[100, 50], [100, 200]]], width=20).ink()
    assert ink[50:201, 91:110].min() == 255  # the line, full width
    assert ink[41, 100] == 255 and ink[209, 100] == 255  # round caps
    assert ink[:, :85].max() == 0 and ink[:, 116:].max() == 0
    assert ink[:30].max() == 0 and ink[222:].max() == 0


@pytest.mark.parametrize(
    ("strokes", "words"),
    [
        ([], "The pad is empty"),
        ([[[120, 120]]], "dot, not a digit"),
        ([[[120, 120], [125, 124]]], "dot, not a digit"),
        ([[[x, y] for x in range(0, 256, 15)] for y in range(0, 256, 12)], "Ink covers"),
    ],
)
def test_a_drawing_with_no_digit_gets_a_plain_message(strokes, words):
    with pytest.raises(ValueError, match=words):
        drawing_pixels(Drawing.of(strokes), DEMO_INPUT)


def test_other_inputs_get_the_pad_resized_and_colour_models_black_on_white():
    drawing = Drawing.of([[[128, 20], [128, 235]]])
    grey = drawing_pixels(drawing, InputSpec(mode="L", size=(32, 32)))
    expected = np.asarray(Image.fromarray(drawing.ink()).resize((32, 32), Image.LANCZOS))
    np.testing.assert_array_equal(grey, expected)
    colour = drawing_pixels(drawing, InputSpec(mode="RGB", size=(64, 48)))
    assert colour.shape == (64, 48, 3)
    tall = np.asarray(Image.fromarray(drawing.ink()).resize((48, 64), Image.LANCZOS))
    for channel in range(3):
        np.testing.assert_array_equal(colour[:, :, channel], 255 - tall)
    assert colour[0, 0].tolist() == [255, 255, 255]  # paper
    assert colour[32, 24].max() < 10  # ink


def test_the_sample_is_a_three_to_the_demo():
    with torch.no_grad():
        answer = int(demo_model()(to_batch(drawing_pixels(SAMPLE, DEMO_INPUT))).argmax())
    assert answer == 3


def test_the_empty_text_is_the_empty_pad():
    assert Drawing.decode("") == Drawing(())
    assert Drawing.decode("").empty
