"""Tuning of glibc's memory allocator for long batch runs.

Only the command line calls :func:`keep_freed_memory`: it trades memory held
between batches for fewer page faults, which suits one long run, not a
dashboard that serves many sessions. The dashboard instead calls
:func:`give_back_freed_memory` after a long run, so a server does not keep the
pages its batches used.
"""

from __future__ import annotations

import contextlib
import ctypes

__all__ = ["give_back_freed_memory", "keep_freed_memory"]

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> None:
    """Let this process keep the memory a batch frees, for the next batch to reuse.

    glibc otherwise gives a batch's maps back to the kernel, or not, by a rule that
    depends on what was freed before, and the next batch faults them in again, a
    page at a time. Does nothing where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest: blocks up to 32 MB
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass


def give_back_freed_memory() -> None:
    """Return the memory that freed blocks hold to the system (glibc's ``malloc_trim``).

    After a long run, glibc keeps most of what its batches freed, a few hundred
    MB for a large export, until the process ends. Does nothing where the C
    library is not glibc.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
