"""The command line: ``cnnlens extract``, ``visualize`` and ``serve`` (or ``python -m cnnlens``).

``cnnlens extract DATASET --model NAME --out FILE.parquet`` extracts the features of
every image of a dataset split into a Parquet file, one row per image, in this process
or on a Ray cluster. An interrupted run (Ctrl-C, a kill) keeps its finished batches:
the same command finishes it.

``cnnlens visualize none --model NAME --layers A,B`` precomputes the channel atlas
of some layers (every channel's feature visualization) into the results store,
so a served dashboard shows every tile at once.

``cnnlens serve [streamlit flags]`` starts the dashboard, such as
``cnnlens serve --server.port 8601``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cnnlens.data import Problem

if TYPE_CHECKING:
    import torch

    from cnnlens.data import Dataset
    from cnnlens.feature_visualization import ChannelImagesSpec
    from cnnlens.models import LoadedModel
    from cnnlens.parquet import ExtractResult
    from cnnlens.pipeline import FeatureSource
    from cnnlens.store import ResultStore

_PROG = "cnnlens"
_SHOWN_PROBLEMS = 5


def _default_workers(device: torch.device) -> int:
    """Workers: on a CPU one thread per core, each decoding and running the network on
    one intra-op thread (none on a single core); with a GPU all cores but one (up to
    32) as processes, which decode while the GPU runs the network."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if device.type != "cuda":
        return cores if cores > 1 else 0
    return max(1, min(32, cores - 1))


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``cnnlens``; ``serve`` leaves its flags to Streamlit (see :func:`main`)."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="See what a convolutional network sees, from the command line.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "serve",
        help="start the dashboard in the browser",
        description=(
            "Start the dashboard. Every other flag goes to Streamlit, as in "
            "'streamlit run': for example --server.port 8601 or --server.headless true."
        ),
    )
    _add_extract_command(commands)
    _add_visualize_command(commands)
    return parser


def _add_model_flags(command: argparse.ArgumentParser, example: str) -> None:
    """``--model`` and ``--weights``, as both commands take them."""
    command.add_argument(
        "--model", required=True, help=f"'demo' or a torchvision architecture such as {example}"
    )
    command.add_argument(
        "--weights",
        metavar="FILE",
        help="a state_dict file (.safetensors, .pt, .pth), or 'random' (default: the model's own)",
    )


def _add_ray_flags(command: argparse.ArgumentParser, engine_help: str) -> None:
    """``--engine`` and ``--address``, as both commands take them."""
    command.add_argument("--engine", choices=("local", "ray"), default="local", help=engine_help)
    command.add_argument(
        "--address",
        metavar="RAY_ADDRESS",
        help="a Ray cluster ('auto', ray://host:10001); default: a local Ray",
    )


def _add_extract_command(commands: argparse._SubParsersAction) -> None:
    """The ``extract`` command and its flags."""
    extract = commands.add_parser(
        "extract",
        help="write the features of every image of a dataset to a Parquet file",
        description=(
            "Write the features of every image of a dataset split to a Parquet file: one "
            "row per image with filename, label and one list<float32> column per layer. "
            "Rerun the same command after an interruption to finish the file."
        ),
    )
    extract.add_argument("dataset", metavar="DATASET", help="the dataset folder")
    _add_model_flags(extract, "vgg16")
    extract.add_argument(
        "--layers",
        metavar="A,B",
        help="comma-separated layer names (default: the model's default layers)",
    )
    extract.add_argument(
        "--pool",
        choices=("mean", "max", "none"),
        default="mean",
        help="one value per channel (mean or max over positions) or whole maps (none)",
    )
    extract.add_argument("--out", required=True, metavar="FILE.parquet", help="the output file")
    extract.add_argument(
        "--split",
        choices=("train", "test"),
        default="train",
        help="the images of train.csv (default) or of the test CSV (no labels)",
    )
    _add_extract_run_flags(extract)


def _add_extract_run_flags(extract: argparse.ArgumentParser) -> None:
    """How ``extract`` runs: batches, device, number type, workers, Ray, restart."""
    extract.add_argument("--batch-size", type=int, default=64, metavar="N", help="default 64")
    extract.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    extract.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="the network's number type: float32 (default, exact on a GPU too) or bfloat16 "
        "(on a GPU about twice as fast, with 8-bit mantissas)",
    )
    extract.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="workers (default: on a CPU one thread per core, each decoding and running the "
        "network on one intra-op thread; with a GPU all cores but one, up to 32, as "
        "processes that decode); 0: all in the main thread",
    )
    _add_ray_flags(extract, "this process (local, default) or Ray Data actors")
    extract.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="Ray actors, each holding the network (default: one per GPU, else one per CPU "
        "but one, left to decoding)",
    )
    extract.add_argument(
        "--restart", action="store_true", help="discard an unfinished run instead of resuming it"
    )
    extract.add_argument("--quiet", action="store_true", help="no progress bar")


class _StopOnTerminate:
    """While entered, SIGTERM asks the run to stop between steps instead of killing it.

    Call it (``should_stop``) to ask whether a stop was requested. Enter it again
    after something else took SIGTERM over (``ray.init`` does), to take it back.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: list[object] = []

    def __call__(self) -> bool:
        return self.requested

    def _on_terminate(self, signum: int, frame: object) -> None:
        self.requested = True

    def __enter__(self) -> _StopOnTerminate:
        self._previous.append(signal.signal(signal.SIGTERM, self._on_terminate))
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self._previous.pop())


def _progress_bar(args: argparse.Namespace, **options: object) -> tuple[Any, Callable]:
    """A progress bar on stderr (none with ``--quiet`` or off a terminal) and its callback."""
    from tqdm import tqdm

    bar = tqdm(
        file=sys.stderr, disable=args.quiet or not sys.stderr.isatty(), leave=False, **options
    )

    def on_progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return bar, on_progress


def _summary(problems: list[Problem]) -> str:
    shown = "; ".join(f"{p.filename} ({p.reason})" for p in problems[:_SHOWN_PROBLEMS])
    more = len(problems) - _SHOWN_PROBLEMS
    count = f"{len(problems)} image{'s' if len(problems) > 1 else ''}"
    return f"{count} left out: {shown}" + (f"; and {more} more" if more > 0 else "")


def _check_extract_args(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {args.workers}.")
    if args.address and args.engine != "ray":
        raise ValueError("--address is for --engine ray.")


def _ray_source(
    args: argparse.Namespace, loaded: LoadedModel, dataset: Dataset, layers: list[str] | None
) -> FeatureSource:
    from cnnlens.ray_engine import ray_source

    return ray_source(
        loaded,
        dataset,
        loaded.default_layers() if layers is None else layers,
        weights=args.weights,
        split=args.split,
        pool=args.pool,
        batch_size=args.batch_size,
        device=args.device,
        address=args.address,
        concurrency=args.concurrency,
    )


def _report(result: ExtractResult, parts: str) -> int:
    """Say on stderr what a finished or stopped run wrote; return the exit status."""
    if result.problems:
        print(_summary(result.problems), file=sys.stderr)
    if not result.complete:
        print(
            f"Stopped after {result.rows} rows: they are kept in {parts}; run the same "
            "command again to finish.",
            file=sys.stderr,
        )
        return 143
    resumed = f" ({result.resumed} from an interrupted run)" if result.resumed else ""
    print(f"Wrote {result.rows} rows{resumed} to {result.out}.", file=sys.stderr)
    return 0


def _extract(args: argparse.Namespace) -> int:
    import torch

    from cnnlens.data import load_dataset
    from cnnlens.malloc import keep_freed_memory
    from cnnlens.models import open_model, pick_device
    from cnnlens.parquet import extract_to_parquet

    _check_extract_args(args)
    keep_freed_memory()  # this process only extracts: it may keep what it frees
    # Each image is checked when it is decoded, and reported then if it cannot be.
    dataset = load_dataset(args.dataset, check_images=False)
    layers = [name.strip() for name in args.layers.split(",")] if args.layers else None
    # With Ray, this process only checks the layers; the actors run the network.
    device = pick_device(args.device if args.engine == "local" else "cpu")
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else None
    loaded = open_model(args.model, weights=args.weights, device=device, dtype=dtype)
    source = _ray_source(args, loaded, dataset, layers) if args.engine == "ray" else None
    bar, on_progress = _progress_bar(args, unit="img")
    parts = f"{args.out}.parts"
    try:
        with _StopOnTerminate() as stop:  # between batches; the finished ones stay
            result = extract_to_parquet(
                loaded,
                dataset,
                args.out,
                layers,
                split=args.split,
                pool=args.pool,
                batch_size=args.batch_size,
                workers=_default_workers(device) if args.workers is None else args.workers,
                network_in_workers=True,  # on a CPU; a GPU runs it here whatever this says
                restart=args.restart,
                source=source,
                should_stop=stop,
                on_progress=on_progress,
            )
    except KeyboardInterrupt:
        print(
            f"Interrupted: the finished batches are kept in {parts}; run the same command "
            "again to finish.",
            file=sys.stderr,
        )
        return 130
    finally:
        bar.close()
    return _report(result, parts)


def _add_visualize_command(commands: argparse._SubParsersAction) -> None:
    """The ``visualize`` command and its flags."""
    command = commands.add_parser(
        "visualize",
        help="precompute the channel atlas (feature visualizations) into the results store",
        description=(
            "Precompute the feature visualization of every channel of some layers (the "
            "channel atlas) into the results store, so a dashboard using that store shows "
            "every tile at once. Channels already stored are skipped, so an interrupted "
            "run finishes when the same command runs again."
        ),
    )
    command.add_argument(
        "dataset",
        metavar="DATASET",
        help="'none', or a dataset folder (accepted as extract takes it; feature "
        "visualization needs no data: the images are synthesised)",
    )
    _add_model_flags(command, "resnet18")
    command.add_argument(
        "--layers", required=True, metavar="A,B", help="comma-separated layer names"
    )
    command.add_argument(
        "--channels",
        metavar="0-7,12",
        help="the channels of each layer, as numbers and ranges (default: every channel)",
    )
    command.add_argument(
        "--out",
        metavar="DIR",
        help="the results store folder (default: the dashboard's, $CNNLENS_CACHE_DIR/insights, "
        "~/.cache/cnnlens/insights without it); a dashboard reads DIR when "
        "CNNLENS_CACHE_DIR is its parent and DIR is named insights",
    )
    _add_visualize_recipe_flags(command)


def _add_visualize_recipe_flags(command: argparse.ArgumentParser) -> None:
    """How ``visualize`` paints (steps, size, seed, negative) and runs (batch, device, Ray)."""
    command.add_argument("--steps", type=int, default=256, metavar="N", help="default 256")
    command.add_argument(
        "--size",
        type=int,
        metavar="PX",
        help="image side (default: the model's input side, at most 128, as the dashboard uses)",
    )
    command.add_argument("--seed", type=int, default=0, metavar="N", help="default 0")
    command.add_argument(
        "--negative",
        action="store_true",
        help="also the negative images (what each channel is most against), which the "
        "channel card shows; twice the time (default: the atlas's positive images only)",
    )
    command.add_argument(
        "--batch-size", type=int, default=64, metavar="N", help="channels optimised together"
    )
    command.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    _add_ray_flags(
        command, "this process (local, default) or Ray tasks, one group of channels each"
    )
    command.add_argument("--quiet", action="store_true", help="no progress bar")


def _channel_ranges(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]``."""
    channels: list[int] = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise ValueError(
                f"--channels takes numbers and ranges such as 0-7,12; got {text!r}."
            ) from None
        channels.extend(range(first, last + 1))
    return list(dict.fromkeys(channels))


def _check_visualize_args(args: argparse.Namespace) -> None:
    if args.dataset != "none" and not os.path.isdir(args.dataset):
        raise ValueError(
            f"{args.dataset} is neither a folder nor 'none'; feature visualization needs "
            "no data, so 'none' will do."
        )
    for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}.")
    if args.address and args.engine != "ray":
        raise ValueError("--address is for --engine ray.")


def _visualize_jobs(args: argparse.Namespace, loaded: LoadedModel) -> list[ChannelImagesSpec]:
    """The channel atlases to compute, every layer and channel checked first."""
    from cnnlens.borrow import layer_channels
    from cnnlens.feature_visualization import ChannelImagesSpec

    chosen = _channel_ranges(args.channels) if args.channels else None
    layers = loaded.layers.check([name.strip() for name in args.layers.split(",")])
    return [
        ChannelImagesSpec(
            loaded,
            layer,
            tuple(layer_channels(loaded, layer, chosen, size=args.size)),
            args.size,
            args.steps,
            args.seed,
            (False, True) if args.negative else (False,),
            batch_size=args.batch_size,
        )
        for layer in layers
    ]


def _paint(
    args: argparse.Namespace,
    jobs: list[ChannelImagesSpec],
    store: ResultStore,
    stop: _StopOnTerminate,
    bar: Any,
    on_progress: Callable[[int, int], None],
) -> int:
    """Compute each atlas's missing images, here or on Ray; return how many were computed."""
    computed = 0
    with contextlib.ExitStack() as stack:
        if args.engine == "ray":
            from cnnlens.ray_engine import ray_session, ray_visualization

            stack.enter_context(ray_session(args.address))  # one Ray for every layer
            stack.enter_context(stop)  # Ray's start took SIGTERM over: take it back
        for spec in jobs:
            missing = spec.missing(store)
            bar.reset()
            bar.set_description(spec.layer)
            if args.engine == "ray":
                options = {"weights": args.weights, "device": args.device}
                ray_visualization(
                    spec, store=store, should_stop=stop, on_progress=on_progress, **options
                )
            elif missing:
                store.run(spec, on_progress=on_progress, should_stop=stop)
            computed += len(missing)
    return computed


def _visualize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cnnlens.malloc import keep_freed_memory
    from cnnlens.models import open_model, pick_device
    from cnnlens.results import Cancelled
    from cnnlens.store import ResultStore

    _check_visualize_args(args)
    keep_freed_memory()  # this process only optimises: it may keep what it frees
    # With Ray, this process only checks the layers; the tasks run the network.
    device = pick_device(args.device if args.engine == "local" else "cpu")
    loaded = open_model(args.model, weights=args.weights, device=device)
    jobs = _visualize_jobs(args, loaded)
    store = ResultStore(Path(args.out)) if args.out else ResultStore()
    bar, on_progress = _progress_bar(args)
    try:
        with _StopOnTerminate() as stop:  # between steps; the finished groups stay stored
            computed = _paint(args, jobs, store, stop, bar, on_progress)
    except (KeyboardInterrupt, Cancelled):
        print(
            f"Stopped: the finished groups are kept in {store.folder}; run the same command "
            "again to finish.",
            file=sys.stderr,
        )
        return 143 if stop.requested else 130
    finally:
        bar.close()
    images = sum(len(spec.tiles) for spec in jobs)
    print(f"Stored {images} images ({computed} computed) in {store.folder}.", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cnnlens`` with these arguments (default: this command's own).

    Returns:
        The exit status: 0 done, 2 a usage error (one line on stderr, no
        traceback), 130 interrupted, 143 stopped by SIGTERM; the last two keep
        the finished batches (``visualize``: groups of channels) for a rerun.
        ``serve`` returns when the server stops.
    """
    parser = build_parser()
    # Streamlit's flags are many and change between releases: serve passes on
    # whatever it does not know instead of listing them.
    args, streamlit_args = parser.parse_known_args(argv)
    if args.command == "serve":
        from cnnlens.ui.serve import main as serve

        serve(streamlit_args)
        return 0
    if streamlit_args:
        parser.error(f"unrecognized arguments: {' '.join(streamlit_args)}")
    try:
        return _visualize(args) if args.command == "visualize" else _extract(args)
    except ValueError as error:
        message = " ".join(str(error).split())
        print(f"{_PROG} {args.command}: error: {message}", file=sys.stderr)
        return 2
