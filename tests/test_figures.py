"""Figures from arrays: montage geometry, colour scaling, colours and hover data by value."""

from __future__ import annotations

import ast
import io
import itertools
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.colors as pcolors
import pytest
from PIL import Image

from cnnlens.figures import (
    BAR_COLOUR,
    DIVERGING,
    GAP_RGB,
    HIGHLIGHT_COLOUR,
    SEQUENTIAL,
    SIGNED_GAP_RGB,
    MapColours,
    bar_figure,
    channel_figure,
    channel_stats,
    grid_shape,
    image_figure,
    map_colours,
    montage,
    montage_png,
    overlay_figure,
    overlay_png,
    tile_at,
)


def colorscale_end(name: str, end: int) -> tuple[int, int, int]:
    """The first (end=0) or last (end=-1) colour of a plotly colorscale as an RGB triple."""
    colour = pcolors.get_colorscale(name)[end][1]
    if colour.startswith("#"):
        return pcolors.hex_to_rgb(colour)
    return tuple(round(v) for v in pcolors.unlabel_rgb(colour))


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# --- module hygiene ----------------------------------------------------------------------


def test_module_imports_neither_streamlit_nor_torch():
    source = Path(__file__).parents[1] / "cnnlens" / "figures.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported.isdisjoint({"streamlit", "torch", "matplotlib"})


# --- the colour convention ---------------------------------------------------------------

HANDMADE = np.array(
    [
        [[0, 2], [4, 8]],
        [[-1, -1], [-1, -1]],  # constant channel
        [[1, 3], [5, 9]],
    ],
    dtype=np.float64,
)
WHITE = (247, 247, 247)  # RdBu's middle colour


def lightness(rgb) -> np.ndarray:
    """CIELAB L* (0 black .. 100 white) of sRGB colours given as 0..255 triples."""
    unit = np.asarray(rgb, dtype=np.float64)[..., :3] / 255
    linear = np.where(unit <= 0.04045, unit / 12.92, ((unit + 0.055) / 1.055) ** 2.4)
    y = linear @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(y > (6 / 29) ** 3, 116 * np.cbrt(y) - 16, y * (29 / 3) ** 3)


def rgba_stops(colorscale: list) -> tuple[np.ndarray, np.ndarray]:
    """The places and RGBA colours (alpha 0..1) of a plotly colorscale of rgb()/rgba()."""
    places = np.array([float(place) for place, _ in colorscale])
    colours = []
    for _, colour in colorscale:
        inside = colour[colour.index("(") + 1 : -1].split(",")
        colours.append([float(v) for v in inside] + ([] if len(inside) == 4 else [1.0]))
    return places, np.array(colours)


def test_signed_maps_get_the_diverging_ramp_with_zero_in_the_middle():
    colours = map_colours(HANDMADE)  # one value below zero: the whole set is signed
    assert colours.signed and colours.colorscale == DIVERGING == "RdBu_r"
    assert colours.words == "blue: below zero · white: zero · red: above zero"
    per_channel = colours.units(HANDMADE, per="channel")  # reach 8, 1 and 9
    assert per_channel.dtype == np.float32
    np.testing.assert_allclose(per_channel[0], 0.5 + HANDMADE[0] / 16, atol=1e-7)
    np.testing.assert_array_equal(per_channel[1], np.zeros((2, 2)))  # -1 is its own far end
    per_layer = colours.units(HANDMADE, per="layer")  # one reach: 9
    np.testing.assert_allclose(per_layer, 0.5 + HANDMADE / 18, atol=1e-7)
    assert per_layer[2, 1, 1] == 1 and per_layer[0, 0, 0] == 0.5  # zero is the middle


def test_maps_never_below_zero_get_one_ramp_from_zero_whose_lightness_rises():
    maps = np.abs(HANDMADE)
    colours = map_colours(maps)
    assert not colours.signed and colours.colorscale == SEQUENTIAL == "Viridis"
    assert colours.words == "dark: zero, nothing found · brighter: stronger"
    np.testing.assert_allclose(colours.units(maps)[0], maps[0] / 8, atol=1e-7)  # zero at 0
    np.testing.assert_allclose(colours.units(maps, per="layer"), maps / 9, atol=1e-7)
    ramp = decode(montage_png(np.linspace(0, 1, 255).reshape(1, 1, 255), gap=0))[0]
    # Steadily lighter as the value grows (two neighbouring levels may round to one colour).
    assert np.all(np.diff(lightness(ramp)) >= 0) and np.all(np.diff(lightness(ramp[::4])) > 0)
    assert tuple(ramp[0]) == colorscale_end("Viridis", 0)


def test_the_kind_can_be_forced_and_zeros_take_zeros_colour_without_warnings():
    assert map_colours(np.ones(3), signed=True).signed
    assert map_colours(np.array([np.nan, 1.0])).signed is False  # NaN is not below zero
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zeros = np.zeros((2, 3, 3), dtype=np.float32)
        assert (map_colours(zeros).units(zeros) == 0).all()
        assert (map_colours(zeros, signed=True).units(zeros) == 0.5).all()


def test_units_leave_the_input_alone_and_reject_bad_input():
    maps = HANDMADE.copy()
    map_colours(maps).units(maps)
    np.testing.assert_array_equal(maps, HANDMADE)
    colours = MapColours(True)
    with pytest.raises(ValueError, match="per must be 'channel' or 'layer'"):
        colours.units(HANDMADE, per="pixel")
    with pytest.raises(ValueError, match="C×H×W"):
        colours.units(HANDMADE[0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        colours.units(np.array([[[0.0, np.nan]]]))
    with pytest.raises(ValueError, match="empty"):
        colours.units(np.zeros((0, 3, 3)))


def test_a_plotly_colorscale_cut_to_the_range_keeps_zero_white():
    low, high = -1.0, 3.0  # reach 3: the ramp from place 1/3 to 1
    scale = MapColours(True).plotly(low, high)
    assert (scale["zmin"], scale["zmax"]) == (low, high)
    places, colours = rgba_stops(scale["colorscale"])
    assert places[0] == 0 and places[-1] == 1 and np.all(np.diff(places) > 0)
    zero = np.flatnonzero(np.isclose(places, (0 - low) / (high - low)))
    assert tuple(colours[zero[0], :3]) == WHITE  # zero is white, wherever it falls
    assert tuple(colours[-1, :3]) == colorscale_end("RdBu_r", -1)  # 3 is the red end
    full = pcolors.sample_colorscale("RdBu_r", [1 / 3], colortype="tuple")[0]
    np.testing.assert_allclose(colours[0, :3], np.array(full) * 255, atol=0.5)
    one = MapColours(False).plotly(2.0, 2.0)  # one value: one colour, a range plotly takes
    assert (one["zmin"], one["zmax"]) == (2.0, 3.0) and len(one["colorscale"]) == 2


def test_an_overlay_is_see_through_at_zero_and_lighter_and_more_opaque_as_it_grows():
    places, colours = rgba_stops(MapColours(False).plotly(0.0, 5.0, overlay=True)["colorscale"])
    assert colours[0, 3] == 0  # nothing there: the image shows through
    assert np.all(np.diff(colours[:, 3]) > 0)
    assert np.all(np.diff(lightness(colours)) > 0)
    np.testing.assert_allclose(colours[:, 3], places, atol=1e-4)  # alpha ∝ value
    _, signed = rgba_stops(MapColours(True).plotly(-2.0, 2.0, overlay=True)["colorscale"])
    assert signed[len(signed) // 2, 3] == 0 and signed[0, 3] == signed[-1, 3] == 1
    # The PNG laid over an image in the map view: alpha by level, the gaps clear.
    maps = np.array([[[0.0, 1.0, 2.0, 4.0]], [[0.0, 0.0, 0.0, 0.0]]])
    rgba = np.asarray(
        Image.open(io.BytesIO(montage_png(maps, gap=1, overlay=True))).convert("RGBA")
    )
    assert rgba[0, :4, 3].tolist() == [0, 64, 128, 255] and rgba[0, 4, 3] == 0


# --- grid geometry -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "columns", "expected"),
    [
        (64, None, (8, 8)),
        (32, None, (6, 6)),
        (10, None, (3, 4)),
        (1, None, (1, 1)),
        (12, 5, (3, 5)),
    ],
)
def test_grid_shape(channels, columns, expected):
    assert grid_shape(channels, columns) == expected


def test_grid_shape_rejects_bad_counts():
    with pytest.raises(ValueError, match="channels must be at least 1"):
        grid_shape(0)
    with pytest.raises(ValueError, match="columns must be at least 1"):
        grid_shape(4, 0)
    with pytest.raises(TypeError, match="columns must be an integer"):
        grid_shape(4, 2.0)


@pytest.mark.parametrize(("columns", "gap"), [(None, 1), (None, 0), (2, 2), (5, 1), (7, 3)])
def test_montage_round_trips_through_tile_at(columns, gap):
    maps = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)
    rows, cols = grid_shape(5, columns)
    tiled = montage(maps, columns=columns, gap=gap)
    assert tiled.shape == (rows * 3 + (rows - 1) * gap, cols * 4 + (cols - 1) * gap)
    seen = 0
    for row, col in itertools.product(range(tiled.shape[0]), range(tiled.shape[1])):
        where = tile_at(row, col, (3, 4), cols, gap)
        if where is None or where[0] >= 5:  # a gap or an unused trailing tile
            assert np.isnan(tiled[row, col])
        else:
            channel, y, x = where
            assert tiled[row, col] == maps[channel, y, x]
            seen += 1
    assert seen == maps.size


def test_montage_places_a_known_pixel():
    maps = np.zeros((5, 3, 4))
    maps[4, 2, 3] = 42  # channel 4 sits in tile row 1, tile column 1 of a 3-column grid
    tiled = montage(maps, gap=2)
    assert tiled[1 * (3 + 2) + 2, 1 * (4 + 2) + 3] == 42
    assert np.nansum(tiled) == 42
    assert tile_at(7, 9, (3, 4), 3, gap=2) == (4, 2, 3)
    assert tile_at(3, 0, (3, 4), 3, gap=2) is None  # the gap below the first tile row


def test_montage_of_integers_is_float32_with_nan_gaps():
    tiled = montage(np.ones((2, 2, 2), dtype=np.uint8), gap=1)
    assert tiled.dtype == np.float32
    np.testing.assert_array_equal(tiled, [[1, 1, np.nan, 1, 1], [1, 1, np.nan, 1, 1]])


def test_tile_at_rejects_pixels_outside_the_montage():
    with pytest.raises(ValueError, match="outside the montage"):
        tile_at(0, 14, (3, 4), 3, gap=1)
    with pytest.raises(ValueError, match="row must be at least 0"):
        tile_at(-1, 0, (3, 4), 3)


def test_unknown_colorscale_is_a_clear_value_error():
    with pytest.raises(ValueError, match="Unknown colorscale"):
        montage_png(np.ones((1, 2, 2)), colorscale="Virdis")


# --- PNG montage -------------------------------------------------------------------------


@pytest.mark.parametrize("colorscale", ["Viridis", "Viridis_r", "RdBu"])
def test_montage_png_colours_extremes_and_gaps(colorscale):
    maps = np.random.default_rng(2).random((5, 3, 4))
    maps[:, 1, 2] = 0  # never below zero: zero is the ramp's start, each maximum its end
    gap, scale = 1, 2
    rgb = decode(montage_png(maps, gap=gap, colorscale=colorscale, scale=scale))
    tiled = montage(maps, gap=gap)
    assert rgb.shape == (tiled.shape[0] * scale, tiled.shape[1] * scale, 3)

    top, bottom = colorscale_end(colorscale, -1), colorscale_end(colorscale, 0)
    for channel in range(5):
        for pick, colour in ((np.argmax, top), (np.argmin, bottom)):
            y, x = np.unravel_index(pick(maps[channel]), maps[channel].shape)
            row, col = divmod(channel, 3)
            top_left = ((row * (3 + gap) + y) * scale, (col * (4 + gap) + x) * scale)
            block = rgb[top_left[0] : top_left[0] + scale, top_left[1] : top_left[1] + scale]
            assert (block == colour).all(), (channel, pick.__name__)

    gaps = np.isnan(tiled).repeat(scale, axis=0).repeat(scale, axis=1)
    assert gaps.any() and (rgb[gaps] == GAP_RGB).all()
    assert not (rgb[~gaps] == GAP_RGB).all(axis=-1).any()


def test_montage_png_per_layer_gives_only_the_global_max_the_top_colour():
    maps = np.zeros((2, 2, 2))
    maps[0, 0, 0], maps[1, 1, 1] = 10, 5
    rgb = decode(montage_png(maps, per="layer", gap=0))
    top = colorscale_end("Viridis", -1)
    assert (rgb[0, 0] == top).all() and not (rgb[1, 3] == top).all()


def test_montage_png_of_signed_maps_is_white_at_zero_with_grey_gaps():
    maps = np.array([[[-2.0, 0.0, 1.0]], [[0.0, 0.5, -0.25]]])
    rgb = decode(montage_png(maps, gap=1, columns=2))
    assert tuple(rgb[0, 1]) == tuple(rgb[0, 4]) == WHITE  # zero, in both channels
    assert tuple(rgb[0, 0]) == colorscale_end("RdBu_r", 0)  # -2: channel 0's blue end
    assert tuple(rgb[0, 5]) == colorscale_end("RdBu_r", -1)  # 0.5: channel 1's red end
    assert tuple(rgb[0, 3]) == SIGNED_GAP_RGB
    assert tuple(decode(montage_png(np.abs(maps), gap=1, columns=2))[0, 3]) == GAP_RGB


def test_montage_png_rejects_bad_scale():
    with pytest.raises(ValueError, match="scale must be at least 1"):
        montage_png(np.ones((1, 2, 2)), scale=0)
    with pytest.raises(ValueError, match="choose a smaller scale"):
        montage_png(np.ones((1, 100, 100)), scale=1000)


# --- single channel, image, overlay ------------------------------------------------------


def test_channel_figure_shows_raw_values_with_a_colorbar():
    map2d = np.arange(12, dtype=np.float32).reshape(3, 4) - 3
    fig = channel_figure(map2d, title="channel 3")
    (trace,) = fig.data
    np.testing.assert_array_equal(trace.z, map2d)
    assert trace.showscale is not False
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.yaxis.scaleanchor == "x"
    # Signed: white at zero (place 3/11 of the range -3..8).
    places, colours = rgba_stops(trace.colorscale)
    assert (trace.zmin, trace.zmax) == (-3, 8)
    assert tuple(colours[np.isclose(places, 3 / 11)][0, :3]) == WHITE
    shared = channel_figure(np.abs(map2d), colours=MapColours(False), value_range=(0, 20))
    assert (shared.data[0].zmin, shared.data[0].zmax) == (0, 20)
    with pytest.raises(ValueError, match="2-D"):
        channel_figure(np.ones((1, 3, 4)))


def test_image_figure_gray_is_black_to_white_and_rgb_is_an_image_trace():
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4)
    (trace,) = image_figure(gray).data
    assert trace.type == "heatmap" and (trace.zmin, trace.zmax) == (0, 255)
    assert trace.colorscale[0][1] == "rgb(0,0,0)" and trace.colorscale[-1][1] == "rgb(255,255,255)"
    assert trace.showscale is False
    assert image_figure(gray.astype(np.float32) / 255).data[0].zmax == 1

    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    (trace,) = image_figure(rgb).data
    assert trace.type == "image" and trace.z.shape == (4, 5, 3) and "RGB" in trace.hovertemplate

    with pytest.raises(TypeError, match="must be uint8"):
        image_figure(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="H×W×3"):
        image_figure(np.zeros((4, 4, 4), dtype=np.uint8))


def test_overlay_resizes_the_map_to_the_image():
    image = np.zeros((28, 28), dtype=np.uint8)
    ramp = np.arange(49, dtype=np.float32).reshape(7, 7)
    fig = overlay_figure(image, ramp, opacity=0.3)
    base, top = fig.data
    assert base.type == "heatmap" and base.hoverinfo == "skip" and base.hovertemplate is None
    assert top.z.shape == (28, 28) and top.opacity == 0.3
    assert np.all(np.diff(top.z, axis=1) >= 0) and np.all(np.diff(top.z, axis=0) >= 0)
    assert ramp.min() <= top.z.min() and top.z.max() <= ramp.max()
    assert "value" in top.hovertemplate and top.showscale is not False
    _, colours = rgba_stops(top.colorscale)  # from 0: see-through there
    assert colours[0, 3] == 0 and np.all(np.diff(lightness(colours)) > 0)

    same_size = overlay_figure(np.zeros((7, 7, 3), dtype=np.uint8), ramp)
    assert same_size.data[0].type == "image"
    np.testing.assert_allclose(same_size.data[1].z, ramp, atol=1e-5)


@pytest.mark.parametrize("opacity", [-0.1, 1.5, float("nan")])
def test_overlay_rejects_opacity_outside_0_1(opacity):
    with pytest.raises(ValueError, match="opacity must be between 0 and 1"):
        overlay_figure(np.zeros((4, 4)), np.ones((2, 2)), opacity=opacity)


def test_overlay_png_shows_the_dimmed_image_at_zero_and_the_ramps_top_at_full_opacity():
    image = np.tile(np.arange(0, 256, 32, dtype=np.uint8), (8, 1))  # 0..224, gray
    evidence = np.zeros((8, 8), np.float32)
    evidence[2, 3], evidence[5, 6] = 2.0, 1.0
    evidence[6, 1] = -5.0  # evidence against: not drawn
    picture = np.asarray(Image.open(io.BytesIO(overlay_png(image, evidence, 1.0, dim=0.5))))
    assert picture.shape == (8, 8, 3)
    dimmed = np.rint(image * 0.5)  # a uint8 image is shown as it is (0 black, 255 white)
    no_evidence = np.ones((8, 8), bool)
    no_evidence[2, 3] = no_evidence[5, 6] = False
    for channel in range(3):
        np.testing.assert_array_equal(picture[..., channel][no_evidence], dimmed[no_evidence])
    assert tuple(picture[2, 3]) == colorscale_end(SEQUENTIAL, -1)  # the top, fully opaque
    half = picture[5, 6].astype(float)  # half the top: half the ramp's colour, half the image
    assert lightness(half) < lightness(picture[2, 3])


def test_overlay_png_enlarges_small_images_by_whole_multiples():
    picture = Image.open(
        io.BytesIO(overlay_png(np.zeros((28, 28), np.uint8), np.ones((7, 7)), side=224))
    )
    assert picture.size == (224, 224)
    with pytest.raises(ValueError, match="between 0 and 1"):
        overlay_png(np.zeros((4, 4), np.uint8), np.ones((4, 4)), dim=2)


def test_overlay_rejects_non_numeric_opacity():
    with pytest.raises(TypeError, match="opacity must be a number"):
        overlay_figure(np.zeros((4, 4)), np.ones((2, 2)), opacity="0.5")


# --- charts ------------------------------------------------------------------------------


def test_bar_figure_highlights_the_matching_label_on_a_category_axis():
    labels = list(range(10))
    fig = bar_figure(labels, np.linspace(0, 1, 10), "Prediction", "class", "probability", 3)
    (trace,) = fig.data
    assert list(trace.marker.color) == [HIGHLIGHT_COLOUR if i == 3 else BAR_COLOUR for i in labels]
    assert fig.layout.xaxis.type == "category"
    assert fig.layout.xaxis.title.text == "class" and fig.layout.yaxis.title.text == "probability"

    plain = bar_figure(["a", "b"], [1, 2], "t", "x", "y")
    assert list(plain.data[0].marker.color) == [BAR_COLOUR, BAR_COLOUR]
    with pytest.raises(ValueError, match="not one of the labels"):
        bar_figure(["a", "b"], [1, 2], "t", "x", "y", highlight="c")
    with pytest.raises(ValueError, match="one value per label"):
        bar_figure(["a", "b"], [1, 2, 3], "t", "x", "y")


def test_channel_stats_marks_only_all_zero_channels_dead():
    maps = np.zeros((3, 2, 2), dtype=np.float32)
    maps[1] = [[0, 2], [4, 6]]
    maps[2] = [[0, -1], [0, -3]]  # max 0 but not all zero: negative, not dead
    stats = channel_stats(maps)
    assert stats.dead.tolist() == [True, False, False]
    assert stats.mean.tolist() == [0.0, 3.0, -1.0]
    assert stats.max.tolist() == [0.0, 6.0, 0.0]
    assert stats.ranked("mean").tolist() == [1, 0, 2]
    assert stats.ranked("max").tolist() == [1, 0, 2]  # ties (0 and 2) keep channel order
    with pytest.raises(ValueError, match="'mean' or 'max'"):
        stats.ranked("median")


@pytest.mark.parametrize("by", ["mean", "max"])
def test_channel_ranking_equals_the_pandas_sort_it_replaces(by):
    rng = np.random.default_rng(3)
    maps = np.maximum(rng.standard_normal((64, 14, 14)), 0).astype(np.float32)
    maps[[5, 17, 40]] = 0  # dead channels: ties at zero
    maps[9] = maps[30]  # a tie of live channels
    stats = channel_stats(maps)
    flat = maps.reshape(64, -1)
    frame = pd.DataFrame(
        {"channel": np.arange(64), "mean": flat.mean(1, dtype=np.float64), "max": flat.max(1)}
    ).sort_values(by, ascending=False, kind="stable")
    order = stats.ranked(by)
    assert order.tolist() == frame["channel"].tolist()
    np.testing.assert_array_equal(stats.measure(by)[order], frame[by].to_numpy(np.float64))
    assert np.flatnonzero(stats.dead).tolist() == [5, 17, 40]
