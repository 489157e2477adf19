"""What wakes the daemon: a pending-trigger board, a waker, timers and a filesystem watch.

Triggers never start a sync themselves. Each one only raises a per-instance flag on the
board (and counts it); the loop takes the whole board at once, so a burst of 500 webhooks
while a sync runs becomes a single follow-up sync.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

ALL = "*"  # every instance (the instance list may not be known yet)


class TriggerBoard:
    """Pending triggers per instance: instance → Counter of sources. Thread-safe."""

    def __init__(self, on_change: Callable[[dict[str, int]], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, Counter[str]] = {}
        self._on_change = on_change

    def add(self, instances: Iterable[str] | None, source: str) -> None:
        """Raise the flag of ``instances`` (None: every instance) for ``source``."""
        names = [ALL] if instances is None else list(instances)
        with self._lock:
            for name in names:
                self._pending.setdefault(name, Counter())[source] += 1
            counts = self._counts()
        if self._on_change is not None:
            self._on_change(counts)

    def take(self) -> dict[str, Counter[str]]:
        """Every pending trigger, clearing the board."""
        with self._lock:
            taken, self._pending = self._pending, {}
        if self._on_change is not None:
            self._on_change({name: 0 for name in taken})
        return taken

    def counts(self) -> dict[str, int]:
        with self._lock:
            return self._counts()

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def _counts(self) -> dict[str, int]:
        return {name: sum(c.values()) for name, c in self._pending.items()}


class Waker:
    """A self-pipe: any thread (or a signal, via set_wakeup_fd) wakes the loop's wait."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.write_fd, b"w")

    def wait(self, timeout: float | None) -> None:
        """Sleep until woken or ``timeout`` seconds (None: until woken); drain the pipe."""
        if timeout is not None and timeout <= 0:
            ready = True
        else:
            ready = bool(select.select([self.read_fd], [], [], timeout)[0])
        if ready:
            with contextlib.suppress(BlockingIOError, OSError):
                while os.read(self.read_fd, 4096):
                    pass

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def backoff_delay(
    failures: int, initial: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Seconds before retry number ``failures`` (1, 2, …): initial·2ⁿ⁻¹ capped, 80–100 %."""
    if failures <= 0:
        return 0.0
    delay = min(maximum, initial * 2.0 ** min(failures - 1, 60))
    return delay * (rng or random).uniform(0.8, 1.0)


def poll_delay(interval: float, jitter: float, rng: random.Random | None = None) -> float | None:
    """Seconds to the next poll, ``interval`` ± ``jitter`` (a fraction); None disables polling."""
    if interval <= 0:
        return None
    spread = interval * jitter
    return max(0.01, interval + (rng or random).uniform(-spread, spread))


class _RefHandler(FileSystemEventHandler):
    def __init__(self, git_dir: Path, on_change: Callable[[str | None], None]) -> None:
        self.git_dir = str(git_dir)
        self.on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write") or event.is_directory:
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            path = os.fsdecode(raw)
            if not path:
                continue
            rel = os.path.relpath(path, self.git_dir).replace(os.sep, "/")
            if rel.endswith(".lock"):
                continue
            if rel.startswith("refs/heads/"):
                self.on_change(rel[len("refs/heads/") :])
                return
            if rel == "packed-refs":
                self.on_change(None)
                return


class RepoWatcher:
    """Calls ``on_change(branch)`` when a branch of a local repository moves (watchdog);
    ``branch`` is None when git rewrote packed-refs (any branch may have moved)."""

    def __init__(self, git_dir: Path, on_change: Callable[[str | None], None]) -> None:
        self.git_dir = git_dir
        self._observer = Observer()
        handler = _RefHandler(git_dir, on_change)
        self._observer.schedule(handler, str(git_dir), recursive=False)
        refs = git_dir / "refs"
        if refs.is_dir():
            self._observer.schedule(handler, str(refs), recursive=True)
        self._observer.daemon = True

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
