"""The Dataset page at 4k and 48k images: click to first image, to settled; ``pick_many``.

    python benchmarks/bench_dataset_page.py [--repeats 5] [--dataset /tmp/mnist48k]
        [--repo PATH ...] [--pick-only]

Browser part: for each dataset (the demo, and ``--dataset`` if it exists) and each
``--repo`` (default this tree; give a worktree of an older commit to compare, the
repos' clicks are interleaved), a dashboard server is started in that tree as
``make run`` does. Each repeat opens Home, waits for idle, clicks "Dataset" in the
sidebar and times in the page, from the click: the animation frame after the first
image of the page is painted (the chosen image, or a grid picture), and the frame
after the page settled (Streamlit idle, every picture decoded, every chart drawn).

``pick_many`` part: the median time of ``pick_many(seed, 24)``, with and without a
label filter, on the demo and on the large dataset. Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import live_app  # noqa: E402

# In-page: click a sidebar link; the ms from the click to the frame after the first image of
# the main area is painted, and to the frame after the page settled.
_CLICK_TO_IMAGE_JS = """
async (link) => {
  const main = () => document.querySelector('[data-testid="stMain"]');
  const shown = (img) => img.complete && img.naturalWidth > 0 && img.offsetParent !== null;
  const drawn = (root) => {
    if (!root) return false;
    const plot = root.querySelector(".js-plotly-plot");
    if (plot && plot._fullLayout) return true;
    if (Array.from(root.querySelectorAll("img")).some(shown)) return true;
    const view = root.querySelector(".cnnlens-map-maps");
    return Boolean(view && shown(view));
  };
  const chosen = () => drawn(document.querySelector(".st-key-chosen_image"));
  const grid = () => {
    const root = main();
    return root !== null && Array.from(root.querySelectorAll("[data-testid='stImage'] img, "
      + ".st-key-dataset_grid img")).some(shown);
  };
  const counts = () => {
    const root = document.querySelector(".st-key-label_counts");
    return drawn(root) || (root !== null && root.querySelector("[data-label]") !== null);
  };
  const settled = () => {
    if (!document.querySelector('[data-testid="stApp"][data-test-script-state="notRunning"]')) {
      return false;
    }
    if (document.querySelector('[data-testid="stStatusWidget"]')) return false;
    const root = main();
    const charts = Array.from(root.querySelectorAll('[data-testid="stPlotlyChart"]'));
    const drawnChart = (c) => {
      const plot = c.querySelector(".js-plotly-plot");
      return plot && plot._fullLayout;
    };
    if (!charts.every(drawnChart)) return false;
    return Array.from(root.querySelectorAll("img")).every((img) => img.complete);
  };
  const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
  const anchor = Array.from(document.querySelectorAll('[data-testid="stSidebarNav"] a'))
    .find((a) => a.innerText.trim().endsWith(link));
  const start = performance.now();
  const found = {};
  const marks = { chosen, grid, counts };
  anchor.click();
  await frame();  // the old page may still be on screen for a frame
  let quiet = 0;  // settled for 5 frames in a row: a rerun has not just begun
  while (quiet < 5) {
    await frame();
    const now = (performance.now() - start) / 1000;  // this frame shows what the last one drew
    for (const [name, test] of Object.entries(marks)) {
      if (!(name in found) && test()) found[name] = now;
    }
    const counted = "counts" in found || !document.querySelector(".st-key-label_filter");
    quiet = settled() && "chosen" in found && counted ? quiet + 1 : 0;
    if (quiet === 1) found.settled = now;
    if (now > 60) throw new Error("not settled after 60 s: " + JSON.stringify(found));
  }
  found.first = Math.min(found.chosen ?? 99, found.grid ?? 99);
  return found;
}
"""


MARKS = {
    "first": "click -> first image painted",
    "chosen": "click -> the chosen image painted",
    "grid": "click -> a grid picture painted",
    "counts": "click -> label distribution drawn",
    "settled": "click -> settled",
}


def launch(repo: Path, env: dict[str, str]) -> live_app.Server:
    """A dashboard server run from ``repo`` (its own cnnlens and pages), as ``make run``."""
    port = live_app.free_port()
    live_app.ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = live_app.ARTIFACTS / f"bench-dataset-{port}.log"
    log = log_path.open("wb")
    command = [sys.executable, "-m", "cnnlens.ui.serve", "--server.port", str(port)]
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=repo,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    server = live_app.Server(process, port, log_path, log, started)
    live_app.wait_healthy(server, timeout=120)
    return server


def one_visit(browser: Any, server: live_app.Server) -> dict[str, float]:
    """Home, idle, then the timed click on "Dataset"; a fresh browser context each time."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(120_000)
    try:
        page = context.new_page()
        page.goto(server.url)
        page.get_by_role("heading", name="See what a neural network sees").wait_for()
        live_app.wait_idle(page, timeout=120)
        return page.evaluate(_CLICK_TO_IMAGE_JS, "Dataset")
    finally:
        context.close()


def browser_rows(repos: list[Path], datasets: list[Path | None], repeats: int) -> list[str]:
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as playwright:
        browser = live_app.launch_browser(playwright)
        try:
            for dataset in datasets:
                env = dict(os.environ)
                if dataset is not None:
                    env |= {
                        "CNNLENS_DATA_ROOTS": str(dataset.parent),
                        "CNNLENS_DATASET": str(dataset),
                    }
                servers = [launch(repo, env) for repo in repos]
                found: dict[int, list[dict[str, float]]] = {i: [] for i in range(len(repos))}
                try:
                    for i in range(repeats + 1):  # the first visit of each warms caches
                        order = list(range(len(repos)))
                        for r in order if i % 2 == 0 else order[::-1]:
                            result = one_visit(browser, servers[r])
                            if i:
                                found[r].append(result)
                finally:
                    for server in servers:
                        live_app.stop_server(server)
                name = "demo (4,000)" if dataset is None else dataset.name
                for r, repo in enumerate(repos):
                    rows.append(f"{name} in {repo}:")
                    for mark, words in MARKS.items():
                        values = [visit[mark] for visit in found[r] if mark in visit]
                        rows.append(f"    {words:38s} {_median(values)}")
        finally:
            browser.close()
    return rows


def _median(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def pick_rows(datasets: list[Path | None]) -> list[str]:
    """The median cost of ``pick_many`` for 24 names, unfiltered and filtered by two labels."""
    from cnnlens import demo_dataset
    from cnnlens.data import load_dataset

    rows = []
    for dataset in datasets:
        loaded = demo_dataset() if dataset is None else load_dataset(dataset)
        for labels in (None, loaded.labels[:2]):
            timer = timeit.Timer(lambda d=loaded, w=labels: d.pick_many(7, 24, labels=w))
            runs = [t / 20 for t in timer.repeat(repeat=7, number=20)]
            rows.append(
                f"pick_many(7, 24, labels={labels}) on {len(loaded.index):,} images: "
                f"{statistics.median(runs) * 1e3:.3f} ms (min {min(runs) * 1e3:.3f})"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed visits per server")
    parser.add_argument("--dataset", type=Path, default=Path("/tmp/mnist48k"))
    parser.add_argument("--repo", type=Path, action="append", help="trees to compare")
    parser.add_argument("--pick-only", action="store_true", help="only time pick_many")
    args = parser.parse_args()
    datasets: list[Path | None] = [None]
    if (args.dataset / "train.csv").is_file():
        datasets.append(args.dataset)
    else:
        print(f"{args.dataset} has no train.csv: the demo only (see /tmp/scale/make48k.py)")
    for row in pick_rows(datasets):
        print(row)
    if args.pick_only:
        return
    rows = browser_rows([r.resolve() for r in args.repo or [REPO]], datasets, args.repeats)
    print(
        f"Dataset page, headless Chromium, {os.cpu_count()} CPU cores, {args.repeats} visits "
        "each (1 warm-up discarded), medians (min-max) from the click on Dataset:"
    )
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
