"""Many people at once: Streamlit's own websocket protocol, no browser.

    python benchmarks/bench_load.py [--sessions 16 32 64] [--clicks 5] [--port PORT]

Starts a dashboard server (or uses one already on ``--port``), then for each
number of sessions opens that many websockets to ``/_stcore/stream`` at once.
Each session does what a browser does: a ``rerun_script`` BackMsg for the
Feature maps page, read ForwardMsgs until ``script_finished``; then it clicks
"Another random image" (a ``rerun_script`` with the button's trigger) a bounded
number of times, timing click -> ``script_finished``. Prints p50/p90/p99 of
those times and the server's CPU use over the round (from ``/proc``), in cores.
Only ever talks to localhost.

Goal (issue 15): say how many sessions one server holds at p90 <= 1 s. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
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


async def _open(port: int, timeout: float) -> Session:
    """Connect and load the home page, then the Feature maps page, as a browser would."""
    import websockets

    socket = await websockets.connect(
        f"ws://localhost:{port}/_stcore/stream",
        subprotocols=["streamlit"],
        max_size=None,
        open_timeout=timeout,
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


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process has used, its ended threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def round_of(port: int, sessions: int, clicks: int, timeout: float) -> list[float]:
    """Open ``sessions`` sessions, then let them all click at once; the click times."""
    opened = await asyncio.gather(*(_open(port, timeout) for _ in range(sessions)))
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


def report(port: int, pid: int, sessions: int, clicks: int, timeout: float) -> float:
    """Run one round and print its line; returns the p90."""
    before, began = cpu_seconds(pid), time.perf_counter()
    times = asyncio.run(round_of(port, sessions, clicks, timeout))
    cores = (cpu_seconds(pid) - before) / (wall := time.perf_counter() - began)
    p90 = percentile(times, 90)
    print(
        f"{sessions:3d} sessions x {clicks} clicks: p50 {percentile(times, 50):5.2f} s  "
        f"p90 {p90:5.2f} s  p99 {percentile(times, 99):5.2f} s  max {max(times):5.2f} s  "
        f"server CPU {cores:4.2f} cores over {wall:5.1f} s  "
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
    args = parser.parse_args()
    server = None
    if args.port is None:
        server = live_app.start_server(timeout=120)
        port, pid = server.port, server.pid
    else:
        port, pid = args.port, args.pid
        if pid is None:
            parser.error("--pid is needed with --port, to read the server's CPU use")
    try:
        asyncio.run(round_of(port, args.warmup, 1, args.timeout))
        print(f"dashboard server pid {pid}, {os.cpu_count()} CPU cores, '{BUTTON}' on {PAGE}")
        for sessions in args.sessions:
            report(port, pid, sessions, args.clicks, args.timeout)
    finally:
        if server is not None:
            live_app.stop_server(server)


if __name__ == "__main__":
    main()
