"""Which drawing pad: streamlit-drawable-canvas 0.13.0 (A) or cnnlens's own pad (B).

    python benchmarks/bench_pad_component.py [--strokes 15] [--canvas-dir DIR]

A is not in the project's lock and is never installed into .venv: it is read from
``--canvas-dir`` (default ``/tmp/padbench/canvas_pkg``), put there once with
``pip install --target DIR --no-deps streamlit-drawable-canvas==0.13.0``. B is
``cnnlens/ui/drawing_pad.py`` + ``.js`` (a Streamlit components-v2 component).

Two tiny apps, written to a temporary folder at run time, each show a 256-px pad and the
text "strokes N", N the strokes the server got (A: ``json_data``'s objects; B: the
session's drawing, decoded). Both are served side by side (``streamlit run``, PYTHONPATH
with the canvas folder for A only) and drawn on with the mouse in Debian's headless
Chromium (``tests/live_app.py``), one page each: per round one stroke on each pad (mouse
down, 10 moves, up, at a new place each time), alternating which goes first, since these
machines are noisy. 2 warm-up strokes per pad are discarded. Measured:
- latency: in the page, from the stroke's pointerup (a capture listener on window) to the
  animation frame that first shows "strokes K" (polled every frame);
- bytes browser->server: the WebSocket frames the page sent from the stroke's pointerdown
  until the rerun it caused is over;
- the JS each pad ships: A's frontend build (every .js) against B's drawing_pad.js.
Not a test.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import live_app  # noqa: E402

DEFAULT_CANVAS_DIR = Path("/tmp/padbench/canvas_pkg")
CANVAS_VERSION = "0.13.0"
SIDE = 256  # CSS pixels a side, both pads
WARMUP = 2

APP_A = """
import streamlit as st
from streamlit_drawable_canvas import st_canvas

result = st_canvas(
    stroke_width=22,
    stroke_color="#fff",
    background_color="#000",
    height=256,
    width=256,
    drawing_mode="freedraw",
    update_streamlit=True,
    return_image_data=True,  # 0.13.0: image_data raises without it; cnnlens needs pixels
    key="pad",
)
objects = (result.json_data or {}).get("objects", [])
st.markdown(f"strokes {len(objects)}")
"""

APP_B = """
import sys

import streamlit as st

sys.path.insert(0, {repo!r})

from cnnlens.drawing import Drawing
from cnnlens.registry import DEMO_INPUT
from cnnlens.ui.drawing_pad import pad_ui

# The pad's column grows to 320 px; hold it at 256 like A's.
st.html("<style>.st-key-pad .cnnlens-pad-main {{ flex: 0 0 256px; max-width: 256px; }}</style>")
text = st.session_state.setdefault("drawing", "")
pad_ui(text, DEMO_INPUT, key="pad")
n = len(Drawing.decode(text).strokes) if text else 0
st.markdown(f"strokes {{n}}")
"""

# Per app: the element the mouse draws on (plain page locators: both render in the page).
PAD_SELECTOR = {"A": ".dc-container", "B": ".st-key-pad canvas[aria-label='Drawing pad']"}
NAMES = {"A": "streamlit-drawable-canvas 0.13.0", "B": "cnnlens drawing_pad (components v2)"}

# In-page: note the time of the next pointerup (capture phase, before any pad sees it).
_ARM_JS = """
() => {
  window.__strokeEnd = null;
  window.addEventListener("pointerup", () => { window.__strokeEnd = performance.now(); },
                          { once: true, capture: true });
}
"""

# In-page: ms from the pointerup to the first animation frame that shows "strokes K".
_STROKE_TO_PAINT_JS = """
async (want) => {
  const text = `strokes ${want}`;
  const shown = () => Array.from(document.querySelectorAll('[data-testid="stMarkdownContainer"]'))
    .some((e) => e.textContent.trim() === text);
  const start = performance.now();
  for (;;) {
    await new Promise((resolve) => requestAnimationFrame(resolve));
    if (shown()) break;
    if (performance.now() - start > 60000) throw new Error(`"${text}" never showed`);
  }
  if (window.__strokeEnd === null) throw new Error("no pointerup was seen");
  return performance.now() - window.__strokeEnd;
}
"""

_SHOWS_JS = """
(text) => Array.from(document.querySelectorAll('[data-testid="stMarkdownContainer"]'))
  .some((e) => e.textContent.trim() === text)
"""


@dataclass
class Pad:
    """One app's server, page and what its strokes measured."""

    name: str
    server: live_app.Server
    page: Any = None
    strokes: int = 0
    sent: list[int] = field(default_factory=list)  # frame sizes since the stroke began
    latency_ms: list[float] = field(default_factory=list)
    bytes_sent: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)


def find_canvas(canvas_dir: Path) -> Path:
    """The streamlit_drawable_canvas package under ``canvas_dir``; exits if it is absent."""
    package = canvas_dir / "streamlit_drawable_canvas"
    if not (package / "__init__.py").is_file():
        sys.exit(
            f"streamlit_drawable_canvas is not in {canvas_dir}. Install it there (never into "
            f".venv: it is not in the project's lock):\n"
            f"    pip install --target {canvas_dir} --no-deps "
            f"streamlit-drawable-canvas=={CANVAS_VERSION}"
        )
    for metadata in canvas_dir.glob("streamlit_drawable_canvas-*.dist-info/METADATA"):
        for line in metadata.read_text(errors="replace").splitlines():
            if line.startswith("Version:") and line.split(":", 1)[1].strip() != CANVAS_VERSION:
                print(f"warning: {canvas_dir} holds {line.strip()}, not {CANVAS_VERSION}")
    return package


def serve(app: Path, logs: Path, name: str, pythonpath: str | None) -> live_app.Server:
    """``streamlit run app`` on a free port (from the app's folder), healthy."""
    port = live_app.free_port()
    log_path = logs / f"server_{name}.log"
    log = log_path.open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    command = [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.headless", "true", "--server.port", str(port),
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=app.parent, stdout=log, stderr=subprocess.STDOUT, env=env
    )
    server = live_app.Server(process, port, log_path, log, time.perf_counter())
    try:
        live_app.wait_healthy(server, timeout=120)
    except BaseException:
        live_app.stop_server(server)
        raise
    return server


def open_pad(browser: Any, pad: Pad) -> None:
    """The app's page, loaded and idle, its pad showing and "strokes 0" under it."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(120_000)
    page = context.new_page()
    page.on("websocket", lambda ws: ws.on("framesent", lambda data: pad.sent.append(len(data))))
    page.goto(pad.server.url)
    page.locator(PAD_SELECTOR[pad.name]).first.wait_for(state="visible")
    page.wait_for_function(_SHOWS_JS, arg="strokes 0")
    live_app.wait_idle(page, timeout=120)
    pad.page = page


def check_pads(pads: dict[str, Pad]) -> None:
    """Both pads are in the page itself (no iframe) and 256 px a side; exits if not."""
    for pad in pads.values():
        frames = len(pad.page.frames) - 1
        box = pad.page.locator(PAD_SELECTOR[pad.name]).first.bounding_box()
        size = f"{box['width']:.0f}x{box['height']:.0f}"
        print(f"{pad.name}: pad {size} CSS px, {frames} iframe(s) in the page")
        if frames or abs(box["width"] - SIDE) > 2 or abs(box["height"] - SIDE) > 2:
            sys.exit(f"{pad.name}: expected a {SIDE}-px pad in the page itself")


def stroke(pad: Pad, i: int, record: bool) -> None:
    """Stroke i: a short wavy line in cell i of a 3x4 grid over the pad, shifted each lap."""
    page = pad.page
    page.bring_to_front()
    box = page.locator(PAD_SELECTOR[pad.name]).first.bounding_box()
    lap, cell = divmod(i, 12)
    x0 = box["x"] + 24 + (cell % 3) * 72 + (lap % 3) * 6
    y0 = box["y"] + 24 + (cell // 3) * 52 + (lap % 3) * 5
    page.evaluate(_ARM_JS)
    pad.sent.clear()
    page.mouse.move(x0, y0)
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(x0 + 4 * k, y0 + k + (8 if k % 4 in (1, 2) else 0))
    page.mouse.up()
    pad.strokes += 1
    latency = page.evaluate(_STROKE_TO_PAINT_JS, pad.strokes)
    live_app.wait_idle(page, timeout=120)  # the rerun is over: nothing more to send
    if record:
        pad.latency_ms.append(latency)
        pad.bytes_sent.append(sum(pad.sent))
        pad.frames.append(len(pad.sent))


def percentile(values: list[float], q: float) -> float:
    """The q-quantile, linear between the nearest ranks."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def js_sizes(paths: list[Path]) -> tuple[int, int]:
    """Bytes of the files, and gzipped (level 9, each on its own)."""
    raw = sum(p.stat().st_size for p in paths)
    return raw, sum(len(gzip.compress(p.read_bytes(), 9)) for p in paths)


def report(pads: dict[str, Pad], package: Path, version: str, seconds: float) -> None:
    n = len(pads["A"].latency_ms)
    print()
    print(
        f"Drawing pads, headless Chromium {version}, {os.cpu_count()} CPU cores, "
        f"load {os.getloadavg()[0]:.2f}; {n} timed strokes each ({WARMUP} warm-up discarded), "
        f"alternating; {seconds:.0f} s in all"
    )
    headers = ("pad", "median ms", "p90 ms", "min-max ms", "sent bytes/stroke in frames (medians)")
    rows = []
    for name, pad in pads.items():
        ms = pad.latency_ms
        sent = f"{statistics.median(pad.bytes_sent):,.0f} in {statistics.median(pad.frames):g}"
        rows.append(
            (
                f"{name}: {NAMES[name]}",
                f"{statistics.median(ms):.1f}",
                f"{percentile(ms, 0.9):.1f}",
                f"{min(ms):.1f}-{max(ms):.1f}",
                sent,
            )
        )
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    ratio = statistics.median(pads["A"].latency_ms) / statistics.median(pads["B"].latency_ms)
    print(f"\nA/B, median latency: {ratio:.2f}")
    bundle_a = sorted((package / "frontend" / "build").rglob("*.js"))
    a_raw, a_gz = js_sizes(bundle_a)
    b_raw, b_gz = js_sizes([REPO / "cnnlens" / "ui" / "drawing_pad.js"])
    print(
        f"JS shipped: A {a_raw:,} bytes ({a_gz:,} gzipped; {len(bundle_a)} file(s) in "
        f"frontend/build) vs B {b_raw:,} bytes ({b_gz:,} gzipped; drawing_pad.js)"
    )
    print(
        "\nLatency: pointerup to the first animation frame showing the server's new count, "
        "timed in the page.\nSent: WebSocket frames browser->server from pointerdown to the "
        "end of the rerun; each pad sends\nits whole drawing, so this grows with the strokes."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strokes", type=int, default=15, help="timed strokes per pad")
    parser.add_argument(
        "--canvas-dir",
        type=Path,
        default=DEFAULT_CANVAS_DIR,
        help="where streamlit-drawable-canvas is installed with pip --target",
    )
    args = parser.parse_args()
    package = find_canvas(args.canvas_dir.resolve())
    from playwright.sync_api import sync_playwright

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_pad_") as folder:
        tmp = Path(folder)
        (tmp / "app_a.py").write_text(APP_A)
        (tmp / "app_b.py").write_text(APP_B.format(repo=str(REPO)))
        pads: dict[str, Pad] = {}
        try:
            pads["A"] = Pad("A", serve(tmp / "app_a.py", tmp, "A", str(package.parent)))
            pads["B"] = Pad("B", serve(tmp / "app_b.py", tmp, "B", None))
            with sync_playwright() as playwright:
                browser = live_app.launch_browser(playwright)
                try:
                    for pad in pads.values():
                        open_pad(browser, pad)
                    check_pads(pads)
                    order = list(pads)
                    for i in range(WARMUP + args.strokes):
                        for name in order if i % 2 == 0 else order[::-1]:
                            stroke(pads[name], i, record=i >= WARMUP)
                    version = browser.version
                finally:
                    browser.close()
        except BaseException:
            for pad in pads.values():
                print(f"--- server {pad.name} log ---\n{pad.server.log_tail()}", file=sys.stderr)
            raise
        finally:
            for pad in pads.values():
                live_app.stop_server(pad.server)
        report(pads, package, version, time.perf_counter() - began)


if __name__ == "__main__":
    main()
