"""Drive the real dashboard: a server started as `make run` does, and a headless Chromium.

Shared by ``tests/test_browser.py`` and ``benchmarks/bench_dashboard.py``. Nothing here
times anything; the benchmark does its own timing.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
IDLE_SELECTOR = '[data-testid="stApp"][data-test-script-state="notRunning"]'
STATUS_SELECTOR = '[data-testid="stStatusWidget"]'


def key_class(key: str) -> str:
    """The CSS class Streamlit gives an element's container: ``st-key-`` plus the key, with
    every character outside ``[a-zA-Z0-9_-]`` replaced by ``-`` (``open_3.png`` ->
    ``st-key-open_3-png``)."""
    return "st-key-" + re.sub(r"[^a-zA-Z0-9_-]", "-", key.strip())


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health_ok(port: int, timeout: float = 1.0) -> bool:
    """Whether the server on ``port`` answers its health check with "ok"."""
    try:
        with urllib.request.urlopen(
            f"http://localhost:{port}/_stcore/health", timeout=timeout
        ) as response:
            return response.status == 200 and response.read().strip() == b"ok"
    except (OSError, urllib.error.URLError):
        return False


@dataclass
class Server:
    """A running dashboard (or floor page) server: its process, port and log file."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    log: IO[bytes]
    started_at: float  # time.perf_counter() just before Popen

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log, for failure messages."""
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]


def launch_server(
    port: int | None = None,
    extra_args: Sequence[str] = (),
    log_name: str | None = None,
    script: str | None = None,
) -> Server:
    """Start the dashboard as ``make run`` does, in the repo root, without waiting for it.

    Args:
        script: Instead, ``streamlit run`` this app, relative to the repo root: the
            benchmark's floor pages, or ``"dashboard.py"`` started without the launcher.
        port: Port to serve on; default a free one.
        extra_args: More command-line flags, e.g. ``["--runner.postScriptGC", "true"]``.
        log_name: File name of the log under ``test-artifacts/``; default from the port.
    """
    port = port or free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / (log_name or f"streamlit-{port}.log")
    log = log_path.open("wb")
    if script is None:
        command = [sys.executable, "-m", "cnnlens.ui.serve"]
    else:
        command = [str(Path(sys.executable).parent / "streamlit"), "run", script]
    command += ["--server.port", str(port), *extra_args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started_at = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    return Server(process, port, log_path, log, started_at)


def python_of(tree: Path) -> str:
    """The tree's own virtualenv Python, or this one."""
    own = tree / ".venv" / "bin" / "python"
    return str(own) if own.exists() else sys.executable


def serve_tree(
    tree: Path, env: dict[str, str] | None = None, script: str | None = None, log_name: str = "tree"
) -> Server:
    """``cnnlens serve`` run from another checkout ``tree`` (or ``streamlit run script``
    there) with its own Python and code, healthy: how a benchmark measures an older tree
    beside this one.

    Args:
        tree: the checkout.
        env: more environment variables (the dataset, the results store...).
        script: instead, an app file of the tree, relative to it.
        log_name: the log's prefix under ``test-artifacts/``.
    """
    port = free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / f"{log_name}-{port}.log"
    log = log_path.open("wb")
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(tree)}
    module = ["-m", "cnnlens.ui.serve"] if script is None else ["-m", "streamlit", "run", script]
    command = [python_of(tree), *module, "--server.port", str(port)]
    process = subprocess.Popen(command, cwd=tree, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Server(process, port, log_path, log, time.perf_counter())
    try:
        wait_healthy(server, timeout=180)
    except BaseException:
        stop_server(server)
        raise
    return server


def wait_healthy(server: Server, timeout: float = 60.0, poll: float = 0.05) -> None:
    """Block until the server's health check says "ok".

    Raises:
        RuntimeError: If the process exits or the timeout passes first (with the log's end).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"streamlit exited with code {server.process.returncode}:\n{server.log_tail()}"
            )
        if health_ok(server.port, timeout=poll * 10):
            return
        time.sleep(poll)
    raise RuntimeError(f"streamlit not healthy after {timeout:.0f} s:\n{server.log_tail()}")


def start_server(
    port: int | None = None, extra_args: Sequence[str] = (), timeout: float = 60.0
) -> Server:
    """Start the dashboard and wait until it is healthy (stopping it if it never is)."""
    server = launch_server(port, extra_args)
    try:
        wait_healthy(server, timeout)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: Server, grace: float = 10.0) -> None:
    """Stop the server: SIGTERM, then SIGKILL after ``grace`` seconds; close its log."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(grace)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(grace)
    server.log.close()


@contextlib.contextmanager
def running_server(extra_args: Sequence[str] = ()) -> Iterator[Server]:
    """A healthy dashboard server for the duration of a ``with`` block."""
    server = start_server(extra_args=extra_args)
    try:
        yield server
    finally:
        stop_server(server)


def memory_mb(pid: int) -> dict[str, float]:
    """``VmHWM`` (peak resident set) and ``VmRSS`` (resident now) of a process, in MB (10⁶ B)."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0]) * 1024 / 1e6  # the kernel's kB are KiB
    return values


def launch_browser(playwright: Any) -> Any:
    """Headless Debian Chromium via ``playwright.sync_api`` (never a downloaded browser).

    Args:
        playwright: The object ``sync_playwright().start()`` returns.
    """
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS)
    )


@contextlib.contextmanager
def chromium_or_skip() -> Iterator[Any]:
    """Debian's headless Chromium for a test module; the tests skip without it, or fail
    where ``CI`` is set."""
    import pytest

    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (CI is set, so this is a failure)")
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        chromium = launch_browser(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


def wait_idle(page: Any, timeout: float = 30.0) -> None:
    """Wait until Streamlit has finished its script run and shows no status widget."""
    page.wait_for_selector(IDLE_SELECTOR, state="attached", timeout=timeout * 1000)
    page.wait_for_selector(STATUS_SELECTOR, state="detached", timeout=timeout * 1000)


_CHART_JS = """
([keyClass, trace, attr, points]) => {
  const box = document.querySelector(`.${keyClass} .js-plotly-plot`);
  if (!box || !box._fullData || !box._fullLayout) return null;
  const title = (box._fullLayout.title && box._fullLayout.title.text) || "";
  const shape = (z) => {
    if (z == null || z.length == null) return null;
    const first = z[0];
    return first != null && first.length != null ? [z.length, first.length] : [z.length];
  };
  const traces = box._fullData.map((t) => ({ type: t.type, z_shape: shape(t.z) }));
  let values = null;
  if (attr) {
    const table = box._fullData[trace][attr];
    values = points.map(([r, c]) => {
      const v = table[r][c];
      return v != null && v.length != null ? Array.from(v) : v;
    });
  }
  return { title: title.replace(/<[^>]*>/g, ""), traces, values };
}
"""


def plotly_chart(
    page: Any,
    key: str,
    trace: int = 0,
    attr: str | None = None,
    points: Sequence[tuple[int, int]] = (),
) -> dict[str, Any] | None:
    """Read what plotly drew for the chart with element key ``key`` (see ``key_class``).

    Reads the chart's ``_fullData`` (plotly has decoded Streamlit's base64 arrays there).

    Args:
        page: A playwright page.
        key: The chart's element key.
        trace: The trace to read ``points`` from.
        attr: A 2-D attribute of that trace to sample, e.g. ``"z"`` or ``"customdata"``.
        points: ``(row, column)`` pairs to read from ``attr``.

    Returns:
        ``{"title": str (HTML tags removed), "traces": [{"type", "z_shape"}], "values"}``
        with ``values[i]`` the value (a list for customdata) at ``points[i]``; None while
        the chart is not drawn yet.
    """
    return page.evaluate(_CHART_JS, [key_class(key), trace, attr, [list(p) for p in points]])


_MAP_VIEW_JS = """
([keyClass, points, all]) => {
  const view = document.querySelector(`.${keyClass} .cnnlens-map`);
  const img = view && view.querySelector(".cnnlens-map-maps");
  if (!view || !view.cnnlensData || !img.complete || !img.naturalWidth) return null;
  const data = view.cnnlensData;
  let raw = null;
  if (data.values) {
    const text = atob(data.values);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    raw = new Float32Array(bytes.buffer);
  }
  const at = ([c, y, x]) => raw[(c * data.height + y) * data.width + x];
  return {
    title: data.title || "",
    shape: [data.channels, data.height, data.width],
    columns: data.columns,
    picture: [img.naturalHeight, img.naturalWidth],
    values: raw && points.map(at),
    all: raw && all ? Array.from(raw) : null,
  };
}
"""


def map_view(
    page: Any, key: str, points: Sequence[tuple[int, int, int]] = (), everything: bool = False
) -> dict[str, Any] | None:
    """Read what the map view ``key`` shows (see ``cnnlens/ui/map_view.js``).

    Args:
        page: A playwright page.
        key: The map view's key, e.g. ``"grid"`` or ``"channel_map"``.
        points: ``(channel, y, x)`` triples whose raw values to read.
        everything: Also return every raw value, C·H·W in C order, as ``all``.

    Returns:
        ``{"title", "shape": [C, H, W], "columns", "picture": [height, width] in
        pixels, "values", "all"}``, or None while its picture is not shown yet.
    """
    return page.evaluate(_MAP_VIEW_JS, [key_class(key), [list(p) for p in points], everything])


def wait_chart(page: Any, key: str, title: str | None = None, timeout: float = 30.0) -> None:
    """Wait until the chart or map view ``key`` is drawn, and its title contains ``title``."""
    page.wait_for_function(
        """([keyClass, title]) => {
          const view = document.querySelector(`.${keyClass} .cnnlens-map`);
          if (view) {
            const img = view.querySelector(".cnnlens-map-maps");
            return img.complete && img.naturalWidth > 0
              && (title == null || (view.dataset.title || "").includes(title));
          }
          const box = document.querySelector(`.${keyClass} .js-plotly-plot`);
          if (!box || !box._fullData || !box._fullLayout) return false;
          const t = ((box._fullLayout.title && box._fullLayout.title.text) || "")
            .replace(/<[^>]*>/g, "");
          return title == null || t.includes(title);
        }""",
        arg=[key_class(key), title],
        timeout=timeout * 1000,
    )


def wait_charts_drawn(page: Any, timeout: float = 30.0) -> None:
    """Wait until every plotly chart on the page has been drawn (they load lazily)."""
    page.wait_for_function(
        """() => Array.from(document.querySelectorAll('[data-testid="stPlotlyChart"]'))
              .every((e) => { const p = e.querySelector(".js-plotly-plot");
                               return p && p._fullLayout; })""",
        timeout=timeout * 1000,
    )


def settle(page: Any, timeout: float = 30.0) -> None:
    """Wait for idle, then for the lazily loaded charts: call after the new content shows."""
    wait_idle(page, timeout)
    wait_charts_drawn(page, timeout)
