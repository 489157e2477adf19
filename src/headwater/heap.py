"""The cyclic garbage collector around the large, long-lived structures Headwater builds.

A loaded commit of a large repository is millions of small objects (1.8 million for 50,000
flows) that live until a later commit replaces them, and that form hardly any reference
cycles: reference counting frees them. The cyclic collector nevertheless traverses them: many
times while they are built (more than half the time of loading such a commit), and then at
every full collection for as long as they live (1.3 s each on that commit).

So the collector is paused while such structures are built (``paused``), and a long-running
process moves what it keeps out of the collector's reach once it is built (``settle``), and
gives it back just before replacing it (``release``), so that any cycle among it is still
collected.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import gc
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn

# What a one-command process holds until it ends (``keep``); None in any other process.
_kept: list[object] | None = None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the process runs on
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    call: Callable[[int], int] = trim
    return call


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection while the block runs; the objects it leaves are collected as
    usual afterwards. The switch is process-wide: other threads do without it meanwhile.
    Nested blocks are fine: the outermost one re-enables the collector."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def settle(*, collect: bool = True) -> None:
    """Exempt every object alive now from later collections (``gc.freeze``): for a
    long-running process that just built the state it keeps. Called inside ``paused``, it
    also spares them the collection that would otherwise follow it (a young collection of
    everything the block allocated: 0.9 s for that commit). The garbage cycles the block
    left are collected first (frozen, they would stay: 66,000 objects after a 10k-flow
    apply); cycles among what is kept are collected at the next ``release``. The memory the
    build freed goes back to the system, where the C library allows (glibc's
    ``malloc_trim``: 242 → 178 MB after a 10k-flow apply, collection included).

    Without ``collect``, for a block that kept much of what it built (a tenant loaded: the
    collection would go over all of it), it only freezes."""
    if collect:
        gc.collect()
    gc.freeze()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def release() -> None:
    """Give back to the collector what ``settle`` exempted, and collect: called when state
    built earlier is being dropped, to be rebuilt. Nothing to do when nothing was settled."""
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()


def one_command() -> None:
    """For a process that runs one command and exits (the CLI): no cyclic collection at all.
    What such a command builds lives until the end and hardly forms cycles, yet collecting it
    costs a tenth of a cold ``validate`` of 10,000 flows (0.3-0.5 s of 4.5 s), with the
    interpreter's last collection at exit (skipped: everything is frozen by then). What the
    command ``keep``s is not freed at all, when it ends with ``end``."""
    global _kept
    gc.disable()
    atexit.register(gc.freeze)
    _kept = []


def long_run() -> None:
    """Undo ``one_command`` for a process that stays (the daemon): collections as usual, and
    ``paused`` / ``settle`` / ``release`` around what it builds and keeps."""
    global _kept
    gc.enable()
    _kept = None


def keep(*objects: object) -> None:
    """Hold ``objects`` (what a command built: a plan, a snapshot) until a one-command
    process ends (``end``), which then exits without freeing them. Freeing them object by
    object, as the command returns and then as the interpreter shuts down, does nothing
    useful and costs a cold `plan` of 10,000 flows 0.2 s of 3.3. Elsewhere (the daemon,
    tests) it does nothing."""
    if _kept is not None:
        _kept.extend(objects)


def end(code: int) -> NoReturn:
    """Exit a one-command process with ``code``, what it kept and everything else not freed:
    the standard streams are flushed, then the process exits at once (``os._exit``: no
    interpreter shutdown). The commands close their files, databases, temporary files and
    worker processes themselves. Exits the usual way (``SystemExit``) when the process is
    not one command's, when another thread still runs (the usual exit waits for it), or when
    a flush fails (a closed pipe: the usual exit reports it as usual)."""
    if _kept is None or threading.active_count() > 1:
        raise SystemExit(code)
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):  # ValueError: a stream closed
        raise SystemExit(code) from None
    os._exit(code)
