"""Why jsonschema-rs gives the schema verdict: µs per flow over Kestra's 181 valid flows.

    .venv/bin/python benchmarks/validator_choice.py [CORPUS]

CORPUS is the kestra-flows folder (default: $HEADWATER_CONFORMANCE_DIR, else
../shared/conformance/kestra-flows beside the checkout). Every flow of CORPUS/valids is loaded
once with headwater.yamlio.load; each verdict function then judges all of them in a row, a pass
timed with perf_counter; the best and the median of the passes are divided by the flow count.
Compared, for flow.schema.json:

(a) jsonschema's Draft202012Validator.is_valid: the library that explains failures;
(b) jsonschema-rs's Draft202012Validator.is_valid, alone;
(b') headwater.schemas.is_valid: (b) behind its JSON guard (NaN, infinities, depth), as shipped;
(c) the hand-written compiler (b) replaced, read from git history: skipped without it.

Each function must find every flow valid, or the script stops. Building each validator once
is timed too.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import jsonschema  # noqa: E402
import jsonschema_rs  # noqa: E402

from headwater import schemas, yamlio  # noqa: E402

FLOW = "flow.schema.json"
# The last commit holding the hand-written compiler (`_fast_check` in src/headwater/schemas.py).
OLD_COMPILER = "06ffaa5042c13706e065a080389e1f78c74b5e2f"


def corpus_dir(argv: list[str]) -> Path:
    env = os.environ.get("HEADWATER_CONFORMANCE_DIR")
    candidates = [Path(argv[0])] if argv else []
    candidates += [Path(env), Path(env) / "kestra-flows"] if env else []
    candidates.append(ROOT.parent / "shared" / "conformance" / "kestra-flows")
    for candidate in candidates:
        if (candidate / "valids").is_dir():
            return candidate
    sys.exit(f"no kestra-flows corpus (with valids/) among: {', '.join(map(str, candidates))}")


def load_flows(corpus: Path) -> list[Any]:
    paths = sorted(p for p in (corpus / "valids").iterdir() if p.suffix in (".yaml", ".yml"))
    return [yamlio.load(p.read_bytes(), f"valids/{p.name}").value for p in paths]


def old_compiler() -> Callable[[], Callable[[Any], bool]] | None:
    """A builder of the old compiled check, from git history; None without the history."""
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{OLD_COMPILER}:src/headwater/schemas.py"],
            capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("headwater_schemas_old")
    module.__file__ = schemas.__file__  # its SCHEMA_DIR: the packaged schemas of today
    exec(compile(source, f"{OLD_COMPILER[:7]}:src/headwater/schemas.py", "exec"), module.__dict__)

    def build() -> Callable[[Any], bool]:
        check: Callable[[Any], bool] = module._Compiler().ref(module._schema_uri(FLOW), "#")
        return check

    return build


def per_flow(check: Callable[[Any], bool], flows: list[Any], passes: int) -> tuple[float, float]:
    """(best, median) µs per flow over ``passes`` timed passes, after one untimed pass."""
    if not all(check(flow) for flow in flows):
        sys.exit(f"{check!r} finds a valid flow invalid: the comparison would be meaningless")
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        for flow in flows:
            check(flow)
        times.append(time.perf_counter() - start)
    return min(times) * 1e6 / len(flows), statistics.median(times) * 1e6 / len(flows)


def build_ms(build: Callable[[], object], times: int = 5) -> float:
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        build()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main(argv: list[str]) -> None:
    flows = load_flows(corpus_dir(argv))
    schema, registry = schemas.load_schema(FLOW), schemas._registry()

    def build_python() -> jsonschema.Draft202012Validator:
        return jsonschema.Draft202012Validator(schema, registry=registry)

    def build_rs() -> jsonschema_rs.Validator:
        schemas._fast_validator.cache_clear()
        fast = schemas._fast_validator(FLOW)
        assert fast is not None, "jsonschema-rs cannot compile the flow schema"
        return fast

    rows: list[tuple[str, Callable[[], Any], Callable[[Any], bool], int]] = [
        (f"(a) jsonschema {version('jsonschema')}", build_python, build_python().is_valid, 5),
        (f"(b) jsonschema-rs {version('jsonschema-rs')}", build_rs, build_rs().is_valid, 50),
        ("(b') headwater.schemas.is_valid", build_rs, lambda v: schemas.is_valid(v, FLOW), 50),
    ]
    build_old = old_compiler()
    if build_old is not None:
        rows.append((f"(c) hand-written compiler @{OLD_COMPILER[:7]}", build_old, build_old(), 50))

    print(f"{len(flows)} flows of the Kestra conformance corpus (valids), flow.schema.json;")
    print(f"Python {platform.python_version()} on {platform.machine()}, {platform.system()}\n")
    header = ("verdict", "µs/flow", "median", "vs (a)", "vs (b)", "build ms")
    print("{:44} {:>8} {:>8} {:>8} {:>7} {:>9}".format(*header))
    results = [(label, build_ms(build), *per_flow(check, flows, passes))
               for label, build, check, passes in rows]
    python, rust = results[0][2], results[1][2]
    for label, built, best, median in results:
        print(f"{label:44} {best:8.1f} {median:8.1f} {python / best:7.0f}× {best / rust:6.1f}× "
              f"{built:9.2f}")
    if build_old is None:
        print(f"(c) skipped: no git history with {OLD_COMPILER[:7]}")
    print("\nvs (a): times faster than jsonschema; vs (b): times the cost of jsonschema-rs alone;")
    print("build: once per schema (jsonschema compiles nothing up front, it resolves as it goes).")


if __name__ == "__main__":
    main(sys.argv[1:])
