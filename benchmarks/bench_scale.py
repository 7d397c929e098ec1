"""The dashboard at 48,000 images: each row of issue 15's table, in headless Chromium.

    python benchmarks/bench_scale.py [--data /tmp/mnist48k] [--tree PATH] [--repeats 3]
        [--rows insights restart lasso compare dataset parquet tsne pick_many]

Builds the dataset first when ``--data`` has none: the demo's 4,000 digits as 12
shifted copies (``np.roll`` by -2..2 pixels), 48,000 PNGs and a ``train.csv``.
Then starts ``cnnlens serve`` from ``--tree`` (default this checkout; give a
worktree of another commit to time it side by side) with ``CNNLENS_DATA_ROOTS``
and ``CNNLENS_DATASET`` set and a fresh ``CNNLENS_CACHE_DIR``, and times, from the
action to the page having painted the result and Streamlit being idle:

- insights: Feature maps -> the Insights link, nothing computed (one pass);
- restart: the same after a server restart, results on disk;
- lasso: a box drawn on the embedding map -> the chosen images painted;
- compare: Compare, each change of the image compared with;
- dataset: the Dataset link -> first image painted, and -> page settled;
- parquet: the Parquet export, and the server's RSS before and after;
- tsne: t-SNE -> first progress shown (capped), and whether a Cancel button exists;
- pick_many: ``Dataset.pick_many`` at 4,000 vs 48,000 images (no browser).

Widgets are found by their labels and test ids, so the script runs against the
pages before and after issue 15. Each row prints median (min-max) and its goal.
Not a test; the figures are noisy on a shared machine, so compare trees
interleaved or one after the other in quiet minutes.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import live_app  # noqa: E402

DEMO = REPO / "cnnlens" / "demo" / "MNIST"
SHIFTS = [(dx, dy) for dx in (-2, -1, 1, 2) for dy in (-1, 0, 1)]  # 12 copies
GOALS = {
    "insights": ("Insights, first pass", None),
    "restart": ("Insights, results stored, after a restart", 1.0),
    "lasso": ("embedding map: a lasso selection -> its images", 1.0),
    "compare": ("Compare: each change", 0.5),
    "dataset_first": ("Dataset page -> first image", 1.0),
    "dataset_settled": ("Dataset page -> settled", None),
    "parquet": ("Parquet export", None),
    "tsne": ("t-SNE -> first progress", None),
    "pick_many": ("pick_many(seed, 12), 48k / 4k", None),
}
ALL_ROWS = ["insights", "restart", "lasso", "compare", "dataset", "parquet", "tsne", "pick_many"]

# Counts script runs as they start, so a wait never mistakes the idle state before a run
# for the idle state after it, however short the run.
_RUN_COUNTER_JS = """
window.__runs = 0;
new MutationObserver(() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const now = app && app.getAttribute("data-test-script-state");
  if (now === "running" && window.__lastState !== "running") window.__runs += 1;
  window.__lastState = now;
}).observe(document, { attributes: true, subtree: true,
                       attributeFilter: ["data-test-script-state"] });
"""
_IDLE_AFTER_JS = """
(runs) => window.__runs > runs && window.__lastState === "notRunning"
  && !document.querySelector('[data-testid="stStatusWidget"]')
  && !document.querySelector('[data-testid="stMain"] [data-testid="stProgress"]')
"""
_IMAGES_PAINTED_JS = """
() => {
  const imgs = Array.from(document.querySelectorAll('[data-testid="stMain"] img'));
  return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
}
"""


def build_dataset(folder: Path) -> int:
    """Write the 48k dataset into ``folder`` unless a ``train.csv`` is there; its size."""
    table = folder / "train.csv"
    if not table.is_file():
        (folder / "train").mkdir(parents=True, exist_ok=True)
        with (DEMO / "train.csv").open(newline="") as file:
            rows = list(csv.DictReader(file))
        with (folder / "train.tmp").open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["filename", "label"])
            for copy, (dx, dy) in enumerate(SHIFTS):
                for row in rows:
                    picture = np.asarray(Image.open(DEMO / "train" / row["filename"]))
                    name = f"{copy:02d}_{row['filename']}"
                    shifted = np.roll(picture, (dy, dx), axis=(0, 1))
                    Image.fromarray(shifted).save(folder / "train" / name)
                    writer.writerow([name, row["label"]])
        (folder / "train.tmp").replace(table)  # only a finished dataset is reused
    with table.open() as file:
        return sum(1 for _ in file) - 1


def launch(tree: Path, data: Path, store: Path) -> live_app.Server:
    """``cnnlens serve`` from ``tree`` on the dataset, with ``store`` as its results store."""
    env = {
        "CNNLENS_DATA_ROOTS": str(data.parent),
        "CNNLENS_DATASET": str(data),
        "CNNLENS_CACHE_DIR": str(store),
    }
    return live_app.serve_tree(tree, env, log_name="scale")


class Browser:
    """One page of headless Chromium on one server, with run-aware waits."""

    def __init__(self, browser: Any, server: live_app.Server) -> None:
        self.server = server
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.context.set_default_timeout(600_000)
        self.context.add_init_script(_RUN_COUNTER_JS)
        self.page = self.context.new_page()

    def runs(self) -> int:
        return int(self.page.evaluate("window.__runs"))

    def timed(self, act: Callable[[], None], done: str = _IDLE_AFTER_JS, cap: float = 600) -> float:
        """Seconds from ``act`` to the page being idle after a new run (or ``done`` true)."""
        runs = self.runs()
        began = time.perf_counter()
        act()
        arg = runs if done is _IDLE_AFTER_JS else None
        self.page.wait_for_function(done, arg=arg, timeout=cap * 1000, polling="raf")
        return time.perf_counter() - began

    def settle(self, runs: int, cap: float = 600) -> None:
        self.page.wait_for_function(_IDLE_AFTER_JS, arg=runs, timeout=cap * 1000)

    def link(self, name: str) -> Any:
        nav = self.page.locator('[data-testid="stSidebarNav"]')
        return nav.get_by_role("link", name=name, exact=False).first

    def button(self, name: str) -> Any:
        return self.page.locator('[data-testid="stMain"]').get_by_role(
            "button", name=name, exact=True
        )

    def option(self, name: str) -> Any:
        """An option of a segmented control (a radio button) or a plain button."""
        main = self.page.locator('[data-testid="stMain"]')
        return (
            main.get_by_role("radio", name=name, exact=True)
            .or_(main.get_by_role("button", name=name, exact=True))
            .first
        )

    def open_feature_maps(self) -> None:
        self.page.goto(f"{self.server.url}/feature_maps")
        live_app.wait_chart(self.page, "grid", timeout=300)
        live_app.wait_idle(self.page, timeout=300)

    def show(self, section: str) -> None:
        """Choose an Insights section ("Embedding map", "Compare") unless it shows."""
        target = self.option(section)
        if target.get_attribute("aria-checked") != "true":
            self.timed(target.click)


def row_insights(view: Browser) -> float:
    view.open_feature_maps()
    return view.timed(view.link("Insights").click)


def row_lasso(view: Browser, repeat: int, cap: float) -> float:
    """Lasso a band of the embedding map; time to the chosen images painted."""
    view.show("Embedding map")
    live_app.wait_charts_drawn(view.page, timeout=600)
    plot = view.page.locator(".js-plotly-plot").first
    plot.hover()
    plot.locator('.modebar [data-title="Lasso Select"]').click()
    box = plot.locator(".nsewdrag").first.bounding_box()
    left = box["x"] + box["width"] * (0.35 + 0.1 * repeat)
    right, top, bottom = left + box["width"] * 0.1, box["y"] + 5, box["y"] + box["height"] - 5
    view.page.mouse.move(left, top)
    view.page.mouse.down()
    for x, y in ((right, top), (right, bottom), (left, bottom), (left, top + 10)):
        view.page.mouse.move(x, y, steps=6)
    seconds = view.timed(view.page.mouse.up, cap=cap)
    view.page.wait_for_function(_IMAGES_PAINTED_JS, timeout=cap * 1000, polling="raf")
    return seconds


def row_compare(view: Browser, repeat: int, cap: float) -> float:
    """Another image to compare with; time the change to idle.

    By the section's "Another random image" button where it has one (a text box of
    the name), else by the next names down in the "Compare with" select box.
    """
    view.show("Compare")
    another = view.button("Another random image")
    if another.count():
        # A short rerun can finish between two polls of the run counter: wait for the
        # name in the "Compare with" box to change instead, then for the page to settle.
        before = view.page.locator('input[aria-label="Compare with"]').first.input_value()
        began = time.perf_counter()
        another.first.click()
        view.page.wait_for_function(
            "([label, old]) => [...document.querySelectorAll('input')].some("
            "i => i.getAttribute('aria-label') === label && i.value !== old)",
            arg=["Compare with", before],
            timeout=cap * 1000,
        )
        live_app.wait_idle(view.page, timeout=cap)
        return time.perf_counter() - began
    box = view.page.get_by_label("Compare with").first

    def change() -> None:
        box.click()
        for _ in range(repeat + 1):
            view.page.keyboard.press("ArrowDown")
        view.page.keyboard.press("Enter")

    return view.timed(change, cap=cap)


def row_dataset(view: Browser) -> tuple[float, float]:
    """From Feature maps, the Dataset link: to the first image painted, then to idle."""
    view.open_feature_maps()
    runs = view.runs()
    began = time.perf_counter()
    view.link("Dataset").click()
    view.page.wait_for_function(
        """() => document.querySelector('h1') && document.querySelector('h1')
                   .textContent.includes('Dataset')
              && Array.from(document.querySelectorAll('[data-testid="stMain"] img'))
                   .some((i) => i.complete && i.naturalWidth > 0)""",
        timeout=600_000,
        polling="raf",
    )
    first = time.perf_counter() - began
    view.settle(runs)
    return first, time.perf_counter() - began


def row_parquet(view: Browser, cap: float) -> tuple[float, float, float]:
    """The Parquet export: seconds to its download being offered, RSS before and after (MB)."""
    before = live_app.memory_mb(view.server.pid)["VmRSS"]
    view.page.get_by_text("Export the dataset's features").first.click()
    start = view.page.get_by_role("button", name="Parquet").first
    seconds = view.timed(
        start.click,
        done="""() => Array.from(document.querySelectorAll('[data-testid="stMain"] a,'
                 + ' [data-testid="stMain"] [data-testid="stDownloadButton"] button'))
                 .some((e) => /parquet/i.test(e.textContent) || /parquet/i.test(e.href || ''))""",
        cap=cap,
    )
    view.settle(0, cap)
    return seconds, before, live_app.memory_mb(view.server.pid)["VmRSS"]


def row_tsne(view: Browser, cap: float) -> tuple[float | None, bool]:
    """t-SNE on the embedding map: seconds to a progress bar (None past ``cap``), Cancel?"""
    view.show("Embedding map")
    began = time.perf_counter()
    view.option("t-SNE").click()
    try:
        view.page.wait_for_selector(
            '[data-testid="stMain"] [data-testid="stProgress"]', timeout=cap * 1000
        )
        seconds: float | None = time.perf_counter() - began
    except Exception:  # playwright's TimeoutError: no progress within the cap
        seconds = None
    return seconds, view.button("Cancel").count() > 0


_PICK_JS = """
import sys, time
from cnnlens.data import load_dataset
for root in sys.argv[1:]:
    dataset = load_dataset(root)
    dataset.pick_many(0, 12)
    began = time.perf_counter()
    for seed in range(200):
        dataset.pick_many(seed, 12)
    print((time.perf_counter() - began) / 200)
"""


def row_pick_many(tree: Path, data: Path) -> tuple[float, float]:
    """Seconds per ``pick_many(seed, 12)`` at 4,000 and at 48,000 images, in ``tree``."""
    out = subprocess.run(
        [
            live_app.python_of(tree),
            "-c",
            _PICK_JS,
            str(tree / "cnnlens" / "demo" / "MNIST"),
            str(data),
        ],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


class Results:
    """Figures by row, printed as median (min-max) with the row's goal."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}
        self.notes: dict[str, str] = {}

    def attempt(self, row: str, measure: Callable[[], None]) -> None:
        """Run one measurement; a failure is noted against the row, not fatal."""
        try:
            measure()
        except Exception as error:  # a page that changed shape: report it and go on
            self.notes[row] = f"failed: {type(error).__name__}: {str(error).splitlines()[0]}"

    def add(self, row: str, value: float) -> None:
        self.values.setdefault(row, []).append(value)

    def print(self) -> None:
        for row, (name, goal) in GOALS.items():
            found = self.values.get(row)
            text = "-"
            if found:
                median = statistics.median(found)
                unit = "x" if row == "pick_many" else "s"  # a ratio, not seconds
                text = f"{median:7.2f} {unit} ({min(found):.2f}-{max(found):.2f}, n={len(found)})"
                if goal is not None:
                    text += f"  goal <= {goal} s: {'meets' if median <= goal else 'MISSES'}"
            print(f"{name:46s} {text}  {self.notes.get(row, '')}".rstrip())


def browser_rows(browser: Any, args: argparse.Namespace, results: Results) -> None:
    """Every browser row: one server on a fresh store, then restarts on the same store."""
    rows, repeats = set(args.rows), args.repeats
    with tempfile.TemporaryDirectory() as store:
        server = launch(args.tree, args.data, Path(store))
        try:
            view = Browser(browser, server)
            results.attempt("insights", lambda: results.add("insights", row_insights(view)))
            for repeat in range(repeats if "lasso" in rows else 0):
                results.attempt(
                    "lasso", lambda r=repeat: results.add("lasso", row_lasso(view, r, args.cap))
                )
            for repeat in range(repeats if "compare" in rows else 0):
                results.attempt(
                    "compare",
                    lambda r=repeat: results.add("compare", row_compare(view, r, args.cap)),
                )
            if "parquet" in rows:
                results.attempt("parquet", lambda: parquet(view, args.cap, results))
            for _ in range(repeats if "dataset" in rows else 0):
                results.attempt("dataset_first", lambda: dataset(view, results))
            if "tsne" in rows:
                results.attempt("tsne", lambda: tsne(view, args.tsne_cap, results))
            view.context.close()
        finally:
            live_app.stop_server(server)
        for _ in range(repeats if "restart" in rows else 0):
            server = launch(args.tree, args.data, Path(store))
            try:
                view = Browser(browser, server)
                results.attempt("restart", lambda v=view: results.add("restart", row_insights(v)))
                view.context.close()
            finally:
                live_app.stop_server(server)


def parquet(view: Browser, cap: float, results: Results) -> None:
    seconds, before, after = row_parquet(view, cap)
    results.add("parquet", seconds)
    results.notes["parquet"] = f"server RSS {before:.0f} -> {after:.0f} MB"


def dataset(view: Browser, results: Results) -> None:
    first, settled = row_dataset(view)
    results.add("dataset_first", first)
    results.add("dataset_settled", settled)


def tsne(view: Browser, cap: float, results: Results) -> None:
    view.timed(view.link("Insights").click)
    seconds, cancel = row_tsne(view, cap)
    if seconds is not None:
        results.add("tsne", seconds)
    shown = "progress shown" if seconds is not None else f"no progress within {cap:.0f} s"
    results.notes["tsne"] = f"{shown}; Cancel button: {'yes' if cancel else 'no'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/mnist48k"))
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout to serve from")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", nargs="+", default=ALL_ROWS, choices=ALL_ROWS)
    parser.add_argument("--cap", type=float, default=300.0, help="seconds a row may take")
    parser.add_argument("--tsne-cap", type=float, default=60.0, help="seconds to wait for t-SNE")
    args = parser.parse_args()
    args.tree, args.data = args.tree.resolve(), args.data.resolve()
    began = time.perf_counter()
    images = build_dataset(args.data)
    results = Results()
    if "pick_many" in args.rows:
        small, large = row_pick_many(args.tree, args.data)
        results.add("pick_many", large / small)
        results.notes["pick_many"] = f"(ratio) {small * 1e6:.0f} us vs {large * 1e6:.0f} us"
    if set(args.rows) - {"pick_many"}:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = live_app.launch_browser(playwright)
            try:
                browser_rows(browser, args, results)
            finally:
                browser.close()
    print(
        f"{images:,} images in {args.data}, served from {args.tree}, headless Chromium, "
        f"{os.cpu_count()} CPU cores, {time.perf_counter() - began:.0f} s in all"
    )
    results.print()


if __name__ == "__main__":
    main()
