"""Secret providers: where secret values come from, and the key that hashes them.

A namespace config names secrets; their values come from a provider and reach only the target.
Plans, logs, state rows and errors carry ``secret_hash(key, value)`` (a keyed HMAC, see
``headwater.resources``) so a change is detected without storing or showing the value. The key
is random, created once per state directory by ``load_or_create_hash_key``.

Nothing in this module puts a secret value into a message or an exception.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets as _random
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

from headwater.errors import ConfigError, StateError
from headwater.resources import ResourceKey

HASH_KEY_FILE = "secret-hash.key"
HASH_KEY_BYTES = 32
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}\Z")
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")


class SecretProvider(Protocol):
    def get(self, tenant: str, namespace: str, name: str) -> str | None:
        """The value of a secret as seen from a namespace, or None when it is not set."""
        ...


def _safe(value: str, what: str) -> str:
    if not _NAME_RE.match(value) or value in (".", ".."):
        raise ConfigError(
            f"invalid {what} {value!r} for a secret lookup",
            hint="names are letters, digits, '_', '-' and '.', not starting with '.'",
        )
    return value


def namespace_chain(namespace: str) -> list[str]:
    """``company.team.x`` -> ``["company.team.x", "company.team", "company"]``."""
    parts = namespace.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


class DirectoryProvider:
    """Values in files: ``<root>/<tenant>/<namespace>/<NAME>``, looked up the namespace chain
    (``company.team.x``, then ``company.team``, then ``company``), then ``<root>/<tenant>/<NAME>``.

    One trailing newline is stripped (``echo value > NAME`` works). Symlinks are followed, so a
    Kubernetes secret volume can be mounted as a folder.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._listings: dict[str, frozenset[str]] | None = None
        self._contents: dict[str, bytes | None] = {}

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Within it each folder is listed once, only the files it lists are read, and each
        file once: the thousands of lookups of one desired state then cost one listing per
        folder, not one failed open per folder of each namespace chain, and one read per
        file (a tenant's secret that every namespace of it inherits: once, not per
        namespace)."""
        self._listings, self._contents = {}, {}
        try:
            yield
        finally:
            self._listings, self._contents = None, {}

    def _holds(self, folder: str, name: str) -> bool:
        if self._listings is None:
            return True
        names = self._listings.get(folder)
        if names is None:
            try:
                names = frozenset(os.listdir(folder))
            except OSError:  # missing, not a folder, unreadable: read_bytes says which
                names = frozenset() if not os.path.lexists(folder) else frozenset({name})
            self._listings[folder] = names
        return name in names

    def get(self, tenant: str, namespace: str, name: str) -> str | None:
        _safe(tenant, "tenant")
        _safe(name, "secret name")
        if not _NAMESPACE_RE.match(namespace):
            raise ConfigError(
                f"invalid namespace {namespace!r} for a secret lookup",
                hint="a namespace is dot-separated names of letters, digits, '_' and '-'",
            )
        root = f"{self.root}/{tenant}"
        for folder in [*(f"{root}/{ns}" for ns in namespace_chain(namespace)), root]:
            if not self._holds(folder, name):
                continue
            path = f"{folder}/{name}"
            try:
                data = self._read(path)
            except OSError as e:
                raise ConfigError(
                    f"cannot read secret {name} from {path}: {e.strerror}",
                    hint="check the permissions of the secrets directory",
                ) from e
            if data is None:
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigError(
                    f"secret {name} in {path} is not UTF-8 text",
                    hint="store the value as UTF-8 text (base64-encode binary values)",
                ) from None
            if text.endswith("\r\n"):
                return text[:-2]
            return text.removesuffix("\n")
        return None

    def _read(self, path: str) -> bytes | None:
        """The file's content, None if there is no such file; within a scope, read once."""
        if path in self._contents:
            return self._contents[path]
        try:
            with open(path, "rb") as file:
                data: bytes | None = file.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            data = None
        if self._listings is not None:
            self._contents[path] = data
        return data


class EnvProvider:
    """Values in environment variables ``<prefix><NAME>``, the same for every namespace."""

    def __init__(
        self, prefix: str = "HEADWATER_SECRET_", environ: Mapping[str, str] | None = None
    ) -> None:
        self.prefix = prefix
        self._environ = os.environ if environ is None else environ

    def get(self, tenant: str, namespace: str, name: str) -> str | None:
        return self._environ.get(self.prefix + name)


class ChainProvider:
    """The first provider that has a value wins."""

    def __init__(self, *providers: SecretProvider) -> None:
        self.providers = providers

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for provider in self.providers:
                stack.enter_context(lookup_scope(provider))
            yield

    def get(self, tenant: str, namespace: str, name: str) -> str | None:
        for provider in self.providers:
            value = provider.get(tenant, namespace, name)
            if value is not None:
                return value
        return None


def lookup_scope(provider: SecretProvider) -> contextlib.AbstractContextManager[None]:
    """``provider.scope()`` where it has one (many lookups in a row), else nothing."""
    scope = getattr(provider, "scope", None)
    return scope() if callable(scope) else contextlib.nullcontext()


def collect(
    provider: SecretProvider, keys: Iterable[ResourceKey]
) -> dict[tuple[str, str], dict[str, str]]:
    """The values of the ``secret`` resources among ``keys``, shaped as ``Target.apply`` takes
    them; secrets the provider does not have are left out."""
    values: dict[tuple[str, str], dict[str, str]] = {}
    for key in keys:
        if key.kind != "secret":
            continue
        value = provider.get(key.tenant, key.namespace, key.name)
        if value is not None:
            values.setdefault((key.tenant, key.namespace), {})[key.name] = value
    return values


def load_or_create_hash_key(state_dir: str | os.PathLike[str]) -> bytes:
    """The state directory's secret-hash key: 32 random bytes in a 0600 file, made once.

    Creation is atomic (written aside, then linked into place), so concurrent processes all end
    up with the same key.
    """
    folder = Path(state_dir)
    path = folder / HASH_KEY_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            tmp = folder / f".{HASH_KEY_FILE}.tmp-{_random.token_hex(8)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, _random.token_bytes(HASH_KEY_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)  # fails if another process made it first: use theirs
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        key = path.read_bytes()
    except OSError as e:
        raise StateError(
            f"cannot read or create the secret-hash key {path}: {e.strerror}",
            hint="check that the state directory is writable",
        ) from e
    if len(key) != HASH_KEY_BYTES:
        raise StateError(
            f"the secret-hash key {path} is damaged ({len(key)} bytes, expected 32)",
            hint="delete it to make a new one; every secret then shows as changed once",
        )
    return key
