"""Run one command and report its wall time and peak memory, as one JSON line.

    python benchmarks/measure.py [--timeout S] -- COMMAND [ARG...]

This wrapper is started fresh for every measurement, so ``getrusage(RUSAGE_CHILDREN)`` sees
exactly one command (and the processes it waited for, git included): its ``ru_maxrss`` is the
peak resident set of the largest of them. The time is taken around the command only, not the
wrapper's own start-up. Output of the command is kept as short tails, for error reports.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

TAIL = 4000


def main(argv: list[str]) -> int:
    timeout: float | None = None
    if argv[:1] == ["--timeout"]:
        timeout, argv = float(argv[1]), argv[2:]
    if argv[:1] != ["--"] or len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    command = argv[1:]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = -1, exc.stdout or b"", (exc.stderr or b"") + b"\n[timed out]"
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    print(json.dumps({
        "seconds": seconds,
        "max_rss_bytes": usage.ru_maxrss * scale,
        "returncode": code,
        "stdout_bytes": len(out),
        "stdout": out[-TAIL:].decode("utf-8", "replace"),
        "stderr": err[-TAIL:].decode("utf-8", "replace"),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
