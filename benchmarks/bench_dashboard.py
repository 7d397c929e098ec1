"""The dashboard as people feel it: start-up, click-to-paint, stroke-to-paint, server
memory, postScriptGC.

    python benchmarks/bench_dashboard.py [--repeats 7] [--quick] [--start-only | --strokes-only]

Starts dashboard servers as ``make run`` does (``python -m cnnlens.ui.serve``) and drives
Debian's headless Chromium (``tests/live_app.py``). The demo clicks are interleaved with
clicks on a floor page (``floor_click_app.py``: one button, one map view whose picture
the click swaps), so the figures can be read against what Streamlit itself costs in the
same minutes.
Click timings are taken inside the page with ``performance.now()``: from the click to
the animation frame after the chart (or the grid's picture) shows the new image's
data, then to Streamlit's idle. Warm-up clicks are discarded; the table shows medians
with min-max. The postScriptGC servers and the floor run side by side and their clicks
are interleaved, since these machines are noisy. Strokes on the drawing pad (f, g) are
drawn with the mouse, timed in the page from the stroke's pointerup to the animation
frame that shows the last change of what follows it (Feature maps: the grid, the
answer, the channel and the ranking; Network: every column and the class scores),
interleaved with strokes on a floor page (``floor_stroke_app.py``: the pad and one map
view). Not a test.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import live_app  # noqa: E402

HOME_TITLE = "See what a neural network sees"
VGG_URL = "/feature_maps?model=vgg16&layers=pool_2&layer=pool_2"
GOALS = {"start": 3.0, "demo": 0.25, "vgg": 0.5, "memory": 800.0}  # s, s, s, MB
STROKE_GOALS = {"demo": 0.25, "network": 0.5}  # s: a stroke's end to everything painted
# What follows a stroke, by page: the elements whose change ends the timing.
WATCHED = {
    "demo": [".st-key-grid .cnnlens-map-maps", ".st-key-channel_map .cnnlens-map-maps",
             "[data-testid='stHtml']", ".st-key-ranking"],
    "network": ["[class*='st-key-network_'] .cnnlens-map-maps", "[data-class]"],
    "floor": [".st-key-grid .cnnlens-map-maps"],
}  # fmt: skip
PEER = {"start": "4.7 s (to idle)", "demo": "0.38 s", "memory": "850 MB"}

# In-page: the epoch time (ms) of the first animation frame that shows the home title.
_TITLE_PAINTED_JS = """
(title) => {
  const heading = Array.from(document.querySelectorAll("h1"))
    .find((h) => h.textContent.includes(title) && h.getBoundingClientRect().height > 0);
  return heading ? performance.timeOrigin + performance.now() : false;
}
"""

# In-page: a fingerprint of what the grid's map view shows (its picture, once decoded).
_SIGNATURES_JS = """
window.__gridSignature = () => {
  const img = document.querySelector(".st-key-grid .cnnlens-map-maps");
  return img && img.complete && img.naturalWidth > 0 ? img.src : null;
};
"""

# In-page: click a button, wait for a new signature, then for the frame that paints it.
_CLICK_TO_PAINT_JS = """
async ([buttonSelector, signature]) => {
  const read = window[signature];
  const before = read();
  const button = Array.from(document.querySelectorAll(buttonSelector))
    .find((b) => b.offsetParent !== null);  // Streamlit renders a hidden copy too
  const start = performance.now();
  button.click();
  for (;;) {
    await new Promise((resolve) => requestAnimationFrame(resolve));
    const now = read();
    if (now !== null && now !== before) break;
    if (performance.now() - start > 60000) throw new Error("the grid never changed");
  }
  // rAF callbacks run before paint: the next frame's start means this one was painted.
  await new Promise((resolve) => requestAnimationFrame(() => resolve()));
  return [start, performance.now() - start];
}
"""


# In-page: what the watched elements show (a picture's source once decoded, else the
# element's HTML), and a listener that notes the time of the next pointerup.
_STROKE_JS = """
window.__watched = (selectors) => selectors.map((s) => Array.from(document.querySelectorAll(s))
  .map((e) => e.tagName === "IMG" ? (e.complete && e.naturalWidth ? e.src : "loading")
                                  : e.innerHTML).join("|")).join("#");
window.__arm = (selectors) => {
  window.__strokeEnd = null;
  window.__before = window.__watched(selectors);
  window.addEventListener("pointerup", () => { window.__strokeEnd = performance.now(); },
                          { once: true, capture: true });
};
"""

# In-page: after a stroke, the time (ms) from its pointerup to the animation frame that
# shows the last change of the watched elements, once the run is over and 10 frames pass
# without a change.
_STROKE_TO_PAINT_JS = """
async (selectors) => {
  const idle = () => document.querySelector(
    '[data-testid="stApp"][data-test-script-state="notRunning"]') !== null;
  let last = window.__before, changed = null, quiet = 0;
  const start = performance.now();
  for (;;) {
    await new Promise((resolve) => requestAnimationFrame(resolve));
    const now = window.__watched(selectors);
    if (now !== last) { last = now; changed = performance.now(); quiet = 0; } else quiet++;
    if (changed !== null && idle() && quiet >= 10 && !now.includes("loading")) break;
    if (performance.now() - start > 60000) throw new Error("nothing followed the stroke");
  }
  return changed - window.__strokeEnd;
}
"""


@dataclass
class Clicks:
    """Click-to-paint and click-to-idle seconds of one server and page."""

    paint: list[float] = field(default_factory=list)
    idle: list[float] = field(default_factory=list)


def median_range(values: list[float], unit: str = "s", digits: int = 3) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{statistics.median(values):.{digits}f} {unit} ({low:.{digits}f}-{high:.{digits}f})"


def new_page(browser: Any) -> Any:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(120_000)
    page = context.new_page()
    page.add_init_script(_SIGNATURES_JS)
    page.add_init_script(_STROKE_JS)
    return page


def start_to_paint(browser: Any, repeats: int) -> dict[str, list[float]]:
    """(a): fresh servers in turn: cnnlens as ``make run`` starts it (Popen to health, to
    the home title painted, to idle), cnnlens under plain ``streamlit run``, and a bare
    Streamlit page under ``streamlit run`` (to the title painted)."""
    found: dict[str, list[float]] = {"health": [], "paint": [], "idle": [], "plain": [], "bare": []}
    scripts = {"bare": "benchmarks/bare_app.py", "plain": "dashboard.py", "paint": None}
    for i in range(repeats):
        order = list(scripts) if i % 2 == 0 else list(scripts)[::-1]
        for name in order:
            page = new_page(browser)
            popen_epoch = time.time()
            server = live_app.launch_server(script=scripts[name])
            try:
                live_app.wait_healthy(server, poll=0.05)
                if name == "paint":
                    found["health"].append(time.time() - popen_epoch)
                page.goto(server.url, wait_until="commit")
                painted = page.wait_for_function(_TITLE_PAINTED_JS, arg=HOME_TITLE, polling="raf")
                found[name].append(painted.json_value() / 1000 - popen_epoch)
                if name == "paint":
                    live_app.wait_idle(page, timeout=120)
                    found["idle"].append(time.time() - popen_epoch)
            finally:
                page.context.close()
                live_app.stop_server(server)
    return found


def open_page(page: Any, server: live_app.Server, path: str, ready: Callable[[], None]) -> None:
    """Open Home first (a fresh server's first visitor should be the entrypoint), then path."""
    page.goto(server.url)
    page.get_by_role("heading", name=HOME_TITLE).wait_for()
    live_app.wait_idle(page, timeout=120)
    page.goto(server.url + path)
    ready()
    live_app.settle(page, timeout=120)


def click_once(page: Any, signature: str, into: Clicks | None) -> None:
    """One "Another random image" click; recorded unless ``into`` is None (warm-up)."""
    start, paint_ms = page.evaluate(_CLICK_TO_PAINT_JS, [".st-key-next_image button", signature])
    live_app.wait_idle(page, timeout=120)
    idle_ms = page.evaluate("performance.now()") - start
    live_app.wait_charts_drawn(page, timeout=120)
    if into is not None:
        into.paint.append(paint_ms / 1000)
        into.idle.append(idle_ms / 1000)


def interleaved_clicks(
    pages: dict[str, Any], signature: str, repeats: int, warmup: int
) -> dict[str, Clicks]:
    """Clicks on each page in turn (alternating which goes first), warm-up discarded."""
    found = {name: Clicks() for name in pages}
    for _ in range(warmup):
        for page in pages.values():
            click_once(page, signature, None)
    names = list(pages)
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            click_once(pages[name], signature, found[name])
    return found


def stroke_once(page: Any, pad: str, watched: list[str], at: tuple[float, float]) -> float:
    """One mouse stroke (a short tick at ``at``, fractions of the pad) and the seconds from
    its end to everything it changes painted; then Undo, untimed."""
    canvas = page.locator(f".st-key-{pad}").get_by_role("img", name="Drawing pad")
    box = canvas.bounding_box()
    x, y = box["x"] + at[0] * box["width"], box["y"] + at[1] * box["height"]
    page.evaluate("(selectors) => window.__arm(selectors)", watched)
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 0.12 * box["width"], y + 0.1 * box["height"], steps=8)
    page.mouse.up()
    seconds = page.evaluate(_STROKE_TO_PAINT_JS, watched) / 1000
    page.locator(f".st-key-{pad}").get_by_role("button", name="Undo").click()
    live_app.wait_idle(page, timeout=120)
    live_app.wait_charts_drawn(page, timeout=120)
    return seconds


def interleaved_strokes(
    pages: dict[str, tuple[Any, str]], repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Strokes on each page in turn (alternating which goes first), each at a new place so
    that no result is cached; warm-up discarded. ``pages``: name -> (page, pad key)."""
    import random

    places = random.Random(0)
    found: dict[str, list[float]] = {name: [] for name in pages}
    names = list(pages)
    for i in range(warmup + repeats):
        at = (places.uniform(0.1, 0.75), places.uniform(0.1, 0.8))
        for name in names if i % 2 == 0 else names[::-1]:
            page, pad = pages[name]
            seconds = stroke_once(page, pad, WATCHED[name], at)
            if i >= warmup:
                found[name].append(seconds)
    return found


def measure_strokes(browser: Any, server: live_app.Server, repeats: int, warmup: int) -> dict:
    """(f) the demo's Feature maps pad beside the floor pad; (g) the Network page's pad."""
    floor = live_app.launch_server(script="benchmarks/floor_stroke_app.py")
    try:
        live_app.wait_healthy(floor)
        demo = new_page(browser)
        ready = functools.partial(live_app.wait_chart, demo, "grid", timeout=120)
        open_page(demo, server, "/feature_maps?input=draw", ready)
        network = new_page(browser)
        open_page(network, server, "/network?input=draw", lambda: None)
        floor_page = new_page(browser)
        floor_page.goto(floor.url)
        live_app.wait_chart(floor_page, "grid", timeout=120)
        live_app.settle(floor_page, timeout=120)
        pages = {"demo": (demo, "pad"), "floor": (floor_page, "pad")}
        found = interleaved_strokes(pages, repeats, warmup)
        found |= interleaved_strokes({"network": (network, "network_pad")}, repeats, warmup)
        for page in (demo, network, floor_page):
            page.context.close()
    finally:
        live_app.stop_server(floor)
    return found


def verdict(value: float | None, goal: float) -> str:
    if value is None:
        return "-"
    return "meets" if value <= goal else "MISSES"


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class Results:
    """Everything one run measured."""

    start: dict[str, list[float]]
    demo: dict[str, Clicks]  # by postScriptGC setting, "false" (the repo's config) and
    # "true", and "floor": the one-button page, clicked in turn with them
    memory: dict[str, dict[str, float]]  # the same servers after the demo clicks
    vgg: Clicks
    memory_vgg: dict[str, float]  # the postScriptGC=false server after the VGG clicks
    strokes: dict[str, list[float]]  # "demo", "floor" and "network": stroke to painted


def measure(browser: Any, repeats: int, warmup: int, start_repeats: int) -> Results:
    print(f"(a) start to first paint, {start_repeats} fresh servers ...", flush=True)
    start = start_to_paint(browser, start_repeats)

    print(
        f"(b, d, e) demo clicks, postScriptGC false vs true, and the floor page, {repeats} each",
        flush=True,
    )
    servers = {
        setting: live_app.start_server(extra_args=["--runner.postScriptGC", setting])
        for setting in ("false", "true")
    }
    floor = live_app.launch_server(script="benchmarks/floor_click_app.py")
    try:
        live_app.wait_healthy(floor)
        pages = {}
        for setting, server in servers.items():
            page = new_page(browser)
            ready = functools.partial(live_app.wait_chart, page, "grid", timeout=120)
            open_page(page, server, "/feature_maps?input=image", ready)
            pages[setting] = page
        pages["floor"] = new_page(browser)
        pages["floor"].goto(floor.url)
        live_app.wait_chart(pages["floor"], "grid", timeout=120)
        live_app.settle(pages["floor"], timeout=120)
        demo = interleaved_clicks(pages, "__gridSignature", repeats, warmup)
        memory = {setting: live_app.memory_mb(server.pid) for setting, server in servers.items()}
        for page in pages.values():
            page.context.close()
        live_app.stop_server(servers.pop("true"))
        live_app.stop_server(floor)

        print(f"(c) VGG16 pool_2 clicks, {repeats} ...", flush=True)
        page = new_page(browser)
        ready = functools.partial(live_app.wait_chart, page, "grid", timeout=180)
        open_page(page, servers["false"], VGG_URL, ready)
        vgg = interleaved_clicks({"vgg": page}, "__gridSignature", repeats, warmup)["vgg"]
        memory_vgg = live_app.memory_mb(servers["false"].pid)
        page.context.close()

        print(f"(f, g) strokes on the drawing pad, {repeats} each ...", flush=True)
        strokes = measure_strokes(browser, servers["false"], repeats, warmup)
    finally:
        for server in (*servers.values(), floor):
            live_app.stop_server(server)
    return Results(start, demo, memory, vgg, memory_vgg, strokes)


Row = tuple[str, str, str, str, str]


def start_rows(start: dict[str, list[float]]) -> list[Row]:
    """The rows of (a): measure, median (min-max), goal, peer, verdict."""
    return [
        ("(a) server start -> Home painted", median_range(start["paint"], digits=2),
         f"<= {GOALS['start']:.0f} s", PEER["start"], verdict(med(start["paint"]), GOALS["start"])),
        ("    the same under plain `streamlit run dashboard.py`",
         median_range(start["plain"], digits=2), "", "", ""),
        ("    bare Streamlit page under `streamlit run`", median_range(start["bare"], digits=2),
         "", "", ""),
        ("    server start -> health ok", median_range(start["health"], digits=2), "", "", ""),
        ("    server start -> idle", median_range(start["idle"], digits=2), "", "", ""),
    ]  # fmt: skip


def table(found: Results) -> list[Row]:
    """Rows of measure, median (min-max), goal, peer, verdict."""
    demo, memory = found.demo, found.memory
    mb = "{:.0f} MB".format
    rows = [
        *start_rows(found.start),
        ("(b) demo: new image -> grid painted", median_range(demo["false"].paint),
         f"<= {GOALS['demo']} s", PEER["demo"], verdict(med(demo["false"].paint), GOALS["demo"])),
        ("    demo: new image -> idle", median_range(demo["false"].idle), "", "", ""),
        ("    floor: one button, one map view, same minutes", median_range(demo["floor"].paint),
         "", "", ""),
        ("    demo click / floor click (medians)",
         f"{med(demo['false'].paint) / med(demo['floor'].paint):.2f}", "", "", ""),
        ("(c) VGG pool_2: new image -> grid painted", median_range(found.vgg.paint),
         f"<= {GOALS['vgg']} s", "", verdict(med(found.vgg.paint), GOALS["vgg"])),
        ("    VGG pool_2: new image -> idle", median_range(found.vgg.idle), "", "", ""),
        ("(d) demo server peak RSS (VmHWM)", mb(memory["false"]["VmHWM"]),
         f"<= {GOALS['memory']:.0f} MB", PEER["memory"],
         verdict(memory["false"]["VmHWM"], GOALS["memory"])),
        ("    demo server RSS now (VmRSS)", mb(memory["false"]["VmRSS"]), "", "", ""),
        ("    same server after (c) (VmHWM)", mb(found.memory_vgg["VmHWM"]), "", "", ""),
    ]  # fmt: skip
    for setting in ("false", "true"):
        rows += [
            (f"(e) postScriptGC={setting}: grid painted", median_range(demo[setting].paint),
             "", "", ""),
            (f"    postScriptGC={setting}: idle", median_range(demo[setting].idle), "", "", ""),
            (f"    postScriptGC={setting}: VmHWM / VmRSS",
             f"{memory[setting]['VmHWM']:.0f} / {mb(memory[setting]['VmRSS'])}", "", "", ""),
        ]  # fmt: skip
    rows += stroke_rows(found.strokes)
    cost = (med(demo["true"].idle) or 0) - (med(demo["false"].idle) or 0)
    saves = memory["false"]["VmHWM"] - memory["true"]["VmHWM"]
    rows.append(
        ("    postScriptGC=true costs / saves", f"{cost:+.3f} s to idle / {saves:+.0f} MB peak",
         "", "", "")
    )  # fmt: skip
    return rows


def stroke_rows(strokes: dict[str, list[float]]) -> list[Row]:
    """The rows of (f) and (g)."""
    demo, floor, network = (med(strokes[name]) for name in ("demo", "floor", "network"))
    return [
        ("(f) demo pad: stroke end -> grid, answer painted", median_range(strokes["demo"]),
         f"<= {STROKE_GOALS['demo']} s", "", verdict(demo, STROKE_GOALS["demo"])),
        ("    floor: the pad and one map view, same minutes", median_range(strokes["floor"]),
         "", "", ""),
        ("    demo stroke / floor stroke (medians)", f"{demo / floor:.2f}", "", "", ""),
        ("(g) Network pad: stroke end -> every column painted",
         median_range(strokes["network"]), f"<= {STROKE_GOALS['network']} s", "",
         verdict(network, STROKE_GOALS["network"])),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (default 7)")
    parser.add_argument(
        "--quick", action="store_true", help="3 repeats, 1 warm-up: a smoke run, not a result"
    )
    parser.add_argument(
        "--start-only", action="store_true", help="only (a), the server start to the first paint"
    )
    parser.add_argument(
        "--strokes-only", action="store_true", help="only (f) and (g), strokes on the pad"
    )
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    warmup = 1 if args.quick else 3
    start_repeats = 3 if args.quick else max(5, repeats)
    if not live_app.CHROMIUM.exists():
        sys.exit(
            f"{live_app.CHROMIUM} is missing: install Debian's chromium (make /usr/bin/chromium)"
        )

    from playwright.sync_api import sync_playwright

    began = time.perf_counter()
    with sync_playwright() as playwright:
        browser = live_app.launch_browser(playwright)
        try:
            version = browser.version
            if args.start_only:
                rows = start_rows(start_to_paint(browser, start_repeats))
            elif args.strokes_only:
                with live_app.running_server(["--runner.postScriptGC", "false"]) as server:
                    rows = stroke_rows(measure_strokes(browser, server, repeats, warmup))
            else:
                rows = table(measure(browser, repeats, warmup, start_repeats))
        finally:
            browser.close()

    headers = ("measure", "median (min-max)", "goal", "torch-cam peer", "")
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    print()
    timed = f"{repeats} timed clicks and strokes each ({warmup} warm-up discarded); "
    fresh = f"{start_repeats} fresh servers of each kind for (a); "
    what = fresh if args.start_only else timed if args.strokes_only else timed + fresh
    print(
        f"cnnlens dashboard, headless Chromium {version}, {os.cpu_count()} CPU cores; "
        f"{what}{time.perf_counter() - began:.0f} s in all"
        + ("  [--quick: a smoke run, not a result]" if args.quick else "")
    )
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(
        "\nMB = 10^6 bytes. Painted: the animation frame after the grid's picture shows the new "
        "image's data,\ntimed in the page. Idle: Streamlit's run is over and its status widget "
        "gone (polled from Python,\n+10-30 ms). (a) is wall-clock from Popen; peer (a) is "
        "torch-cam's start to idle."
    )


if __name__ == "__main__":
    main()
