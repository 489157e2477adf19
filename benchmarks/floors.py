"""The floors the benchmarks compare Headwater with: the least work any implementation must do.

* ``cold REPO REV``: list the commit's tree (``git ls-tree -r``), read every flow and config
  blob through one ``git cat-file --batch`` and parse each with libyaml
  (``yaml.load(..., Loader=yaml.CSafeLoader)``), in one process, on one core.
* ``incremental REPO OLD NEW``: ``git diff-tree`` between the two commits, then read the
  changed blobs through ``git cat-file --batch`` (YAML ones parsed with libyaml).

Run as a fresh process, like the Headwater commands they are compared with, so both pay the
interpreter start-up. Prints one JSON line: what was read.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import BinaryIO

import yaml

CONFIG_NAMES = ("headwater.yaml", "tenant.yaml", "namespace.yaml")


def _git(repo: str, *args: str) -> bytes:
    return subprocess.run(["git", "--git-dir", repo, *args], capture_output=True, check=True).stdout


def is_flow_or_config(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    if name in CONFIG_NAMES:
        return True
    parent = path.rsplit("/", 2)[-2] if path.count("/") >= 1 else ""
    return parent == "flows" and name.endswith((".yaml", ".yml"))


def cat_file(repo: str, oids: list[str]) -> Iterator[bytes]:
    """Contents of ``oids`` in order, through one ``git cat-file --batch``."""
    proc = subprocess.Popen(["git", "--git-dir", repo, "cat-file", "--batch"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    stdin: BinaryIO = proc.stdin
    request = "".join(oid + "\n" for oid in oids).encode()

    def feed() -> None:
        stdin.write(request)
        stdin.close()

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    out = proc.stdout
    for _ in oids:
        size = int(out.readline().split()[2])
        yield out.read(size)
        out.read(1)
    writer.join()
    out.close()
    proc.wait()


def cold(repo: str, rev: str) -> dict[str, int]:
    oids = []
    for record in _git(repo, "ls-tree", "-r", "-z", rev).split(b"\0"):
        if not record:
            continue
        meta, _, path = record.partition(b"\t")
        if is_flow_or_config(path.decode("utf-8", "replace")):
            oids.append(meta.split()[2].decode())
    parsed = size = 0
    for data in cat_file(repo, oids):
        yaml.load(data, Loader=yaml.CSafeLoader)
        parsed += 1
        size += len(data)
    return {"blobs": parsed, "bytes": size}


def incremental(repo: str, old: str, new: str) -> dict[str, int]:
    fields = _git(repo, "diff-tree", "-r", "-z", "--no-renames", old, new).split(b"\0")
    changed: list[tuple[str, str]] = []
    for meta, path in zip(fields[0::2], fields[1::2], strict=False):
        if not meta.startswith(b":"):
            continue
        oid = meta.split()[3].decode()
        if set(oid) != {"0"}:  # a deletion has nothing to read
            changed.append((oid, path.decode("utf-8", "replace")))
    parsed = size = 0
    for (_oid, path), data in zip(changed, cat_file(repo, [oid for oid, _ in changed]), strict=True):
        if path.endswith((".yaml", ".yml")):
            yaml.load(data, Loader=yaml.CSafeLoader)
            parsed += 1
        size += len(data)
    return {"blobs": len(changed), "parsed": parsed, "bytes": size}


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "cold":
        result = cold(argv[1], argv[2])
    elif len(argv) == 4 and argv[0] == "incremental":
        result = incremental(argv[1], argv[2], argv[3])
    else:
        print("usage: floors.py cold REPO REV | incremental REPO OLD NEW", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
