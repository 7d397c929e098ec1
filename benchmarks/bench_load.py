"""Many people at once: Streamlit's own websocket protocol, no browser.

    python benchmarks/bench_load.py [--sessions 16 32 64] [--clicks 5] [--port PORT]
    python benchmarks/bench_load.py --proxy 2 [--sessions 16 24 32]

Starts a dashboard server (or uses one already on ``--port``), then for each
number of sessions opens that many websockets to ``/_stcore/stream`` at once.
Each session does what a browser does: a ``rerun_script`` BackMsg for the
Feature maps page, read ForwardMsgs until ``script_finished``; then it clicks
"Another random image" (a ``rerun_script`` with the button's trigger) a bounded
number of times, timing click -> ``script_finished``. Prints p50/p90/p99 of
those times and the server's CPU use over the round (from ``/proc``), in cores.
Only ever talks to localhost.

``--proxy N`` starts N servers sharing one results folder behind nginx (Debian's
``nginx-light``), configured as ``docs/deploying.md`` says: ``hash $remote_addr consistent``,
so each session, coming from its own loopback address (127.0.0.2, 127.0.0.3...),
stays on one server, as each person's browser would.

Goal (issue 15): say how many sessions one server holds at p90 <= 1 s. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streamlit.proto.BackMsg_pb2 import BackMsg  # noqa: E402
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg  # noqa: E402

from tests import live_app  # noqa: E402

BUTTON = "Another random image"
PAGE = "Feature maps"
GOAL_P90_S = 1.0
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Session:
    """One simulated browser: its websocket, the page it is on and the button's id."""

    socket: object
    page_hash: str = ""
    button_id: str = ""
    widgets: dict[str, str] = field(default_factory=dict)  # label -> id, seen in deltas


def _elements(message: ForwardMsg):
    """The elements a delta adds (a button, a slider...), if it adds one."""
    if message.WhichOneof("type") != "delta":
        return ()
    delta = message.delta
    if delta.WhichOneof("type") == "new_element":
        return (delta.new_element,)
    return ()


async def _read_until_finished(session: Session, timeout: float) -> None:
    """Read ForwardMsgs until the script run ends; note pages and widget ids on the way."""
    while True:
        data = await asyncio.wait_for(session.socket.recv(), timeout)
        message = ForwardMsg()
        message.ParseFromString(data)
        kind = message.WhichOneof("type")
        if kind in ("new_session", "navigation"):
            for page in getattr(message, kind).app_pages:
                if PAGE.lower() in (page.page_name.lower(), page.url_pathname.replace("_", " ")):
                    session.page_hash = page.page_script_hash
        elif kind == "script_finished":
            return
        for element in _elements(message):
            which = element.WhichOneof("type")
            widget = getattr(element, which, None)
            if widget is not None and hasattr(widget, "id") and hasattr(widget, "label"):
                session.widgets[widget.label] = widget.id


async def _rerun(session: Session, trigger: str = "") -> None:
    back = BackMsg()
    state = back.rerun_script
    state.page_script_hash = session.page_hash
    if trigger:
        widget = state.widget_states.widgets.add()
        widget.id = trigger
        widget.trigger_value = True
    await session.socket.send(back.SerializeToString())


async def _open(port: int, timeout: float, source: str | None = None) -> Session:
    """Connect (from the loopback address ``source``, if given) and load the home page,
    then the Feature maps page, as a browser would."""
    import websockets

    socket = await websockets.connect(
        f"ws://127.0.0.1:{port}/_stcore/stream",
        subprotocols=["streamlit"],
        max_size=None,
        open_timeout=timeout,
        **({"local_addr": (source, 0)} if source else {}),
    )
    session = Session(socket)
    await _rerun(session)
    await _read_until_finished(session, timeout)
    if not session.page_hash:
        raise RuntimeError(f"the server lists no page called {PAGE!r}")
    await _rerun(session)
    await _read_until_finished(session, timeout)
    if BUTTON not in session.widgets:
        raise RuntimeError(f"no {BUTTON!r} button on {PAGE}: saw {sorted(session.widgets)}")
    session.button_id = session.widgets[BUTTON]
    return session


async def _clicks(session: Session, clicks: int, timeout: float, start) -> list[float]:
    await start.wait()
    times = []
    for _ in range(clicks):
        began = time.perf_counter()
        await _rerun(session, session.button_id)
        await _read_until_finished(session, timeout)
        times.append(time.perf_counter() - began)
    return times


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) processes have used, their ended threads included."""
    total = 0.0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def _source(i: int, spread: bool) -> str | None:
    """Session ``i``'s own loopback address when sessions should look like many people."""
    return f"127.0.{2 + i // 250}.{2 + i % 250}" if spread else None


async def round_of(
    port: int, sessions: int, clicks: int, timeout: float, spread: bool = False
) -> list[float]:
    """Open ``sessions`` sessions, then let them all click at once; the click times."""
    opened = await asyncio.gather(
        *(_open(port, timeout, _source(i, spread)) for i in range(sessions))
    )
    start = asyncio.Event()
    tasks = [asyncio.create_task(_clicks(s, clicks, timeout, start)) for s in opened]
    start.set()
    try:
        return [t for times in await asyncio.gather(*tasks) for t in times]
    finally:
        await asyncio.gather(*(s.socket.close() for s in opened))


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), by the nearest-rank rule."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def report(
    port: int, pids: list[int], sessions: int, clicks: int, timeout: float, spread: bool = False
) -> float:
    """Run one round and print its line; returns the p90."""
    before, began = [cpu_seconds([pid]) for pid in pids], time.perf_counter()
    times = asyncio.run(round_of(port, sessions, clicks, timeout, spread))
    wall = time.perf_counter() - began
    each = [(cpu_seconds([pid]) - b) / wall for pid, b in zip(pids, before, strict=True)]
    cores = sum(each)
    p90 = percentile(times, 90)
    print(
        f"{sessions:3d} sessions x {clicks} clicks: p50 {percentile(times, 50):5.2f} s  "
        f"p90 {p90:5.2f} s  p99 {percentile(times, 99):5.2f} s  max {max(times):5.2f} s  "
        f"server CPU {cores:4.2f} cores"
        + (f" ({' + '.join(f'{c:.2f}' for c in each)})" if len(each) > 1 else "")
        + f" over {wall:5.1f} s  "
        f"p90 <= {GOAL_P90_S:.0f} s: {'meets' if p90 <= GOAL_P90_S else 'MISSES'}",
        flush=True,
    )
    return p90


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--clicks", type=int, default=5, help="clicks per session (default 5)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per script run")
    parser.add_argument("--port", type=int, help="use the server already on this port")
    parser.add_argument("--pid", type=int, help="its process id, for CPU use (with --port)")
    parser.add_argument("--warmup", type=int, default=4, help="sessions of a first, untimed round")
    parser.add_argument(
        "--proxy", type=int, metavar="N", help="N servers behind nginx, one results folder"
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.proxy:
            port, pids = stack.enter_context(proxied_servers(args.proxy))
        elif args.port is None:
            server = live_app.start_server(timeout=120)
            stack.callback(live_app.stop_server, server)
            port, pids = server.port, [server.pid]
        else:
            if args.pid is None:
                parser.error("--pid is needed with --port, to read the server's CPU use")
            port, pids = args.port, [args.pid]
        spread = bool(args.proxy)
        # Each server warms up: a proxy sends each address to one of them.
        asyncio.run(round_of(port, args.warmup * len(pids), 1, args.timeout, spread))
        print(
            f"{len(pids)} dashboard server(s) {pids}{' behind nginx' if args.proxy else ''}, "
            f"{os.cpu_count()} CPU cores, '{BUTTON}' on {PAGE}"
        )
        for sessions in args.sessions:
            report(port, pids, sessions, args.clicks, args.timeout, spread)


NGINX_CONF = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  upstream cnnlens {{ hash $remote_addr consistent; {servers} }}
  server {{ listen 127.0.0.1:{port}; location / {{
    proxy_pass http://cnnlens; proxy_http_version 1.1; proxy_read_timeout 86400;
    proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade";
    proxy_set_header Host $host; }} }}
}}
"""


@contextlib.contextmanager
def proxied_servers(count: int) -> Iterator[tuple[int, list[int]]]:
    """``count`` dashboard servers sharing one results folder behind nginx: (port, pids)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise SystemExit("--proxy needs nginx: apt-get install -y nginx-light")
    with tempfile.TemporaryDirectory() as prefix, contextlib.ExitStack() as stack:
        os.environ["CNNLENS_CACHE_DIR"] = str(Path(prefix) / "cache")  # shared by the servers
        servers = []
        for _ in range(count):
            server = live_app.start_server(timeout=120)
            stack.callback(live_app.stop_server, server)
            servers.append(server)
        port = live_app.free_port()
        conf = Path(prefix) / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                prefix=prefix,
                port=port,
                servers=" ".join(f"server 127.0.0.1:{s.port};" for s in servers),
            )
        )
        subprocess.run([nginx, "-c", str(conf), "-p", prefix], check=True)
        stack.callback(subprocess.run, [nginx, "-c", str(conf), "-p", prefix, "-s", "stop"])
        yield port, [server.pid for server in servers]


if __name__ == "__main__":
    main()
