"""Figures from arrays: feature-map grids, single channels, images, overlays and bar charts.

Pure numpy, Pillow and plotly; never imports streamlit or torch. Each function takes plain
arrays and returns a ``go.Figure`` or PNG bytes; the pages decide how to show them. The
Feature maps page's grid and bars, which must repaint on every click without plotly, are
built from these PNGs in ``cnnlens.ui.map_view`` and ``cnnlens.ui.bars``.

Every map is coloured by one convention, :class:`MapColours` (chosen by
:func:`map_colours`): values that go below zero blue, white at zero, red above; values
never below zero dark at zero to bright yellow; laid over an image, see-through at zero.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache
from numbers import Real

import numpy as np
import pandas as pd
import plotly.colors as pcolors
import plotly.graph_objects as go
from PIL import Image
from plotly.exceptions import PlotlyError

__all__ = [
    "BAR_COLOUR",
    "DEAD_COLOUR",
    "DIVERGING",
    "GAP_RGB",
    "HIGHLIGHT_COLOUR",
    "IMAGE_HEIGHT",
    "MAX_PNG_SIDE",
    "SEQUENTIAL",
    "SIGNED_GAP_RGB",
    "ChannelStats",
    "MapColours",
    "bar_figure",
    "channel_figure",
    "channel_stats",
    "check_maps",
    "check_opacity",
    "class_matrix_figure",
    "colorscale_colours",
    "embedding_figure",
    "grid_shape",
    "image_figure",
    "image_png",
    "map_colours",
    "montage",
    "montage_png",
    "overlay_figure",
    "overlay_png",
    "tile_at",
]

GAP_RGB = (240, 240, 240)
"""Colour of the gaps and unused tiles in a PNG montage."""
SIGNED_GAP_RGB = (128, 128, 128)
"""The same in a montage of signed maps, where near-white means zero."""

BAR_COLOUR = "#636EFA"
HIGHLIGHT_COLOUR = "#EF553B"
DEAD_COLOUR = "#B0B0B0"

MAX_PNG_SIDE = 8192
"""Longest side a PNG montage may have; a larger ``scale`` is refused, not rendered."""

_SCALE_MODES = ("channel", "layer")
IMAGE_HEIGHT = 400
"""Height, in CSS pixels, of a figure that shows one image or one channel."""

_CHART_HEIGHT = 350
# A palette PNG holds 256 colours: 255 levels of the colorscale and the gap colour. It encodes
# 4-5× faster than RGB (one byte per pixel, and Pillow skips PNG row filters for palettes).
_PNG_LEVELS = 255
# A linear ramp: plotly's "Greys" has uneven stops, which would distort pixel values.
_NO_TEMPLATE = go.layout.Template()
_GRAY = [[0.0, "rgb(0,0,0)"], [1.0, "rgb(255,255,255)"]]


# --- validation -------------------------------------------------------------------------


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}; got {value}.")
    return int(value)


def _numeric(array: np.ndarray, what: str) -> np.ndarray:
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise TypeError(f"{what} must hold numbers; got dtype {array.dtype}.")
    if np.iscomplexobj(array):
        raise TypeError(f"{what} must hold real numbers; got dtype {array.dtype}.")
    if array.size == 0:
        raise ValueError(f"{what} is empty (shape {array.shape}); there is nothing to draw.")
    return array


def check_maps(maps: np.ndarray) -> np.ndarray:
    """Feature maps as a C×H×W array of real numbers, the shape every function here takes.

    Raises:
        ValueError: If the maps are not C×H×W or are empty.
        TypeError: If they do not hold real numbers.
    """
    array = np.asarray(maps)
    if array.ndim != 3:
        raise ValueError(
            f"Feature maps must be a C×H×W array (channels, height, width); got shape "
            f"{array.shape}. For a batch, pass one image's maps, e.g. maps[0]."
        )
    return _numeric(array, "The feature maps")


def _as_map2d(map2d: np.ndarray) -> np.ndarray:
    array = np.asarray(map2d)
    if array.ndim != 2:
        raise ValueError(
            f"A channel map must be a 2-D H×W array; got shape {array.shape}. "
            "Pick one channel, e.g. maps[c]."
        )
    return _numeric(array, "The channel map")


def _as_image(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 3:
        if array.dtype != np.uint8:
            raise TypeError(
                f"An RGB image must be uint8 (0-255); got {array.dtype}. If it is in [0, 1], "
                "convert it with (image * 255).round().astype(np.uint8)."
            )
        return _numeric(array, "The image")
    if array.ndim != 2:
        raise ValueError(
            f"An image must be H×W (grayscale) or H×W×3 (RGB); got shape {array.shape}. "
            "Convert other modes (RGBA, CMYK, ...) to RGB or L first."
        )
    return _numeric(array, "The image")


_MODEL_HINT = "check the model's weights and the input image"


def _check_finite(array: np.ndarray, what: str, hint: str = _MODEL_HINT) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError(f"{what} contain NaN or infinite values; {hint}.")


def _named_colorscale(name: str) -> list:
    if not isinstance(name, str):
        raise TypeError(f"colorscale must be a colorscale name, not {type(name).__name__}.")
    return [list(stop) for stop in _colorscale(name)]  # a copy: callers may change it


@lru_cache(maxsize=64)
def _colorscale(name: str) -> tuple[tuple[float, str], ...]:
    # plotly lists every named colorscale on each lookup: 6 ms of a click.
    try:
        return tuple(tuple(stop) for stop in pcolors.get_colorscale(name))
    except PlotlyError:
        raise ValueError(
            f"Unknown colorscale {name!r}; use one of plotly's named colorscales, e.g. "
            "'Viridis', 'Magma' or 'RdBu' (append '_r' to reverse one)."
        ) from None


def colorscale_colours(colorscale: str, count: int) -> list[str]:
    """``count`` CSS colours evenly spaced along a colorscale, low to high (for a colour bar).

    Raises:
        ValueError: If the colorscale is unknown or ``count`` is below 2.
    """
    count = _check_int(count, "count", 2)
    return pcolors.sample_colorscale(
        _named_colorscale(colorscale), np.linspace(0, 1, count).tolist()
    )


# --- the colour convention --------------------------------------------------------------

SEQUENTIAL = "Viridis"
"""The ramp of maps that are never below zero: dark purple at zero, through blue and green,
to bright yellow at the top; its lightness rises steadily with the value."""
DIVERGING = "RdBu_r"
"""The ramp of maps that go below zero: blue below zero, white at zero, red above."""
_CUT_SAMPLES = 65  # colours of a colorscale cut to a range: a 1/64 step, at least


@dataclass(frozen=True)
class MapColours:
    """The one colour convention of every map cnnlens draws, on its pages and in its exports.

    Values that go below zero (a convolution before its ReLU, batch norm, a difference of
    two maps) are *signed*: blue below zero, white at zero, red above (``DIVERGING``), so
    zero looks the same whatever a channel's bias. Values that never go below zero (after
    a ReLU or pooling, Grad-CAM) go from dark at zero to bright yellow at the top
    (``SEQUENTIAL``). Either way zero is fixed, and the ramp's end is the largest value
    (in size) of each channel or of the whole layer, as the "Colour scale" control says.
    Laid over an image, the same colours are see-through at zero and grow opaque away
    from it.

    Attributes:
        signed: whether the values go below zero.
    """

    signed: bool

    @property
    def colorscale(self) -> str:
        """The plotly colorscale name of the ramp."""
        return DIVERGING if self.signed else SEQUENTIAL

    @property
    def words(self) -> str:
        """What the colours mean, for a legend."""
        if self.signed:
            return "blue: below zero · white: zero · red: above zero"
        return "dark: zero, nothing found · brighter: stronger"

    @property
    def overlay_words(self) -> str:
        """What the colours mean laid over an image, for a legend."""
        if self.signed:
            return "see-through at zero · blue below, red above, more opaque further from zero"
        return "see-through at zero · brighter and more opaque as the value grows"

    def reach(self, maps: np.ndarray, per: str = "channel") -> np.ndarray:
        """The value at the ramp's end: the largest size (absolute value) of each channel
        (``per="channel"``, C×1×1) or of all of them (``per="layer"``, 1×1×1)."""
        if per not in _SCALE_MODES:
            raise ValueError(f"per must be 'channel' or 'layer', not {per!r}.")
        axis = (1, 2) if per == "channel" else None
        return np.abs(maps).max(axis=axis, keepdims=True)

    def places(self, values: np.ndarray, reach: np.ndarray | float) -> np.ndarray:
        """Each value's place on the ramp, 0 to 1: ``0.5 + v / 2m`` when signed (zero in
        the middle), else ``v / m`` (zero at the start), for a reach ``m`` (broadcast);
        where ``m`` is 0, zero's place."""
        values = np.asarray(values)
        work = values.astype(np.promote_types(values.dtype, np.float32), copy=False)
        reach = np.asarray(reach, dtype=work.dtype) * (2 if self.signed else 1)
        place = np.divide(
            work, reach, out=np.zeros(np.broadcast(work, reach).shape, work.dtype), where=reach > 0
        )
        if self.signed:
            place += 0.5
        return np.clip(place, 0, 1, out=place)

    def units(
        self, maps: np.ndarray, per: str = "channel", reach: float | None = None
    ) -> np.ndarray:
        """The :meth:`places` of C×H×W maps on the reach of each channel or of the layer.

        Args:
            maps: C×H×W values.
            per: ``"channel"``: each channel on its own reach; ``"layer"``: one reach.
            reach: the reach of every channel instead (one channel shown alone on its
                layer's reach).

        Returns:
            A float32 C×H×W array in [0, 1]; a channel of zeros sits at zero's colour.

        Raises:
            ValueError: If ``per`` is unknown, the maps are not C×H×W, or hold NaN/inf.
            TypeError: If the maps do not hold real numbers.
        """
        array = check_maps(maps)
        _check_finite(array, "The feature maps")
        if reach is None:
            reach = self.reach(array, per)
        return self.places(array, reach).astype(np.float32, copy=False)

    def alpha(self, places: np.ndarray) -> np.ndarray:
        """An overlay's opacity at each place on the ramp: 0 at zero, 1 at the ends."""
        places = np.asarray(places, dtype=np.float64)
        return np.abs(2 * places - 1) if self.signed else places

    def plotly(self, low: float, high: float, overlay: bool = False) -> dict:
        """A heatmap's ``colorscale``, ``zmin`` and ``zmax`` for values from ``low`` to
        ``high``, coloured as :meth:`places` colours them on the reach of that range: the
        ramp is cut to the range, so that zero keeps its colour.

        Args:
            low, high: the lowest and highest value shown.
            overlay: ``rgba`` colours, see-through at zero (see :meth:`alpha`).
        """
        start, end = self.places(np.array([low, high]), max(abs(low), abs(high)))
        stops = np.linspace(start, end, _CUT_SAMPLES)
        corners = [p for p, _ in _colorscale(self.colorscale)] + ([0.5] if self.signed else [])
        stops = np.unique([*stops, *(p for p in corners if start < p < end)])
        colours = pcolors.sample_colorscale(
            _named_colorscale(self.colorscale), stops.tolist(), colortype="tuple"
        )
        alphas = self.alpha(stops) if overlay else [None] * len(stops)
        span = end - start
        places = (stops - start) / span if span > 0 else np.zeros(len(stops))
        scale = [[float(p), _css(c, a)] for p, c, a in zip(places, colours, alphas, strict=True)]
        if len(scale) == 1:  # one value: one colour
            scale.append([1.0, scale[0][1]])
        return {"colorscale": scale, "zmin": low, "zmax": high if high > low else low + 1}


def _css(colour: tuple[float, float, float], alpha: float | None) -> str:
    """A colour of 0..1 channels as CSS ``rgb()``, or ``rgba()`` with an opacity."""
    r, g, b = (round(255 * c) for c in colour)
    return f"rgb({r},{g},{b})" if alpha is None else f"rgba({r},{g},{b},{alpha:.4f})"


def map_colours(values: np.ndarray, signed: bool | None = None) -> MapColours:
    """The convention for these values: signed (diverging) when one of them is below zero.

    Decide it once for everything drawn together (a whole layer, both maps compared) so
    that their colours mean the same.

    Args:
        values: the values to be coloured, any shape.
        signed: force it: ``True`` for values signed by nature (weights, differences).
    """
    if signed is None:
        signed = bool((np.asarray(values) < 0).any())  # NaN is not below zero
    return MapColours(bool(signed))


# --- arrays -----------------------------------------------------------------------------


def grid_shape(channels: int, columns: int | None = None) -> tuple[int, int]:
    """Rows and columns of the grid that tiles ``channels`` maps.

    Args:
        channels: Number of channels, at least 1.
        columns: Columns wanted, used as given; default ``ceil(sqrt(channels))``.

    Returns:
        ``(rows, columns)`` with ``rows = ceil(channels / columns)``.
    """
    channels = _check_int(channels, "channels", 1)
    if columns is None:
        columns = math.isqrt(channels)
        columns += columns * columns < channels
    else:
        columns = _check_int(columns, "columns", 1)
    return -(-channels // columns), columns


def _tile(array: np.ndarray, columns: int | None, gap: int) -> np.ndarray:
    """Tiles C×H×W×... into (rows·H + gaps)×(cols·W + gaps)×..., NaN between and after."""
    gap = _check_int(gap, "gap", 0)
    channels, height, width = array.shape[:3]
    trailing = array.shape[3:]
    rows, cols = grid_shape(channels, columns)
    dtype = array.dtype if np.issubdtype(array.dtype, np.floating) else np.float32
    grid = np.full((rows, height + gap, cols, width + gap, *trailing), np.nan, dtype=dtype)
    full_rows, left_over = divmod(channels, cols)
    grid[:full_rows, :height, :, :width] = (
        array[: full_rows * cols].reshape(full_rows, cols, height, width, *trailing).swapaxes(1, 2)
    )
    if left_over:
        grid[full_rows, :height, :left_over, :width] = array[full_rows * cols :].swapaxes(0, 1)
    flat = grid.reshape(rows * (height + gap), cols * (width + gap), *trailing)
    # Drop the gap after the last row and column.
    return np.ascontiguousarray(flat[: flat.shape[0] - gap, : flat.shape[1] - gap])


def montage(maps: np.ndarray, columns: int | None = None, gap: int = 1) -> np.ndarray:
    """Tiles C×H×W maps into one 2-D image, channels in row-major order.

    Args:
        maps: C×H×W array.
        columns: Tiles per row; default ``ceil(sqrt(C))`` (see ``grid_shape``).
        gap: Pixels of NaN between neighbouring tiles.

    Returns:
        A float array (the maps' float dtype, else float32) of shape
        ``(rows*H + (rows-1)*gap, cols*W + (cols-1)*gap)``; gaps and unused trailing tiles
        are NaN.
    """
    return _tile(check_maps(maps), columns, gap)


def tile_at(
    row: int, col: int, shape: tuple[int, int], columns: int, gap: int = 1
) -> tuple[int, int, int] | None:
    """Maps a montage pixel back to the feature map it shows; the inverse of ``montage``.

    Args:
        row: Montage row (y), from 0 at the top.
        col: Montage column (x), from 0 at the left.
        shape: ``(H, W)`` of one tile, i.e. of one channel's map.
        columns: Tiles per row of the montage, i.e. ``grid_shape(C, columns)[1]``.
        gap: The montage's gap.

    Returns:
        ``(channel, y, x)``, or None when the pixel lies on a gap. A channel >= C means an
        unused trailing tile (this function does not know C).

    Raises:
        ValueError: If the pixel is left of, above or right of the montage.
    """
    height, width = (_check_int(side, "tile side", 1) for side in shape)
    columns = _check_int(columns, "columns", 1)
    gap = _check_int(gap, "gap", 0)
    row = _check_int(row, "row", 0)
    col = _check_int(col, "col", 0)
    montage_width = columns * (width + gap) - gap
    if col >= montage_width:
        raise ValueError(f"col {col} is outside the montage, which is {montage_width} px wide.")
    tile_row, y = divmod(row, height + gap)
    tile_col, x = divmod(col, width + gap)
    if y >= height or x >= width:
        return None
    return tile_row * columns + tile_col, y, x


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel summary of one image's feature maps, one value per channel in channel order.

    Attributes:
        mean: each channel's mean activation (float64).
        max: each channel's highest activation (float64).
        dead: whether the channel is zero everywhere.
    """

    mean: np.ndarray
    max: np.ndarray
    dead: np.ndarray

    def measure(self, by: str) -> np.ndarray:
        """The ``"mean"`` or ``"max"`` of every channel.

        Raises:
            ValueError: for another measure.
        """
        if by not in ("mean", "max"):
            raise ValueError(f"Channels are ranked by 'mean' or 'max', not {by!r}.")
        return self.mean if by == "mean" else self.max

    def ranked(self, by: str) -> np.ndarray:
        """The channels from the highest ``by`` (``"mean"`` or ``"max"``) to the lowest;
        ties keep channel order.

        Raises:
            ValueError: for another measure.
        """
        return np.argsort(-self.measure(by), kind="stable")


def channel_stats(maps: np.ndarray) -> ChannelStats:
    """Per-channel summary of one image's feature maps: a few numpy reductions (a pandas
    frame cost the Feature maps page a millisecond on every click).

    Args:
        maps: C×H×W activations.

    Returns:
        The mean, max and deadness (zero everywhere) of each channel, in channel order.
    """
    array = check_maps(maps)
    flat = array.reshape(array.shape[0], -1)
    highest = flat.max(axis=1)
    return ChannelStats(
        mean=flat.mean(axis=1, dtype=np.float64),
        max=highest.astype(np.float64),
        dead=(highest == 0) & (flat.min(axis=1) == 0),
    )


# --- rendering helpers ------------------------------------------------------------------


def _figure(
    traces: list[go.BaseTraceType],
    title: str | None,
    height: int,
    *,
    image: bool,
    xaxis: dict | None = None,
    yaxis: dict | None = None,
    **layout: object,
) -> go.Figure:
    """Every figure's one layout; ``image`` adds pixel axes (row 0 at the top).

    The layout is built as one plain dict and validated once: plotly's
    ``update_*`` calls cost about 10 ms each, too slow for a rerun on every click.
    """
    if image:
        axis = {"showticklabels": False, "showgrid": False, "zeroline": False, "ticks": ""}
        x = {"constrain": "domain", **axis}
        y = {"autorange": "reversed", "scaleanchor": "x", "scaleratio": 1, **axis}
    else:
        x, y = {"automargin": True}, {"automargin": True}
    return go.Figure(
        data=traces,
        layout={
            # Streamlit's chart theme styles the figure in the browser; plotly's own
            # default template would only add 10 kB and a deep copy to every rerun.
            "template": _NO_TEMPLATE,
            "title": {"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 14}},
            "height": height,
            "margin": {"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
            "font": {"size": 12},
            "paper_bgcolor": "rgba(0,0,0,0)",
            "plot_bgcolor": "rgba(0,0,0,0)",
            "xaxis": {**x, **(xaxis or {})},
            "yaxis": {**y, **(yaxis or {})},
            **layout,
        },
    )


def _gray_range(image: np.ndarray) -> tuple[float, float]:
    """uint8 spans 0..255, floats in [0, 1] span 0..1, anything else its own min..max."""
    if image.dtype == np.uint8:
        return 0.0, 255.0
    low, high = float(image.min()), float(image.max())
    if low >= 0 and high <= 1:
        return 0.0, 1.0
    return low, high if high > low else low + 1


def _image_trace(image: np.ndarray, hover: bool) -> go.Heatmap | go.Image:
    """The base trace of an image: RGB as ``go.Image``, grayscale as a gray heatmap."""
    rgb = image.ndim == 3
    if not hover:
        shown = {"hoverinfo": "skip"}
    elif rgb:
        shown = {"hovertemplate": "x %{x} · y %{y} · RGB %{z}<extra></extra>"}
    else:
        shown = {"hovertemplate": "x %{x} · y %{y} · value %{z:.4g}<extra></extra>"}
    if rgb:
        return go.Image(z=image, **shown)
    if image.dtype != np.uint8:
        image = image.astype(np.float32)
        _check_finite(image, "The image's pixels", "check how the image was loaded")
    low, high = _gray_range(image)
    return go.Heatmap(z=image, zmin=low, zmax=high, colorscale=_GRAY, showscale=False, **shown)


@lru_cache(maxsize=32)
def _palette(colorscale: str, gap: tuple[int, int, int] = GAP_RGB) -> bytes:
    """The PNG palette: 255 colours sampled from the colorscale, then the gap colour."""
    samples = pcolors.sample_colorscale(
        _named_colorscale(colorscale),
        np.linspace(0, 1, _PNG_LEVELS).tolist(),
        colortype="tuple",
    )
    colours = np.rint(np.array(samples) * 255).astype(np.uint8)
    return colours.tobytes() + bytes(gap)


# --- figures ----------------------------------------------------------------------------


def image_png(image: np.ndarray) -> bytes:
    """An image as a PNG that looks as ``image_figure`` draws it.

    Args:
        image: H×W grayscale (stretched as ``image_figure`` does) or H×W×3 uint8 RGB.

    Returns:
        PNG bytes of an H×W image.

    Raises:
        ValueError: If the image is not H×W or H×W×3.
        TypeError: If an RGB image is not uint8.
    """
    pixels = _as_image(image)
    if pixels.ndim == 2:
        low, high = _gray_range(pixels)
        unit = np.clip((pixels.astype(np.float32) - low) / (high - low), 0, 1)
        pixels = np.rint(unit * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def montage_png(
    maps: np.ndarray,
    per: str = "channel",
    columns: int | None = None,
    gap: int = 1,
    colorscale: str | None = None,
    scale: int = 1,
    clear_gaps: bool = False,
    signed: bool | None = None,
    overlay: bool = False,
    reach: float | None = None,
) -> bytes:
    """All channels of a layer as one colour-mapped PNG, coloured by :class:`MapColours`.

    The PNG is a palette image (255 colours of the ramp, then ``GAP_RGB``, or
    ``SIGNED_GAP_RGB`` for signed maps, where near-white is zero); browsers
    and ``st.image`` show it as RGB, Pillow opens it in mode "P" (``.convert("RGB")``).

    Args:
        maps: C×H×W activations.
        per: ``"channel"``: each channel on its own reach; ``"layer"``: one for all.
        columns: Tiles per row; default ``ceil(sqrt(C))``.
        gap: Pixels between tiles, drawn in the gap colour like unused tiles.
        colorscale: A plotly colorscale name instead of the convention's ramp (its places
            stay the convention's: zero at the middle of a signed map).
        scale: Integer nearest-neighbour upscale, for tiny maps.
        clear_gaps: Make the gaps and unused tiles transparent (the page shows
            through), as the map view does.
        signed: Whether the maps are signed (see :func:`map_colours`); default: whether
            a value is below zero.
        overlay: For laying over an image: see-through at zero, opaque at the ramp's
            ends (:meth:`MapColours.alpha`); gaps are clear.
        reach: The value at the ramp's ends for every channel, instead of ``per``'s.

    Returns:
        PNG bytes of a ``scale·H'`` × ``scale·W'`` image, H'×W' being the montage's shape.

    Raises:
        ValueError: If the PNG would be longer than ``MAX_PNG_SIDE`` on a side, the
            colorscale is unknown, or for the reasons of :meth:`MapColours.units`.
    """
    scale = _check_int(scale, "scale", 1)
    colours = map_colours(maps, signed)
    gap_colour = SIGNED_GAP_RGB if colours.signed else GAP_RGB
    palette = _palette(colorscale or colours.colorscale, gap_colour)
    z = montage(colours.units(maps, per, reach), columns, gap)
    longest = max(z.shape) * scale
    if longest > MAX_PNG_SIDE:
        raise ValueError(
            f"The PNG would be {longest} px on its longest side (limit {MAX_PNG_SIDE}); "
            "choose a smaller scale."
        )
    levels = z * (_PNG_LEVELS - 1) + 0.5  # round half up once truncated below
    np.nan_to_num(levels, copy=False, nan=_PNG_LEVELS)  # gaps -> the palette's gap entry
    index = levels.astype(np.uint8)
    if scale > 1:
        index = index.repeat(scale, axis=0).repeat(scale, axis=1)
    png = Image.fromarray(index)
    png.putpalette(palette, rawmode="RGB")
    buffer = io.BytesIO()
    clear = {"transparency": _PNG_LEVELS} if clear_gaps else {}
    if overlay:
        clear = {"transparency": _alphas(colours.signed)}
    png.save(buffer, format="PNG", compress_level=1, **clear)
    return buffer.getvalue()


@lru_cache(maxsize=2)
def _alphas(signed: bool) -> bytes:
    """An overlay palette's opacities: one per level of the ramp, then a clear gap."""
    levels = np.linspace(0, 1, _PNG_LEVELS)
    alpha = np.rint(MapColours(signed).alpha(levels) * 255).astype(np.uint8)
    return alpha.tobytes() + b"\x00"


def channel_figure(
    map2d: np.ndarray,
    title: str | None = None,
    colours: MapColours | None = None,
    value_range: tuple[float, float] | None = None,
) -> go.Figure:
    """One channel, enlarged, with a colorbar of its raw values.

    Args:
        map2d: H×W activations of one channel.
        title: Optional figure title.
        colours: The convention's colours; default :func:`map_colours` of the map.
        value_range: The lowest and highest value the colours span, to give maps that
            compare one range; default the map's own.

    Returns:
        A figure with one ``go.Heatmap``; hover shows x, y and the value.
    """
    array = _as_map2d(map2d)
    _check_finite(array, "The channel map's values")
    colours = colours or map_colours(array)
    low, high = value_range or (float(array.min()), float(array.max()))
    trace = go.Heatmap(
        z=array,
        **colours.plotly(low, high),
        colorbar={"thickness": 12},
        hovertemplate="x %{x} · y %{y} · value %{z:.4g}<extra></extra>",
    )
    return _figure([trace], title, IMAGE_HEIGHT, image=True)


def image_figure(image: np.ndarray, title: str | None = None) -> go.Figure:
    """An input image: H×W as a gray heatmap (black to white), H×W×3 uint8 as RGB.

    A uint8 grayscale image spans 0 (black) to 255 (white); a float one in [0, 1] spans 0..1;
    any other grayscale image is stretched from its min to its max.

    Args:
        image: H×W grayscale (any real dtype) or H×W×3 uint8 RGB.
        title: Optional figure title.

    Returns:
        A figure with one trace; hover shows x, y and the value (or the RGB triple).

    Raises:
        ValueError: If the image is not H×W or H×W×3.
        TypeError: If an RGB image is not uint8.
    """
    trace = _image_trace(_as_image(image), hover=True)
    return _figure([trace], title, IMAGE_HEIGHT, image=True)


def check_opacity(opacity: float) -> None:
    """Refuse an opacity that is not a number in [0, 1].

    Raises:
        TypeError: If ``opacity`` is not a number.
        ValueError: If it is outside [0, 1].
    """
    if isinstance(opacity, bool) or not isinstance(opacity, Real):
        raise TypeError(f"opacity must be a number in [0, 1], not {type(opacity).__name__}.")
    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity must be between 0 and 1; got {opacity}.")


def overlay_figure(
    image: np.ndarray,
    map2d: np.ndarray,
    opacity: float = 0.5,
    title: str | None = None,
    colours: MapColours | None = None,
) -> go.Figure:
    """A map resized (bilinear) to the image and laid over it: see-through where the map
    is zero, more opaque and (for a map never below zero) brighter as it grows.

    Args:
        image: H×W grayscale or H×W×3 uint8 RGB, as for ``image_figure``.
        map2d: h×w values, any size.
        opacity: Opacity of the map layer where it is strongest, 0 (invisible) to 1.
        title: Optional figure title.
        colours: The convention's colours; default :func:`map_colours` of the map.

    Returns:
        A figure with the image trace and, on top, a heatmap of the H×W resized map with a
        colorbar; only the top layer hovers (x, y and the resized map's value).

    Raises:
        ValueError: If ``opacity`` is outside [0, 1] or an array has the wrong shape.
        TypeError: If ``opacity`` is not a number.
    """
    check_opacity(opacity)
    base = _as_image(image)
    layer = _as_map2d(map2d).astype(np.float32)
    _check_finite(layer, "The channel map's values")
    height, width = base.shape[:2]
    resized = np.asarray(Image.fromarray(layer).resize((width, height), Image.Resampling.BILINEAR))
    colours = colours or map_colours(layer)
    top = go.Heatmap(
        z=resized,
        opacity=float(opacity),
        **colours.plotly(float(resized.min()), float(resized.max()), overlay=True),
        colorbar={"thickness": 12},
        hovertemplate="x %{x} · y %{y} · value %{z:.4g}<extra></extra>",
    )
    return _figure([_image_trace(base, hover=False), top], title, IMAGE_HEIGHT, image=True)


def overlay_png(
    image: np.ndarray,
    map2d: np.ndarray,
    opacity: float = 0.8,
    side: int | None = None,
    dim: float = 0.5,
) -> bytes:
    """A map's evidence laid over an image, as one RGB PNG: the overlay of
    :func:`overlay_figure` without plotly, for a page that shows many at once.

    Only the map's positive part is drawn (evidence *for*), on the non-negative ramp
    from the image itself at zero to opaque yellow at the map's largest value.

    Args:
        image: H×W grayscale or H×W×3 uint8 RGB.
        map2d: h×w values, resized (bilinear) to the image.
        opacity: Opacity where the map is strongest, 0 to 1.
        side: Enlarge (nearest neighbour, whole multiples) until the longer side
            reaches at least this many pixels; default as it is.
        dim: The image's brightness under the map, 0 to 1: a white digit dimmed to
            grey lets yellow evidence on its strokes stand out. 1 keeps it as it is.

    Raises:
        ValueError: If ``opacity`` is outside [0, 1], an array has the wrong shape, or
            the map holds NaN or infinite values.
    """
    check_opacity(opacity)
    check_opacity(dim)
    base = _as_image(image)
    if base.ndim == 2:
        png = Image.open(io.BytesIO(image_png(base)))
        base = np.asarray(png.convert("RGB"))
    base = base.astype(np.float32) * dim
    layer = _as_map2d(map2d).astype(np.float32)
    _check_finite(layer, "The map's values")
    height, width = base.shape[:2]
    resized = np.asarray(Image.fromarray(layer).resize((width, height), Image.Resampling.BILINEAR))
    colours = MapColours(signed=False)
    places = colours.places(np.maximum(resized, 0), float(resized.max(initial=0.0)))
    palette = np.frombuffer(_palette(SEQUENTIAL), np.uint8).reshape(-1, 3)[:_PNG_LEVELS]
    tint = palette[np.rint(places * (_PNG_LEVELS - 1)).astype(np.int64)].astype(np.float32)
    alpha = (colours.alpha(places) * opacity)[..., None].astype(np.float32)
    mixed = np.rint(base * (1 - alpha) + tint * alpha).astype(np.uint8)
    if side is not None and max(height, width) < side:
        times = -(-side // max(height, width))
        mixed = mixed.repeat(times, axis=0).repeat(times, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(mixed).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def bar_figure(
    labels: list,
    values: list | np.ndarray,
    title: str,
    x_title: str,
    y_title: str,
    highlight: object | None = None,
) -> go.Figure:
    """A vertical bar chart over categorical labels, e.g. label counts or class probabilities.

    Args:
        labels: One label per bar, in display order; digits stay categories, not numbers.
        values: One value per label.
        title: Figure title.
        x_title: Title of the label axis.
        y_title: Title of the value axis.
        highlight: The label whose bar gets ``HIGHLIGHT_COLOUR`` (e.g. the prediction).

    Returns:
        A figure with one ``go.Bar`` trace.

    Raises:
        ValueError: If labels and values differ in length, or ``highlight`` is not a label.
    """
    labels = list(labels)
    heights = np.asarray(values)
    if heights.ndim != 1 or len(heights) != len(labels):
        raise ValueError(
            f"bar_figure needs one value per label; got {len(labels)} labels and values of "
            f"shape {heights.shape}."
        )
    chosen = [highlight is not None and label == highlight for label in labels]
    if highlight is not None and not any(chosen):
        raise ValueError(f"highlight {highlight!r} is not one of the labels {labels}.")
    trace = go.Bar(
        x=labels,
        y=heights,
        marker_color=[HIGHLIGHT_COLOUR if hit else BAR_COLOUR for hit in chosen],
        hovertemplate="%{x}: %{y:.4g}<extra></extra>",
    )
    return _figure(
        [trace],
        title,
        _CHART_HEIGHT,
        image=False,
        xaxis={"type": "category", "title": {"text": x_title}},
        yaxis={"title": {"text": y_title}},
    )


def preference_order(matrix: pd.DataFrame) -> list:
    """The channels (columns) grouped by the class (row) each prefers most, in the rows'
    order, strongest preference first within a class: a matrix of hundreds of channels
    then reads as blocks, one per class, instead of a barcode."""
    values = matrix.to_numpy(dtype=np.float64)
    values = np.where(np.isfinite(values), values, -np.inf)
    preferred = values.argmax(axis=0)
    strength = values[preferred, np.arange(values.shape[1])]
    order = np.lexsort((-strength, preferred))
    return [matrix.columns[i] for i in order]


def class_matrix_figure(
    matrix: pd.DataFrame, means: pd.DataFrame, relative: bool, title: str | None = None
) -> go.Figure:
    """A classes × channels heatmap, its channels grouped by the class each prefers
    (:func:`preference_order`); the hover always gives the channel and its mean activation.

    Args:
        matrix: classes × channels scores (means, or scores relative across classes).
        means: the mean activations of the same cells, for the hover.
        relative: whether ``matrix`` is relative: signed colours (:class:`MapColours`),
            white at 0; means are signed only where one is below zero.
        title: Optional figure title.
    """
    order = preference_order(matrix)
    z = matrix[order].to_numpy(dtype=np.float32)
    shown = z[np.isfinite(z)]
    low, high = (float(shown.min()), float(shown.max())) if shown.size else (0.0, 1.0)
    trace = go.Heatmap(
        z=z,
        x=[str(channel) for channel in order],
        y=[str(name) for name in matrix.index],
        customdata=means[order].to_numpy(dtype=np.float32),
        **map_colours(shown, signed=relative or None).plotly(low, high),
        colorbar={"thickness": 12, "title": {"text": "score" if relative else "mean"}},
        hovertemplate="class %{y} · channel %{x} · mean %{customdata:.4g}<extra></extra>",
    )
    return _figure(
        [trace],
        title,
        max(250, 28 * len(matrix) + 100),
        image=False,
        xaxis={"title": {"text": "channel, grouped by the class it prefers"}, "type": "category"},
        yaxis={"title": {"text": matrix.index.name}, "type": "category", "autorange": "reversed"},
    )


def embedding_figure(
    points: np.ndarray,
    labels: list[object | None],
    filenames: list[str],
    wrong: np.ndarray | None = None,
    title: str | None = None,
) -> go.Figure:
    """Images as points on a 2-D map: one trace per label (colour, legend), crosses for mistakes.

    Each point's ``customdata`` is its row in ``points``, which a selection reports.

    Args:
        points: N×2 coordinates.
        labels: the N labels (``None`` for unlabelled images).
        filenames: the N filenames, shown on hover.
        wrong: N booleans, True where the network's answer is wrong; ``None`` to mark none.
        title: Optional figure title.
    """
    names = np.array(filenames, dtype=object)
    keys = pd.Series(["unlabelled" if label is None else str(label) for label in labels])
    palette = pcolors.qualitative.Plotly
    traces = []
    for n, name in enumerate(sorted(keys.unique(), key=lambda s: (len(s), s))):
        for mistaken in (False, True) if wrong is not None else (False,):
            chosen = (keys == name).to_numpy()
            if wrong is not None:
                chosen = chosen & (wrong == mistaken)
            rows = np.flatnonzero(chosen)
            if not len(rows):
                continue
            traces.append(
                go.Scattergl(
                    x=points[rows, 0],
                    y=points[rows, 1],
                    customdata=rows,
                    text=names[rows],
                    mode="markers",
                    name=f"{name} (wrong)" if mistaken else name,
                    legendgroup=name,
                    marker={
                        "color": palette[n % len(palette)],
                        "symbol": "x" if mistaken else "circle",
                        "size": 9 if mistaken else 5,
                        "opacity": 0.9 if mistaken else 0.6,
                    },
                    hovertemplate="%{text}<extra>" + name + "</extra>",
                )
            )
    return _figure(
        traces,
        title,
        520,
        image=False,
        dragmode="lasso",
        legend={"title": {"text": "label"}},
        xaxis={"showticklabels": False},
        yaxis={"showticklabels": False},
    )
