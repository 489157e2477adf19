"""The cyclic collector's pause, settle and release around large structures."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from headwater import heap


@pytest.fixture(autouse=True)
def collector() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    gc.unfreeze()
    if was:
        gc.enable()
    else:  # pragma: no cover
        gc.disable()


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_paused_switches_the_collector_off_and_back_on_nested() -> None:
    with heap.paused():
        assert not gc.isenabled()
        with heap.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner block does not switch it back on
    assert gc.isenabled()


def test_paused_switches_it_back_on_after_an_error() -> None:
    with pytest.raises(RuntimeError), heap.paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_paused_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    with heap.paused():
        pass
    assert not gc.isenabled()


def test_paused_as_a_decorator() -> None:
    @heap.paused()
    def build() -> bool:
        return gc.isenabled()

    assert build() is False
    assert gc.isenabled()


def test_a_cycle_made_while_paused_is_collected_afterwards() -> None:
    with heap.paused():
        ref = cycle()
        gc.collect()  # an explicit collection still works
    assert ref() is None


def test_settled_cycles_survive_collections_until_released() -> None:
    with heap.paused():  # no collection may come between
        ref = cycle()
        kept = ref()
        heap.settle()
    assert gc.get_freeze_count() > 0
    del kept  # dropped by its holder: a garbage cycle now
    gc.collect()
    assert ref() is not None  # exempt: the collector does not look at it
    heap.release()
    assert gc.get_freeze_count() == 0
    assert ref() is None  # given back and collected


def test_settle_collects_the_garbage_the_paused_block_left_first() -> None:
    with heap.paused():
        ref = cycle()  # garbage already: frozen, it would stay until a release
        heap.settle()
        assert ref() is None


def test_settle_without_collecting_only_freezes() -> None:
    with heap.paused():
        ref = cycle()
        heap.settle(collect=False)
    gc.collect()
    assert ref() is not None  # frozen as it was: garbage until the next release
    heap.release()
    assert ref() is None


def test_release_without_settle_does_nothing() -> None:
    with heap.paused():  # no collection may come between
        ref = cycle()
        heap.release()
        assert ref() is not None  # no collection was forced
    gc.collect()
    assert ref() is None


def _run_python(code: str) -> str:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def test_the_cli_process_runs_without_the_cyclic_collector_and_ends_at_once() -> None:
    code = (
        "import atexit, gc, sys, threading\n"
        "atexit.register(lambda: print(gc.isenabled(), gc.get_freeze_count() > 0))\n"
        "from headwater.cli.main import main\n"
        "sys.argv = ['headwater', 'init', '--help']\n"
        "{before}"
        "main()\n"
    )
    # heap.end: no interpreter shutdown, so no exit handler runs
    at_once = _run_python(code.format(before="")).splitlines()
    assert at_once[0].startswith("Usage:") and "False True" not in at_once
    # with another thread running, the usual exit, which freezes everything first
    waiting = "threading.Thread(target=threading.main_thread().join).start()\n"  # until the main thread is done
    assert _run_python(code.format(before=waiting)).splitlines()[-1] == "False True"


def test_the_cli_called_in_process_leaves_the_collector_alone() -> None:
    out = _run_python(
        "import gc\n"
        "from headwater.cli.main import main\n"
        "try:\n"
        "    main(['init', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(gc.isenabled(), gc.get_freeze_count())\n"
    )
    assert out.splitlines()[-1] == "True 0"


def test_a_long_running_process_gets_the_collector_back() -> None:
    out = _run_python(
        "import gc\n"
        "from headwater import heap\n"
        "heap.one_command()\n"
        "off = gc.isenabled()\n"
        "heap.long_run()\n"
        "print(off, gc.isenabled())\n"
    )
    assert out.splitlines()[-1] == "False True"
