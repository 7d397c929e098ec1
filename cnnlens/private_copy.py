"""One private copy of a model that every extraction of that model shares.

Every lens, extractor, dataset pass and Grad-CAM of a loaded model runs on the
same :class:`PrivateCopy`, whatever layers it reads, so looking at ten sets of
layers costs one copy, not ten. The copy carries one forward hook per
submodule, registered once; what a hook does depends on the call running in
its thread, so calls with different targets can run in many threads at once
and nothing is kept on a module between calls.

Values stay exact although the copy keeps its in-place ops (a
``ReLU(inplace=True)``, a residual ``out += identity``). An in-place module
whose input is an output a call keeps (VGG's ReLU after a target conv) runs out
of place for that call, which costs less than copying the output first. Any
other write (a residual ``+=``) shows in the kept output's version counter: the
call runs again with that target copied when captured, and so do later calls.

:meth:`PrivateCopy.run_to` is the one way to run a forward to a module (stopped
there, or going on from a replacement of its output); :class:`ModuleNotRun` is
the one error for a module the forward did not call. :func:`check_batch` is the one
check of an input batch, and :func:`forward_error` the one sentence for a forward
that failed on its input.
"""

from __future__ import annotations

import copy
import re
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = [
    "MODEL_FAILURES",
    "Call",
    "ModuleNotRun",
    "PrivateCopy",
    "Reached",
    "Stop",
    "check_batch",
    "does_not_fit",
    "forward_error",
    "tensor_output",
]

MODEL_FAILURES = (AssertionError, LookupError, ArithmeticError, RuntimeError)
"""What a model's own forward raises on an input it cannot take (a ViT's size assert, a
KeyError, an IndexError, a ZeroDivisionError, torch's RuntimeErrors): turned into a
ValueError by :func:`forward_error`. A TypeError or ValueError passes as it is: a hook
of this module may raise one."""

# Words of torch's messages for an input of the wrong size or channels ("Given groups=1,
# weight of size [32, 1, 3, 3], expected input[1, 3, 28, 28] to have 1 channels", "mat1
# and mat2 shapes cannot be multiplied", "Output size is too small", "running_mean should
# contain 4 elements not 5", "The size of tensor a (3) must match the size of tensor b").
_MISFIT = re.compile(r"size|shape|channels|dimension|must match|should contain \d+ elements", re.I)
# ... and of its messages about something else (device, dtype, the meta device, memory).
_NOT_MISFIT = re.compile(r"device|dtype|scalar type|meta|out of memory", re.I)


class Stop(Exception):
    """Raised by a call once it has what it needs, to skip the rest of the forward."""


class Call(Protocol):
    """What one forward of the copy does at each submodule's output, in its own thread.

    ``on_output`` gets the submodule's qualified name, its positional inputs and its
    output; it returns ``None`` to leave the output as it is, or a tensor that
    replaces it, and raises :class:`Stop` to end the forward early. A call may also
    have ``keeps(tensor) -> bool``: an in-place module runs out of place on a
    tensor it keeps.
    """

    def on_output(self, path: str, inputs: tuple[Any, ...], output: Any) -> Any: ...


class ModuleNotRun(ValueError):
    """Target modules that the forward did not call (in eval mode), so they have no output.

    Attributes:
        paths: the qualified names of those modules.
    """

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = tuple(paths)
        super().__init__(
            f"Module {', '.join(map(repr, self.paths))} did not run in the forward pass "
            "(in eval mode), so it has no output; choose modules the forward calls."
        )


def tensor_output(path: str, output: Any) -> torch.Tensor:
    """A module's output, checked to be a tensor (a feature map has to be one).

    Raises:
        ValueError: naming the module, when its output is not a tensor.
    """
    if not isinstance(output, torch.Tensor):
        raise ValueError(
            f"Module {path!r} returns a {type(output).__name__}, not a tensor, so it has no "
            "feature map; choose one of its submodules or the module that uses its output."
        )
    return output


def check_batch(x: Any, *, one_image: bool = False, name: str = "The extractor") -> torch.Tensor:
    """The one check of an input batch: a tensor, N×C×H×W, one image where asked, finite.

    Args:
        x: the batch.
        one_image: whether the caller explains one image (N must be 1).
        name: who takes the batch, for the messages ("Grad-CAM", "padded_input").

    Returns:
        ``x`` itself.

    Raises:
        TypeError: for a numpy array (the message says ``torch.from_numpy``) or any
            other type that is not a tensor.
        ValueError: for a tensor that is not 4-D, a batch of several images where one
            is explained, or NaN or infinite values.
    """
    if not isinstance(x, torch.Tensor):
        if type(x).__module__ == "numpy":
            raise TypeError(
                f"{name} takes a torch.Tensor batch (N×C×H×W), not a numpy array: convert "
                "it with torch.from_numpy(array), or make one from an image with "
                "loaded.batch(pixels)."
            )
        raise TypeError(f"{name} takes a torch.Tensor batch (N×C×H×W), got {type(x).__name__}.")
    shape = tuple(x.shape)
    if x.dim() != 4:
        hint = ": add the batch dimension with x[None]" if x.dim() == 3 else ""
        raise ValueError(
            f"{name} takes an N×C×H×W batch, got a {x.dim()}-D tensor of shape {shape}{hint}."
        )
    if one_image and shape[0] != 1:
        raise ValueError(
            f"{name} explains one image: pass a 1×C×H×W batch, not {shape[0]} images "
            f"(shape {shape}); take image i with x[i : i + 1]."
        )
    if (x.is_floating_point() or x.is_complex()) and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"The input holds NaN (or infinite) values: {bad:,} of {x.numel():,}, so every "
            "map and answer computed from it would be NaN. Replace them "
            "(torch.nan_to_num(x)) or check how the input was made."
        )
    return x


def does_not_fit(error: BaseException) -> bool:
    """Whether an error a forward raised is torch's for an input of the wrong size or channels."""
    return (
        isinstance(error, RuntimeError)
        and not isinstance(error, NotImplementedError | torch.OutOfMemoryError)
        and bool(_MISFIT.search(str(error)))
        and not _NOT_MISFIT.search(str(error))
    )


def forward_error(error: BaseException, shape: tuple[int, ...]) -> ValueError:
    """The clear error for a forward that failed on an input of ``shape``.

    An input of the wrong size or channels (:func:`does_not_fit`) "does not fit this
    network"; anything else the model's own code raised is named, with its likely cause.
    """
    if does_not_fit(error):
        text = str(error).rstrip()
        return ValueError(
            f"The input of shape {shape} does not fit this network: {text.rstrip('.')}. Give "
            "it the channels and size the model was built for (loaded.batch(pixels) makes them)."
        )
    said = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if isinstance(error, AssertionError) or re.search(r"size|height|width|shape", said, re.I):
        cause = (
            "A check in its forward refused the input, most often for its size (a vision "
            "transformer asserts its image size): give it the size and channels the model "
            "was built for."
        )
    else:
        cause = (
            "The error is in the model's forward, not in cnnlens: check that the input is "
            "what the model was built for (its size, channels and value range)."
        )
    return ValueError(f"The model's own code failed on an input of shape {shape} ({said}). {cause}")


@dataclass(frozen=True, eq=False)
class Reached:
    """What :meth:`PrivateCopy.run_to` found.

    Attributes:
        output: the module's output at its first call, as the module returned it.
        inputs: the module's positional inputs at that call.
        result: the model's output, or ``None`` when the forward stopped at the module.
    """

    output: torch.Tensor
    inputs: tuple[Any, ...]
    result: Any


class _At:
    """:meth:`PrivateCopy.run_to`'s call: the target's first call, then a stop or a replacement."""

    def __init__(self, path: str, replace: Callable[[torch.Tensor], Any] | None) -> None:
        self.path = path
        self.replace = replace
        self.inputs: tuple[Any, ...] = ()
        self.output: torch.Tensor | None = None

    def on_output(self, path: str, inputs: tuple[Any, ...], output: Any) -> Any:
        if path != self.path or self.output is not None:
            return None  # another module, or a later call of a shared one
        self.inputs, self.output = inputs, tensor_output(path, output)
        if self.replace is None:
            raise Stop
        return self.replace(self.output)


class _Capture:
    """What one extraction keeps; it lives only for that call, in its thread."""

    def __init__(self, paths: tuple[str, ...], copied: frozenset[str]) -> None:
        self.wanted = frozenset(paths)
        self.copied = copied
        self.features: dict[str, torch.Tensor] = {}
        # The version counter of each output kept by reference, to notice later writes,
        # and where its data lives, for an in-place module to leave it alone.
        self.versions: dict[str, int] = {}
        self.storages: set[int] = set()

    def on_output(self, path: str, inputs: tuple[Any, ...], output: Any) -> None:
        if path not in self.wanted or path in self.features:
            return  # not a target, or a later call of a shared module
        output = tensor_output(path, output)
        if path in self.copied:
            output = output.clone()
        else:
            self.versions[path] = output._version
            self.storages.add(output.untyped_storage().data_ptr())
        self.features[path] = output
        if len(self.features) == len(self.wanted):
            raise Stop

    def keeps(self, tensor: Any) -> bool:
        """Whether a tensor shares its data with an output kept by reference."""
        return (
            isinstance(tensor, torch.Tensor)
            and tensor.untyped_storage().data_ptr() in self.storages
        )

    def overwritten(self) -> set[str]:
        """The targets a later in-place op wrote into after they were captured."""
        return {
            path
            for path, version in self.versions.items()
            if self.features[path]._version != version
        }


def _on_output(local: threading.local, path: str, module: nn.Module, args: Any, output: Any) -> Any:
    call = getattr(local, "call", None)
    return None if call is None else call.on_output(path, args, output)


def _in_place_unless_kept(
    local: threading.local,
    forward: Callable[..., Any],
    module: weakref.ref[nn.Module],
    twin: nn.Module,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """An in-place module's forward, run by its out-of-place twin on a kept output.

    A VGG conv followed by ``ReLU(inplace=True)`` then keeps its values without a
    copy: the ReLU writes a new tensor, which is cheaper than copying the conv's
    output first. The module's own flag never changes, so other threads' calls
    are not affected.
    """
    call = getattr(local, "call", None)
    keeps = getattr(call, "keeps", None)
    if keeps is not None and args and keeps(args[0]):
        return forward(twin, *args, **kwargs)
    return forward(module(), *args, **kwargs)


def _out_of_place_twins(model: nn.Module, local: threading.local) -> None:
    """Give every in-place module of a copy a forward that a call can run out of place."""
    for module in model.modules():
        if (
            getattr(module, "inplace", None) is True
            and next(module.children(), None) is None
            and "forward" not in vars(module)  # a forward of the owner's own stays as it is
        ):
            twin = copy.copy(module)
            twin.inplace = False
            # A weak reference: a module that held itself would need the collector to go.
            module.forward = partial(  # type: ignore[method-assign]
                _in_place_unless_kept, local, type(module).forward, weakref.ref(module), twin
            )


class PrivateCopy:
    """A model's private eval copy, with per-call capture of any submodule's output.

    Args:
        model: any ``nn.Module``.
        channels_last: convert the copy to channels-last memory format (0.5-0.8×
            the time of the default format on CPUs) and feed it inputs in that format.
        share_tensors: copy the modules but keep the model's own parameters and
            buffers, which costs almost no memory. Only for a model that nobody
            trains or changes, already in eval mode and in the wanted memory
            format (``LoadedModel.model``): the model itself is never converted.

    Attributes:
        model: the copy, in eval mode, with a hook on every submodule.
        device: where the copy lives; inputs are moved there.
        dtype: the copy's floating-point type; inputs are cast to it.
        channels_last: whether inputs are given in channels-last format.
    """

    def __init__(
        self, model: nn.Module, *, channels_last: bool = True, share_tensors: bool = False
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Expected a torch nn.Module, got {type(model).__name__}.")
        if share_tensors:
            memo: dict[int, Any] = {id(t): t for t in chain(model.parameters(), model.buffers())}
            own = copy.deepcopy(model, memo).eval()
        else:
            own = copy.deepcopy(model).eval().requires_grad_(False)
            if channels_last:
                own.to(memory_format=torch.channels_last)
        self.model = own
        self.channels_last = channels_last
        first = next(chain(own.parameters(), own.buffers()), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.dtype = (
            first.dtype if first is not None and first.is_floating_point() else torch.float32
        )
        self._local = threading.local()
        self._lock = threading.Lock()
        self._copied: frozenset[str] = frozenset()
        _out_of_place_twins(own, self._local)
        # The hooks reach the thread-local state, not this object: dropping the last
        # reference to it frees the copy at once, with no cycle for the collector.
        self._handles: list[RemovableHandle] = [
            module.register_forward_hook(partial(_on_output, self._local, path))
            for path, module in own.named_modules()
            if path
        ]

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` removed the hooks."""
        return not self._handles

    def close(self) -> None:
        """Remove every hook from the copy; calling it again does nothing."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Move a batch to the copy's device, dtype and memory format.

        Raises:
            TypeError: if ``x`` is not a tensor.
            ValueError: if it is not N×C×H×W or holds NaN or infinite values.
        """
        x = check_batch(x).detach().to(self.device, self.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def run(self, x: torch.Tensor, call: Call) -> Any:
        """One forward of the copy on a prepared batch, with ``call`` at every submodule.

        The grad mode is the caller's. Returns the model's output, or ``None`` when
        the call stopped the forward early.

        Raises:
            ValueError: if the input does not fit the network, or the model's own code
                fails on it (:func:`forward_error`).
            RuntimeError: if the copy was closed.
            torch.OutOfMemoryError: as the forward raises it.
        """
        if self.closed:
            raise RuntimeError("This extractor is closed; build a new one.")
        self._local.call = call
        try:
            return self.model(x)
        except Stop:
            return None
        except torch.OutOfMemoryError:
            raise
        except MODEL_FAILURES as error:
            raise forward_error(error, tuple(x.shape)) from error
        finally:
            self._local.call = None

    def capture(self, x: torch.Tensor, paths: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Run the copy until every target module has its output, and return them.

        Args:
            x: an N×C×H×W batch; it is moved to the copy's device, dtype and format.
            paths: qualified module names, at least one.

        Returns:
            ``{path: tensor}`` in the order of ``paths``, detached, exact.

        Raises:
            TypeError: if ``x`` is not a tensor.
            ValueError: if the input does not fit, a target returns no tensor or does
                not run in eval mode, or the model writes into its input.
            RuntimeError: if the copy was closed.
        """
        # Version counters catch in-place writes into kept outputs; inference_mode drops
        # them, so it is switched off even when the caller runs inside it.
        with torch.inference_mode(False), torch.no_grad():
            x = self.prepare(x)
            if x.is_inference():  # it has no version counter, and an Identity may return it
                x = x.clone()
            start = x._version
            while True:
                call = _Capture(paths, self._copied)
                self.run(x, call)
                missing = [path for path in paths if path not in call.features]
                if missing:
                    raise ModuleNotRun(missing)
                overwritten = call.overwritten()
                if not overwritten:
                    return {path: call.features[path] for path in paths}
                with self._lock:
                    self._copied |= overwritten
                if x._version != start:
                    raise ValueError(
                        "The model writes into its input in place, so the overwritten maps of "
                        f"{', '.join(map(repr, sorted(overwritten)))} cannot be computed again."
                    )

    def run_to(
        self,
        x: torch.Tensor,
        path: str,
        *,
        replace: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
    ) -> Reached:
        """Run a batch to one module and stop there, or go on from a replacement of its output.

        The grad mode is the caller's; so are ``x``'s device, dtype and format (see
        :meth:`prepare`; a differentiable input may be converted by hand). A module
        the forward calls more than once counts at its first call.

        Args:
            x: a batch ready for the copy.
            path: the qualified name of the module.
            replace: without it, the forward stops at the module. With it, the forward
                goes on to the model's output from what ``replace`` returns for the
                module's output (``None``: the output itself).

        Returns:
            The module's output and inputs, and the model's output (``None`` when stopped).

        Raises:
            ModuleNotRun: if the forward does not call the module.
            ValueError: if the input does not fit, or the module returns no tensor.
            RuntimeError: if the copy was closed.
        """
        call = _At(path, replace)
        result = self.run(x, call)
        if call.output is None:
            raise ModuleNotRun([path])
        return Reached(call.output, call.inputs, result)

    def gradient(
        self, x: torch.Tensor, path: str, score: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A module's output and the gradient of a score of the model's output with respect to it.

        Only the part of the forward after the module records a graph, and no
        parameter gets a ``.grad``.

        Args:
            x: a batch, moved to the copy's device, dtype and format.
            path: the qualified name of the module.
            score: takes the model's output and returns the scalar to differentiate;
                it may raise ``ValueError`` for an output it cannot score.

        Returns:
            ``(output, gradient)``, both detached and shaped like the module's output.

        Raises:
            ValueError: if the input does not fit, or the module does not run or
                returns no tensor.
        """
        leaves: list[torch.Tensor] = []

        def tap(output: torch.Tensor) -> torch.Tensor:
            leaves.append(output.detach().clone().requires_grad_(True))
            # The forward goes on from a copy: later in-place ops write into it, never
            # into the leaf whose gradient is taken.
            return leaves[0].clone()

        with torch.inference_mode(False), torch.enable_grad():
            reached = self.run_to(self.prepare(x).clone(), path, replace=tap)
            (gradient,) = torch.autograd.grad(score(reached.result), leaves[0])
        return leaves[0].detach(), gradient.detach()

    def __repr__(self) -> str:
        return f"PrivateCopy({type(self.model).__name__}, device={self.device})"
