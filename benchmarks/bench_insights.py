"""The Insights page over the demo's 4,000 digits: click to first chart, uncached and cached.

    python benchmarks/bench_insights.py [--repeats 3]

Each repeat starts a dashboard server with an empty results store
(``CNNLENS_CACHE_DIR`` in a temporary folder), opens Feature maps (so the model
is loaded, as it is for someone who has been looking at maps), then clicks
"Insights" in the sidebar and times, in the page, from the click to the
animation frame after the first chart (the top images' scores) is drawn:

- uncached: nothing computed yet, the page runs one pass over the 4,000 digits;
- cached, same server: back to Feature maps and to Insights again;
- cached on disk: a new server on the same results store (a restart).

Goals (issue 5): at most 5 s uncached, at most 1 s cached. Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import live_app  # noqa: E402

GOALS = {"uncached": 5.0, "cached": 1.0, "restart": 1.0}

# In-page: click a sidebar link, wait for a chart with data, then for the frame that paints it.
_CLICK_TO_CHART_JS = """
async ([link, keyClass]) => {
  const anchor = Array.from(document.querySelectorAll('[data-testid="stSidebarNav"] a'))
    .find((a) => a.innerText.trim().endsWith(link));
  const drawn = () => document.querySelector(`.${keyClass} [data-label]`) !== null;
  const start = performance.now();
  anchor.click();
  while (!drawn()) {
    await new Promise((resolve) => requestAnimationFrame(resolve));
    if (performance.now() - start > 300000) throw new Error("no chart after 300 s");
  }
  await new Promise((resolve) => requestAnimationFrame(() => resolve()));
  return (performance.now() - start) / 1000;
}
"""


def open_feature_maps(page: Any, server: live_app.Server) -> None:
    """Home, then Feature maps with its grid drawn: the model is loaded and warm."""
    page.goto(server.url)
    page.get_by_role("heading", name="See what a neural network sees").wait_for()
    live_app.wait_idle(page, timeout=120)
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Feature maps").click()
    live_app.wait_chart(page, "grid", timeout=120)
    live_app.settle(page, timeout=120)


def to_insights(page: Any) -> float:
    seconds = page.evaluate(_CLICK_TO_CHART_JS, ["Insights", live_app.key_class("top_scores")])
    live_app.settle(page, timeout=300)
    return seconds


def to_feature_maps(page: Any) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Feature maps").click()
    live_app.wait_chart(page, "grid", timeout=120)
    live_app.settle(page, timeout=120)


def measure(browser: Any, repeats: int) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {"uncached": [], "cached": [], "restart": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as store:
            os.environ["CNNLENS_CACHE_DIR"] = store
            for case in ("uncached", "restart"):
                with live_app.running_server() as server:
                    context = browser.new_context(viewport={"width": 1400, "height": 1000})
                    context.set_default_timeout(300_000)
                    page = context.new_page()
                    open_feature_maps(page, server)
                    found[case].append(to_insights(page))
                    if case == "uncached":
                        to_feature_maps(page)
                        found["cached"].append(to_insights(page))
                    context.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh result stores (default 3)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    began = time.perf_counter()
    with sync_playwright() as playwright:
        browser = live_app.launch_browser(playwright)
        try:
            found = measure(browser, args.repeats)
        finally:
            browser.close()
    print(
        f"Insights over the demo's 4,000 digits, conv_1, headless Chromium, {os.cpu_count()} "
        f"CPU cores, {args.repeats} repeats, {time.perf_counter() - began:.0f} s in all"
    )
    names = {
        "uncached": "click -> first chart, nothing computed",
        "cached": "click -> first chart, computed before (same server)",
        "restart": "click -> first chart, results on disk (new server)",
    }
    for case, values in found.items():
        median = statistics.median(values)
        verdict = "meets" if median <= GOALS[case] else "MISSES"
        print(
            f"{names[case]:52s} {median:6.2f} s ({min(values):.2f}-{max(values):.2f})"
            f"  goal <= {GOALS[case]:.0f} s: {verdict}"
        )


if __name__ == "__main__":
    main()
