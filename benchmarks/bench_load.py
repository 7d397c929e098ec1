"""Many people at once: Streamlit's own websocket protocol, no browser.

    python benchmarks/bench_load.py [--tree PATH] [--baseline PATH] [--sessions 16 32]
        [--clicks 5] [--single 20] [--own-images] [--full-rerun] [--delayed-acks]
        [--no-floor] [--port PORT --pid PID]
    python benchmarks/bench_load.py --proxy 2 [--sessions 16 24 32]

Starts a dashboard server from ``--tree`` (default this checkout; give a worktree
of another commit to measure an old and a new tree with the same script), and
beside it the floor page (``benchmarks/floor_click_app.py``: one button, one map
view whose picture the click swaps), i.e. what a click costs Streamlit itself.
Each simulated session does what a browser does: a ``rerun_script`` BackMsg for
the Feature maps page, read ForwardMsgs until ``script_finished``; then it clicks
"Another random image": a ``rerun_script`` with the button's trigger, the hashes
of the messages it already holds and, as Chromium sends it, the id of the
fragment the button is in. ``--full-rerun`` leaves the fragment out, as this
script did before issue 21: the whole page (sidebar, navigation) then reruns,
which no browser click on that button does. ``--baseline PATH`` serves a third
server, the dashboard from another tree ("base"), measured in the same minutes as
"demo". Prints, side by side:

- one session, ``--single`` clicks each, the servers taking turns in blocks:
  click -> ``script_finished`` (median), the server's CPU and the messages it sends
  per click, and each dashboard's ratios to the floor (and demo / base);
- ``--sessions`` sessions clicking at once, ``--clicks`` each, one server at a
  time (demo and base in turns): p50/p90/p99 of the click times, the server's CPU
  in cores and in ms per click (the sessions' opening left out).

Every session starts on the same seed, so they all see the same images and share
the cached features, unless ``--own-images`` gives each its own ``?seed=``.
Each session acknowledges every read at once (``TCP_QUICKACK``): with Linux's
delayed ACKs (``--delayed-acks``), a rerun's messages that outgrow the receive
window wait about 40 ms for the ACK, a stall of the connection, not work of the
server, which hit some clicks of both pages here and not others. CPU comes from ``/proc/PID/stat``
(user + system, ended threads included). Only ever talks to localhost.

``--proxy N`` starts N dashboard servers sharing one results folder behind nginx
(Debian's ``nginx-light``), configured as ``docs/deploying.md`` says: ``hash
$remote_addr consistent``, so each session, coming from its own loopback address
(127.0.0.2, 127.0.0.3...), stays on one server, as each person's browser would.

Goals (issue 21): 32 sessions at p90 <= 1 s on one server; the demo's click at
most 2.5x the floor's, measured in the same run. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import websockets  # noqa: E402
from streamlit.proto.BackMsg_pb2 import BackMsg  # noqa: E402
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg  # noqa: E402
from websockets.asyncio.client import ClientConnection  # noqa: E402

from tests import live_app  # noqa: E402

BUTTON = "Another random image"  # on the Feature maps page and on the floor page
PAGE = "Feature maps"
FLOOR_APP = "benchmarks/floor_click_app.py"
GOAL_P90_S = 1.0
GOAL_RATIO = 2.5  # demo click / floor click, one session
TICKS = os.sysconf("SC_CLK_TCK")
BLOCK = 5  # clicks of one app before the other's, in the one-session interleave
QUICK_ACK = threading.Event()  # set unless --delayed-acks
EARLY_FOR_RERUN = ForwardMsg.FINISHED_EARLY_FOR_RERUN


@dataclass
class Target:
    """A server to click: its name in the report, port, process ids and page."""

    name: str
    port: int
    pids: list[int]
    page: str | None  # a page to open after the first, or None to stay on the first


@dataclass(frozen=True)
class How:
    """How the simulated sessions click."""

    timeout: float = 120.0  # seconds per script run
    full_rerun: bool = False  # leave out the fragment id: the whole page reruns
    own_images: bool = False  # each session opens its own seed (a URL's ?seed=)
    spread: bool = False  # each session from its own loopback address (for a proxy)


@dataclass
class Session:
    """One simulated browser: its websocket, the page it is on and the button's ids."""

    socket: object
    page_hash: str = ""
    button_id: str = ""
    fragment_id: str = ""  # the button's fragment: a browser's click reruns only that
    widgets: dict[str, tuple[str, str]] = field(default_factory=dict)  # label -> (id, fragment)
    # Hashes of the cacheable messages of the last two runs, which a browser still holds.
    cached: deque[set[str]] = field(default_factory=lambda: deque([set(), set()], maxlen=2))
    messages: int = 0  # ForwardMsgs read so far


def _elements(message: ForwardMsg):
    """The elements a delta adds (a button, a slider...), if it adds one."""
    if message.WhichOneof("type") != "delta":
        return ()
    delta = message.delta
    if delta.WhichOneof("type") == "new_element":
        return (delta.new_element,)
    return ()


def _note(session: Session, message: ForwardMsg, kind: str, page: str | None) -> None:
    """Note the page's hash, widget ids and cacheable messages from one ForwardMsg."""
    if kind in ("new_session", "navigation") and page:
        for listed in getattr(message, kind).app_pages:
            if page.lower() in (listed.page_name.lower(), listed.url_pathname.replace("_", " ")):
                session.page_hash = listed.page_script_hash
    if kind == "ref_hash":
        session.cached[-1].add(message.ref_hash)
    elif message.metadata.cacheable:
        session.cached[-1].add(message.hash)
    for element in _elements(message):
        widget = getattr(element, element.WhichOneof("type"), None)
        if widget is not None and hasattr(widget, "id") and hasattr(widget, "label"):
            session.widgets[widget.label] = (widget.id, message.delta.fragment_id)


async def _read_until_finished(session: Session, timeout: float, page: str | None) -> None:
    """Read ForwardMsgs until the script run ends; note pages and widget ids on the way."""
    session.cached.append(set())
    while True:
        data = await asyncio.wait_for(session.socket.recv(), timeout)
        message = ForwardMsg()
        message.ParseFromString(data)
        session.messages += 1
        kind = message.WhichOneof("type")
        # A callback's st.rerun ends a run early; the browser waits for the run it queued.
        if kind == "script_finished" and message.script_finished != EARLY_FOR_RERUN:
            return
        _note(session, message, kind, page)


async def _rerun(session: Session, trigger: str = "", fragment: str = "", query: str = "") -> None:
    back = BackMsg()
    state = back.rerun_script
    state.page_script_hash = session.page_hash
    state.query_string = query
    state.cached_message_hashes.extend(set().union(*session.cached))
    if fragment:
        state.fragment_id = fragment
    if trigger:
        widget = state.widget_states.widgets.add()
        widget.id = trigger
        widget.trigger_value = True
    await session.socket.send(back.SerializeToString())


class QuickAckConnection(ClientConnection):
    """A websocket that acknowledges every read at once. Linux delays an ACK up to 40 ms;
    when a rerun's messages outgrow the receive window, the server's last messages wait
    for that ACK, a stall of the connection rather than work of the server."""

    def data_received(self, data: bytes) -> None:
        self.transport.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1
        )
        super().data_received(data)


async def _open(target: Target, how: How, i: int = 0) -> Session:
    """Session ``i``: connect and load the first page, then ``target.page``, as a browser
    would (from its own loopback address with ``how.spread``; with ``how.own_images``
    from a URL with its own ``?seed=``, so that it sees other images than the rest)."""
    source = f"127.0.{2 + i // 250}.{2 + i % 250}" if how.spread else None
    connection = await websockets.connect(
        f"ws://127.0.0.1:{target.port}/_stcore/stream",
        subprotocols=["streamlit"],
        max_size=None,
        open_timeout=how.timeout,
        create_connection=QuickAckConnection if QUICK_ACK.is_set() else None,
        **({"local_addr": (source, 0)} if source else {}),
    )
    session = Session(connection)
    query = f"seed={1000 + 100 * i}" if how.own_images and target.page else ""
    await _rerun(session, query=query)
    await _read_until_finished(session, how.timeout, target.page)
    if target.page:
        if not session.page_hash:
            raise RuntimeError(f"the server lists no page called {target.page!r}")
        await _rerun(session, query=query)
        await _read_until_finished(session, how.timeout, target.page)
    if BUTTON not in session.widgets:
        raise RuntimeError(f"no {BUTTON!r} button on {target.name}: saw {sorted(session.widgets)}")
    session.button_id, fragment = session.widgets[BUTTON]
    session.fragment_id = "" if how.full_rerun else fragment
    return session


async def _click(session: Session, timeout: float) -> float:
    """Press the button; seconds from the click to ``script_finished``."""
    began = time.perf_counter()
    await _rerun(session, session.button_id, session.fragment_id)
    await _read_until_finished(session, timeout, None)
    return time.perf_counter() - began


async def _clicks(session: Session, clicks: int, timeout: float, start) -> list[float]:
    await start.wait()
    return [await _click(session, timeout) for _ in range(clicks)]


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) processes have used, their ended threads included."""
    total = 0.0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


@dataclass
class Round:
    """All sessions' click times, and the server's CPU seconds (each process) and the
    wall seconds from the first click to the last answer (the sessions' opening left out)."""

    times: list[float]
    cpu: list[float]
    wall: float


async def round_of(target: Target, sessions: int, clicks: int, how: How) -> Round:
    """Open ``sessions`` sessions, then let them all click at once."""
    opened = await asyncio.gather(*(_open(target, how, i) for i in range(sessions)))
    start = asyncio.Event()
    tasks = [asyncio.create_task(_clicks(s, clicks, how.timeout, start)) for s in opened]
    before, began = [cpu_seconds([pid]) for pid in target.pids], time.perf_counter()
    start.set()
    try:
        times = [t for each in await asyncio.gather(*tasks) for t in each]
        wall = time.perf_counter() - began
        used = [cpu_seconds([p]) - b for p, b in zip(target.pids, before, strict=True)]
        return Round(times, used, wall)
    finally:
        await asyncio.gather(*(s.socket.close() for s in opened))


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), by the nearest-rank rule."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


@dataclass
class Single:
    """One session's clicks on one server: seconds each, and server CPU seconds in all."""

    times: list[float] = field(default_factory=list)
    cpu: float = 0.0
    messages: int = 0  # ForwardMsgs the server sent for these clicks

    def cpu_ms(self) -> float:
        return 1000 * self.cpu / len(self.times)


async def one_session(targets: list[Target], clicks: int, how: How) -> dict[str, Single]:
    """One session per target; ``clicks`` clicks each, the targets taking turns in blocks
    of ``BLOCK``, so both see the same minutes. CPU is read around each block."""
    sessions = [await _open(t, how) for t in targets]
    timeout = how.timeout
    found = {t.name: Single() for t in targets}
    try:
        for _ in range(2):  # untimed: the first clicks fill caches
            for session in sessions:
                await _click(session, timeout)
        while len(found[targets[0].name].times) < clicks:
            for target, session in zip(targets, sessions, strict=True):
                before, read = cpu_seconds(target.pids), session.messages
                for _ in range(BLOCK):
                    found[target.name].times.append(await _click(session, timeout))
                found[target.name].cpu += cpu_seconds(target.pids) - before
                found[target.name].messages += session.messages - read
    finally:
        await asyncio.gather(*(s.socket.close() for s in sessions))
    return found


def report_single(found: dict[str, Single]) -> None:
    """Print the one-session figures of each target, and each dashboard's ratios."""
    print(f"one session, {len(next(iter(found.values())).times)} clicks each, interleaved:")
    for name, single in found.items():
        times = single.times
        print(
            f"  {name:5s}  click median {statistics.median(times):6.3f} s "
            f"({min(times):.3f}-{max(times):.3f})  server CPU {single.cpu_ms():5.1f} ms/click"
            f"  {single.messages / len(times):4.1f} messages/click"
        )
    pairs = [(name, "floor") for name in ("demo", "base") if name in found and "floor" in found]
    pairs += [("demo", "base")] if {"demo", "base"} <= found.keys() else []
    for name, other in pairs:
        one, two = found[name], found[other]
        ratio = statistics.median(one.times) / statistics.median(two.times)
        goal = f" (goal <= {GOAL_RATIO}x: {'meets' if ratio <= GOAL_RATIO else 'MISSES'})"
        print(
            f"  {name} / {other}: click {ratio:.2f}x{goal if other == 'floor' else ''}, "
            f"CPU {one.cpu_ms() / two.cpu_ms():.2f}x",
            flush=True,
        )


def report(target: Target, sessions: int, clicks: int, how: How) -> float:
    """Run one round on ``target`` and print its line; returns the p90."""
    done = asyncio.run(round_of(target, sessions, clicks, how))
    times, used, wall = done.times, done.cpu, done.wall
    cores = sum(used) / wall
    p90 = percentile(times, 90)
    print(
        f"  {target.name:5s}  {sessions:3d} sessions x {clicks}: "
        f"p50 {percentile(times, 50):5.2f} s  p90 {p90:5.2f} s  "
        f"p99 {percentile(times, 99):5.2f} s  max {max(times):5.2f} s  "
        f"server CPU {cores:4.2f} cores"
        + (f" ({' + '.join(f'{u / wall:.2f}' for u in used)})" if len(used) > 1 else "")
        + f", {1000 * sum(used) / len(times):4.0f} ms/click, over {wall:5.1f} s"
        + (
            f"  p90 <= {GOAL_P90_S:.0f} s: {'meets' if p90 <= GOAL_P90_S else 'MISSES'}"
            if target.page
            else ""
        ),
        flush=True,
    )
    return p90


def launch(tree: Path, script: str | None = None, env: dict[str, str] | None = None):
    """``cnnlens serve`` from ``tree`` (or ``streamlit run script`` there), healthy."""
    return live_app.serve_tree(tree, env, script, log_name="load")


def _started(stack: contextlib.ExitStack, tree: Path, script: str | None = None):
    server = launch(tree, script)
    stack.callback(live_app.stop_server, server)
    return server


def _commit(tree: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(tree), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()[:60] + (" + uncommitted changes" if dirty.stdout.strip() else "")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout to serve from")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout to serve beside it, measured as 'base'"
    )
    parser.add_argument("--sessions", type=int, nargs="*", default=[16, 32])
    parser.add_argument("--clicks", type=int, default=5, help="clicks per session (default 5)")
    parser.add_argument("--single", type=int, default=20, help="one session's clicks, each app")
    parser.add_argument("--full-rerun", action="store_true", help="clicks rerun the whole page")
    parser.add_argument(
        "--own-images", action="store_true", help="each session starts from its own seed"
    )
    parser.add_argument("--no-floor", action="store_true", help="skip the floor page")
    parser.add_argument(
        "--delayed-acks", action="store_true", help="Linux's delayed ACKs (40 ms TCP stalls)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per script run")
    parser.add_argument("--port", type=int, help="use the dashboard already on this port")
    parser.add_argument("--pid", type=int, help="its process id, for CPU use (with --port)")
    parser.add_argument("--warmup", type=int, default=4, help="sessions of a first, untimed round")
    parser.add_argument(
        "--proxy", type=int, metavar="N", help="N servers behind nginx, one results folder"
    )
    return parser


def _targets(args, parser, stack: contextlib.ExitStack) -> list[Target]:
    """The demo's server (or servers behind a proxy), and the floor page's unless skipped."""
    if args.proxy:
        port, pids = stack.enter_context(proxied_servers(args.proxy, args.tree))
    elif args.port is None:
        server = _started(stack, args.tree)
        port, pids = server.port, [server.pid]
    else:
        if args.pid is None:
            parser.error("--pid is needed with --port, to read the server's CPU use")
        port, pids = args.port, [args.pid]
    targets = [Target("demo", port, pids, PAGE)]
    if args.baseline and not args.proxy:
        server = _started(stack, args.baseline.resolve())
        targets.append(Target("base", server.port, [server.pid], PAGE))
    if not (args.no_floor or args.proxy):
        floor = args.tree / FLOOR_APP
        script = str(floor if floor.exists() else REPO / FLOOR_APP)
        server = _started(stack, args.tree, script)
        targets.insert(0, Target("floor", server.port, [server.pid], None))
    return targets


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    args.tree = args.tree.resolve()
    if not args.delayed_acks:
        QUICK_ACK.set()
    how = How(args.timeout, args.full_rerun, args.own_images, spread=bool(args.proxy))
    with contextlib.ExitStack() as stack:
        targets = _targets(args, parser, stack)
        for target in targets:  # each server warms up: a proxy sends each address to one
            warm = dataclasses.replace(how, own_images=False)
            asyncio.run(round_of(target, args.warmup * len(target.pids), 1, warm))
        clicked = "the whole page reruns" if how.full_rerun else "as a browser: fragment reruns"
        clicked += ", each session its own images" if how.own_images else ", the same images"
        clicked += ", delayed ACKs" if args.delayed_acks else ", quick ACKs"
        baseline = args.baseline.resolve() if args.baseline else None
        print(
            f"served from {args.tree} ({_commit(args.tree)}), "
            + (f"base from {baseline} ({_commit(baseline)}), " if baseline else "")
            + f"{os.cpu_count()} CPU cores, '{BUTTON}' clicked {clicked}; "
            + ", ".join(f"{t.name}: pid {' '.join(map(str, t.pids))}" for t in targets)
            + (" behind nginx" if args.proxy else ""),
            flush=True,
        )
        if args.single and not args.proxy:
            report_single(asyncio.run(one_session(targets, args.single, how)))
        for turn, sessions in enumerate(args.sessions):
            print(f"{sessions} sessions clicking at once, {args.clicks} clicks each:")
            for target in targets if turn % 2 == 0 else [targets[0], *targets[:0:-1]]:
                report(target, sessions, args.clicks, how)


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
def proxied_servers(count: int, tree: Path = REPO) -> Iterator[tuple[int, list[int]]]:
    """``count`` dashboard servers sharing one results folder behind nginx: (port, pids)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise SystemExit("--proxy needs nginx: apt-get install -y nginx-light")
    with tempfile.TemporaryDirectory() as prefix, contextlib.ExitStack() as stack:
        shared = {"CNNLENS_CACHE_DIR": str(Path(prefix) / "cache")}  # one store for all
        servers = []
        for _ in range(count):
            server = launch(tree, env=shared)
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
