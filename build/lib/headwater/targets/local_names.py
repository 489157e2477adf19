"""Names and encodings of the local target: where a resource lives inside its namespace folder,
which names are safe, and the text formats of kv.json and secrets.env. Pure functions."""

from __future__ import annotations

import functools
import json
import posixpath
import re
from typing import Any

from headwater.errors import TargetError
from headwater.resources import Kind, ResourceKey

_REVISION_RE = re.compile(r"[0-9A-Za-z_-]{1,128}\Z")
_SECRET_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}\Z")
HINT_NAME = "rename it in the repository; names must stay inside their namespace folder"


def _segment(value: str, what: str) -> str:
    if (
        not value
        or value in (".", "..")
        or "/" in value
        or "\x00" in value
        or len(value.encode("utf-8", "surrogatepass")) > 255
    ):
        raise TargetError(f"unsafe {what} name {value!r}", hint=HINT_NAME)
    return value


def _relative(value: str, what: str) -> str:
    if not value or value.startswith("/") or posixpath.normpath(value) != value:
        raise TargetError(f"unsafe {what} path {value!r}", hint=HINT_NAME)
    for part in value.split("/"):
        _segment(part, what)
    return value


def check_namespace(tenant: str, namespace: str) -> None:
    """TargetError unless ``<tenant>/<namespace>`` is a safe pair of folder names."""
    _segment(tenant, "tenant")
    if tenant.startswith("."):
        raise TargetError(f"unsafe tenant name {tenant!r}", hint=HINT_NAME)
    _segment(namespace, "namespace")


def path_in_namespace(key: ResourceKey) -> str:
    """Where a resource lives inside its namespace folder; TargetError for unsafe names."""
    if key.kind == "config":
        if key.name != "config":
            raise TargetError(f"{key}: a namespace config resource must be named 'config'")
        return "config.json"
    return _path_of_name(key.kind, key.name)


@functools.lru_cache(maxsize=65536)
def _path_of_name(kind: str, name: str) -> str:
    # Cached: the same inherited file name recurs in every namespace below its owner.
    if kind == "flow":
        return f"flows/{_segment(name, 'flow')}.yaml"
    if kind == "file":
        return f"files/{_relative(name, 'file')}"
    key = f"{kind}/{name}"
    if kind == "kv":
        if "\x00" in name or not name:
            raise TargetError(f"unsafe kv name {name!r}", hint=HINT_NAME)
        return "kv.json"
    if kind == "secret":
        if not _SECRET_NAME_RE.match(name):
            raise TargetError(
                f"secret name {name!r} cannot be written as SECRET_<NAME>",
                hint="use letters, digits and underscores, not starting with a digit",
            )
        return "secrets.env"
    raise TargetError(f"{key}: unknown resource kind {kind!r}")


def classify(rel: str) -> tuple[Kind, str] | None:
    """A path inside a namespace folder -> (kind, name) of what it holds; kv and secret files
    have an empty name (they hold several resources)."""
    parts = rel.split("/")
    if parts[0] == "flows" and len(parts) == 2 and parts[1].endswith(".yaml") and parts[1] != ".yaml":
        return "flow", parts[1].removesuffix(".yaml")
    if parts[0] == "files" and len(parts) >= 2:
        return "file", "/".join(parts[1:])
    if rel == "config.json":
        return "config", "config"
    if rel == "kv.json":
        return "kv", ""
    if rel == "secrets.env":
        return "secret", ""
    return None


def check_revision(revision: str) -> str:
    if not _REVISION_RE.match(revision):
        raise TargetError(
            f"invalid revision {revision!r}",
            hint="a revision is a commit id: letters, digits, '-' and '_'",
        )
    return revision


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)


def canonical(value: Any) -> bytes:
    """The canonical JSON of a kv value: what ``read`` returns and changed values hash to."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def kv_values(data: bytes) -> dict[str, Any] | None:
    try:
        parsed = parse_json(data)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def secret_lines(data: bytes) -> dict[str, str] | None:
    """secrets.env -> name -> base64 text (never decoded here); None if unreadable."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    found: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.startswith("SECRET_"):
            found[name.removeprefix("SECRET_")] = value.strip()
    return found
