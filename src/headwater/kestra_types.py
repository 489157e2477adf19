"""Kestra plugin types: the core types a Kestra version ships, their legacy aliases, and extras.

The registry is built from ``data/core-types-1.0.txt`` and ``data/type-aliases-1.0.tsv`` plus
whatever the user adds (``--extra-types FILE``, a repository setting), because Kestra keeps
adding core types and a validator that only knows one version would call the new ones typos.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
CORE_TYPES_FILE = DATA_DIR / "core-types-1.0.txt"
ALIASES_FILE = DATA_DIR / "type-aliases-1.0.tsv"

CORE_PREFIX = "io.kestra.plugin.core."
# Where Kestra's own classes lived before 0.17 (and its test-only types still do).
LEGACY_CORE_PREFIXES = ("io.kestra.core.",)

# A Java class name: lower-case packages, then a class that starts with an upper-case letter.
_CLASS_NAME = re.compile(r"[a-z_$][\w$]*(?:\.[a-z_$][\w$]*)*\.[A-Z][\w$]*")
_TOKEN_SPLIT = re.compile(r"[\s,;()\[\]{}\"'`|]+")


def is_core_namespace(type_name: str) -> bool:
    """Whether ``type_name`` lives where Kestra's core types live (current or legacy)."""
    return type_name.startswith(CORE_PREFIX) or type_name.startswith(LEGACY_CORE_PREFIXES)


def types_from_text(text: str) -> list[str]:
    """Every Java class name in ``text``, in order, without duplicates; ``#`` starts a comment.

    Works for a plain list (one type per line) and for tables such as the conformance corpus's
    ``TEST_ONLY_TYPES.txt``, where ``a.b.Encrypted/Read`` names ``a.b.Encrypted`` and ``a.b.Read``.
    """
    found: dict[str, None] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        for token in _TOKEN_SPLIT.split(line):
            package = ""
            for part in token.split("/"):
                if _CLASS_NAME.fullmatch(part):
                    found[part] = None
                    package = part.rsplit(".", 1)[0]
                elif package and re.fullmatch(r"[A-Z][\w$]*", part):
                    found[f"{package}.{part}"] = None
    return list(found)


def load_extra_types(path: Path) -> list[str]:
    """The types listed in the file at ``path`` (see :func:`types_from_text`)."""
    return types_from_text(path.read_text(encoding="utf-8"))


class TypeRegistry:
    """The plugin types a validator knows: canonical names and the aliases that map to them."""

    def __init__(self, types: Iterable[str], aliases: Mapping[str, str] | None = None) -> None:
        self._types = frozenset(types)
        self._aliases = dict(aliases or {})
        self._names = self._types | self._aliases.keys()
        digest = hashlib.sha256()
        for name in sorted(self._types):
            digest.update(name.encode() + b"\n")
        for alias in sorted(self._aliases):
            digest.update(f"{alias}\t{self._aliases[alias]}\n".encode())
        self.fingerprint = digest.hexdigest()[:16]

    def __eq__(self, other: object) -> bool:  # the same types and aliases
        return isinstance(other, TypeRegistry) and (self._types, self._aliases) == (other._types, other._aliases)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    @classmethod
    def builtin(cls, extra: Iterable[str] = ()) -> TypeRegistry:
        """Kestra 1.0's core types and aliases, plus ``extra`` types."""
        types, aliases = _builtin_data()
        return cls(types | set(extra), aliases)

    def with_extra(self, extra: Iterable[str]) -> TypeRegistry:
        """A copy of this registry that also knows ``extra``."""
        return TypeRegistry(self._types | set(extra), self._aliases)

    @property
    def types(self) -> frozenset[str]:
        """The canonical type names."""
        return self._types

    def canonical(self, type_name: str) -> str | None:
        """The canonical name of ``type_name`` (aliases resolved), or None when unknown."""
        if type_name in self._types:
            return type_name
        return self._aliases.get(type_name)

    def is_known(self, type_name: str) -> bool:
        return type_name in self._names

    def is_unknown_core(self, type_name: str) -> bool:
        """Whether ``type_name`` is in Kestra's core namespace but not known here: a typo, or
        a type of another Kestra version (a known name, the usual case, is one lookup)."""
        return type_name not in self._names and is_core_namespace(type_name)

    @staticmethod
    def is_core_namespace(type_name: str) -> bool:
        return is_core_namespace(type_name)

    def is_prefix(self, prefix: str) -> bool:
        """Whether ``prefix`` is a known type or a package prefix of one (plugin defaults)."""
        dotted = prefix.rstrip(".") + "."
        return self.is_known(prefix) or any(n.startswith(dotted) for n in self._names)

    def suggest(self, type_name: str) -> str | None:
        """The known type ``type_name`` most likely meant (canonical name), or None."""
        return _suggest(type_name, tuple(sorted(self._names)), self.canonical)

    def __contains__(self, type_name: object) -> bool:
        return isinstance(type_name, str) and self.is_known(type_name)

    def __len__(self) -> int:
        return len(self._types)

    def __repr__(self) -> str:
        return f"TypeRegistry({len(self._types)} types, {len(self._aliases)} aliases)"


def _suggest(
    type_name: str, names: tuple[str, ...], canonical: Callable[[str], str | None]
) -> str | None:
    package, _, simple = type_name.rpartition(".")
    lowered = type_name.lower()
    best: tuple[float, str] | None = None
    for name in names:
        if name.lower() == lowered:
            best = (2.0, name)
            break
        other_package, _, other_simple = name.rpartition(".")
        score = difflib.SequenceMatcher(None, simple.lower(), other_simple.lower()).ratio()
        if score < 0.6:
            continue
        score += 0.2 * difflib.SequenceMatcher(None, package, other_package).ratio()
        if best is None or score > best[0]:
            best = (score, name)
    if best is None:
        return None
    return canonical(best[1]) or best[1]


@cache
def _builtin_data() -> tuple[frozenset[str], dict[str, str]]:
    types = frozenset(
        line.strip()
        for line in CORE_TYPES_FILE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#") and not line.strip().endswith(".package-info")
    )
    aliases: dict[str, str] = {}
    for number, line in enumerate(ALIASES_FILE.read_text(encoding="utf-8").splitlines()):
        fields = line.split("\t")
        if number == 0 or len(fields) < 2 or line.startswith("#"):
            continue  # header
        aliases[fields[0].strip()] = fields[1].strip()
    return types, aliases
