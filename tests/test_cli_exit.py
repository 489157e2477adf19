"""How the `headwater` process ends: at once after its command (``heap.end``), what it built
not freed, its output whole and its exit code the command's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_engine import Headwater, commit_on


@pytest.fixture
def hw(sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Headwater:
    return Headwater(sample, tmp_path / "state", capsys)


def process(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headwater.cli.main", *argv],
        capture_output=True, text=True, timeout=120, check=False, cwd=cwd,
    )


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)


def test_a_real_process_shows_what_the_command_in_process_shows_with_its_exit_code(hw: Headwater) -> None:
    where = ["-C", str(hw.repo), "--state-dir", str(hw.state)]
    for args, code in (
        (["plan", *where, "--instance", "dev"], 0),
        (["plan", *where, "--instance", "dev", "--detailed-exitcode"], 2),
        (["plan", *where, "--instance", "dev", "-o", "json"], 0),
        (["plan", *where, "--instance", "nowhere"], 1),  # an expected failure: one line and a hint
        (["plan", *where, "--instance", "dev", "--base", "main"], 2),  # a usage error
        (["validate", "-C", str(hw.repo)], 0),
    ):
        inside = hw.run(*args)
        real = process(*args)
        assert (real.returncode, real.stdout, real.stderr) == (code, inside.out, inside.err), args
        assert inside.code == code
    proc = process("apply", *where, "--instance", "dev", "--yes")
    assert proc.returncode == 0 and "Applied" in proc.stdout, proc.stderr
    assert process("plan", *where, "--instance", "dev", "--detailed-exitcode").returncode == 0
    assert json.loads(process("status", *where, "-o", "json").stdout)["instances"][0]["applied_revision"]


def test_a_real_process_reports_an_invalid_commit_whole(hw: Headwater) -> None:
    commit_on(hw, {"tenants/acme/company/flows/broken.yaml": "id: broken\n  tasks: [\n"})
    inside = hw.run("validate", "-C", str(hw.repo))
    real = process("validate", "-C", str(hw.repo))
    assert real.returncode == inside.code == 1
    assert real.stdout == inside.out and "broken.yaml" in real.stdout


def test_end_flushes_what_was_written_and_exits_with_the_code() -> None:
    done = python(
        "import sys\n"
        "from headwater import heap\n"
        "heap.one_command()\n"
        "sys.stdout.write('x' * 1_000_000)\n"  # more than a pipe holds: written as it is read
        "sys.stderr.write('last words')\n"
        "heap.end(7)\n"
    )
    assert done.returncode == 7
    assert done.stdout == "x" * 1_000_000 and done.stderr == "last words"


def test_what_a_one_command_process_keeps_is_never_freed_and_nothing_else_is_kept() -> None:
    code = (
        "import sys\n"
        "from headwater import heap\n"
        "class Built:\n"
        "    def __del__(self):\n"
        "        sys.stdout.write('freed ')\n"
        "{setup}"
        "built = Built()\n"
        "heap.keep(built)\n"
        "del built\n"
        "sys.stdout.write('end')\n"
        "heap.end(0)\n"
    )
    kept = python(code.format(setup="heap.one_command()\n"))
    assert (kept.returncode, kept.stdout) == (0, "end")
    for setup in ("", "heap.one_command()\nheap.long_run()\n"):  # not one command's: a test, the daemon
        elsewhere = python(code.format(setup=setup))  # keep does nothing; end is the usual exit
        assert (elsewhere.returncode, elsewhere.stdout) == (0, "freed end"), setup


def test_end_waits_for_another_thread_as_the_usual_exit_does() -> None:
    done = python(
        "import threading\n"
        "from headwater import heap\n"
        "heap.one_command()\n"
        # a thread that runs until the main thread is done: the usual exit lets it finish
        "main = threading.main_thread()\n"
        "threading.Thread(target=lambda: (main.join(), print('thread done', flush=True))).start()\n"
        "heap.end(4)\n"
    )
    assert (done.returncode, done.stdout) == (4, "thread done\n")


def test_a_message_given_to_sys_exit_is_printed_as_usual() -> None:
    done = python(
        "import sys\n"
        "import headwater.cli.main as m\n"
        "def failing(args):\n"
        "    sys.exit('a message')\n"
        "m._run = failing\n"
        "sys.argv = ['headwater']\n"
        "m.main()\n"
    )
    assert (done.returncode, done.stderr) == (1, "a message\n")
