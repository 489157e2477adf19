"""A commit's tree listing → tenants, namespaces, flows and files (DESIGN §1). Pure.

The folder layout is the model: ``tenants/<tenant>/<a>/<b>/`` is namespace ``a.b`` of
``<tenant>``, a dotted folder ``a.b/`` is a shortcut for the same, and inside a namespace
folder ``namespace.yaml``, ``flows/`` and ``files/`` are reserved names.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from headwater.errors import Diagnostic
from headwater.gitrepo import MODE_SUBMODULE, MODE_SYMLINK, TreeEntry

TENANTS_DIR = "tenants"
REPO_CONFIG = "headwater.yaml"
IGNORE_FILE = ".headwaterignore"
ROOT_FILES = (REPO_CONFIG, IGNORE_FILE)  # what a commit's root says of all its tenants
TENANT_CONFIG = "tenant.yaml"
NAMESPACE_CONFIG = "namespace.yaml"
RESERVED = ("flows", "files")
DEFAULT_MAX_FILE_BYTES = 10 * 1024 * 1024

SEGMENT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
TENANT_RE = SEGMENT_RE
NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
FLOW_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$")
NAMESPACE_MAX = 150
FLOW_ID_MAX = 100
FLOW_SUFFIXES = (".yaml", ".yml")


@dataclass
class Namespace:
    tenant: str
    name: str
    folder: str | None  # repo path of its folder; None for an implied intermediate namespace
    config: TreeEntry | None = None
    flows: dict[str, TreeEntry] = field(default_factory=dict)  # flow id → blob
    files: dict[str, TreeEntry] = field(default_factory=dict)  # path below files/ → blob

    @property
    def parent(self) -> str | None:
        return self.name.rpartition(".")[0] or None

    def ancestry(self) -> list[str]:
        """Namespace names from the root segment down to this one."""
        parts = self.name.split(".")
        return [".".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass
class Tenant:
    name: str
    folder: str
    config: TreeEntry | None = None
    namespaces: dict[str, Namespace] = field(default_factory=dict)


@dataclass
class Layout:
    repo_config: TreeEntry | None
    tenants: dict[str, Tenant]
    diagnostics: list[Diagnostic]

    def namespace(self, tenant: str, name: str) -> Namespace | None:
        t = self.tenants.get(tenant)
        return t.namespaces.get(name) if t else None


def _error(path: str, code: str, message: str, hint: str | None = None) -> Diagnostic:
    return Diagnostic(path, None, None, code, message, hint=hint)


def _bad_path(path: str) -> bool:
    """An absolute path, a NUL, a backslash, or an empty, '.' or '..' segment."""
    wrapped = f"/{path}/"
    return "//" in wrapped or "/./" in wrapped or "/../" in wrapped or "\0" in path or "\\" in path


def flagged_anywhere(path: str, mode: str) -> bool:
    """Whether ``build`` reports this path wherever it is, inside ``tenants/`` or not."""
    return mode == MODE_SUBMODULE or _bad_path(path)


def build(
    entries: Iterable[TreeEntry],
    *,
    ignored: Callable[[str], bool] | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Layout:
    """Turn a recursive tree listing into the repository model, with every layout error."""
    diags: list[Diagnostic] = []
    tenants: dict[str, Tenant] = {}
    repo_config: TreeEntry | None = None
    # namespace key (tenant, ns) → folder that defined it, to report a namespace reached twice
    ns_folders: dict[tuple[str, str], str] = {}
    # folder → (tenant, namespace) cache, so each folder path is interpreted once
    folder_ns: dict[str, tuple[str, str] | None] = {}
    case_seen: dict[tuple[str, str, str], str] = {}
    bad_tenants: set[str] = set()
    # folder → (namespace, segments walked, bad) of the walk below the tenant: the same for
    # every file of a folder, so each folder is walked once
    walked: dict[str, tuple[str, int, bool]] = {}

    for entry in entries:
        path = entry.path
        if ignored is not None and ignored(path):
            continue
        if _bad_path(path):
            diags.append(
                _error(path, "layout.bad-path", f"path {path!r} is not a plain relative path",
                       "remove '..', empty or absolute path segments")
            )
            continue
        if entry.mode == MODE_SUBMODULE or entry.type == "commit":
            diags.append(
                _error(path, "layout.submodule", "submodules are not supported",
                       "vendor the content into the repository instead of a submodule")
            )
            continue
        if path == REPO_CONFIG:
            repo_config = entry
            continue
        parts = path.split("/")
        if parts[0] != TENANTS_DIR:
            continue  # README, CI files and the like live outside the model
        if entry.mode == MODE_SYMLINK:
            diags.append(
                _error(path, "layout.symlink", "symbolic links are not allowed below tenants/",
                       "commit the file itself instead of a link")
            )
            continue
        if len(parts) == 1:
            diags.append(
                _error(path, "layout.tenants-not-a-folder", f"{TENANTS_DIR} is a file, not the folder of the tenants",
                       f"remove it and keep tenant folders in {TENANTS_DIR}/")
            )
            continue
        if len(parts) == 2:
            diags.append(
                _error(path, "layout.stray-file", "stray file directly under tenants/",
                       "tenants/ holds only tenant folders; add it to .headwaterignore if intended")
            )
            continue
        tenant_name = parts[1]
        if tenant_name in bad_tenants:
            continue
        tenant = tenants.get(tenant_name)
        if tenant is None:
            if not TENANT_RE.match(tenant_name):
                bad_tenants.add(tenant_name)
                diags.append(
                    _error(f"tenants/{tenant_name}", "layout.bad-tenant",
                           f"tenant name {tenant_name!r} is invalid",
                           "use lowercase letters, digits, '-' and '_', starting with a letter or digit")
                )
                continue
            tenant = tenants[tenant_name] = Tenant(tenant_name, f"tenants/{tenant_name}")
        rest = parts[2:]
        if len(rest) == 1:
            if rest[0] == TENANT_CONFIG:
                tenant.config = entry
            else:
                diags.append(
                    _error(path, "layout.stray-file", f"stray file {rest[0]!r} in the tenant folder",
                           f"a tenant folder holds {TENANT_CONFIG} and namespace folders only; "
                           "add it to .headwaterignore if intended")
                )
            continue
        # Walk the folders below the tenant: each is a namespace until a reserved name.
        parent_folder = path.rpartition("/")[0]
        known = walked.get(parent_folder)
        if known is not None:
            ns_name, index, bad = known
            if bad:
                continue
            rest_walk = False
        else:
            ns_name, index, bad, rest_walk = "", 0, False, True
        while rest_walk and index < len(rest) - 1:
            segment = rest[index]
            if segment in RESERVED:
                break
            folder = "/".join(parts[: 3 + index])
            cached = folder_ns.get(folder, ...)
            if cached is ...:
                interpreted = _namespace_of_folder(tenant_name, ns_name, segment, folder, diags)
                folder_ns[folder] = interpreted
                if interpreted is not None:
                    key = interpreted
                    other = ns_folders.get(key)
                    if other is not None and other != folder:
                        diags.append(
                            Diagnostic(folder, None, None, "layout.duplicate-namespace",
                                       f"namespace {key[1]!r} of tenant {tenant_name!r} is reached "
                                       f"by two folders: {other}/ and {folder}/",
                                       hint="keep one folder per namespace (nested or dotted, not both)",
                                       related=(other,))
                        )
                    else:
                        ns_folders[key] = folder
                        _ensure(tenant, key[1], folder)
                cached = interpreted
            if cached is None:
                bad = True
                break
            ns_name = cached[1]
            index += 1
        walked[parent_folder] = (ns_name, index, bad)
        if bad:
            continue
        if not ns_name:
            # a reserved folder or a file right under the tenant
            segment = rest[0]
            diags.append(
                _error(path, "layout.reserved-namespace",
                       f"{segment!r} directly under the tenant folder would be a namespace named "
                       f"{segment!r}, which is reserved",
                       f"{segment}/ belongs inside a namespace folder, e.g. "
                       f"tenants/{tenant_name}/<namespace>/{segment}/")
            )
            continue
        namespace = tenant.namespaces[ns_name]
        inner = rest[index:]
        head = inner[0]
        if len(inner) == 1:
            if head == NAMESPACE_CONFIG:
                namespace.config = entry
            else:
                diags.append(
                    _error(path, "layout.stray-file", f"stray file {head!r} in namespace {ns_name!r}",
                           "a namespace folder holds namespace.yaml, flows/, files/ and child "
                           "namespace folders; add it to .headwaterignore if intended")
                )
        elif head == "flows":
            _add_flow(namespace, entry, inner[1:], diags)
        elif head == "files":
            _add_file(namespace, entry, "/".join(inner[1:]), max_file_bytes, case_seen, diags)
    return Layout(repo_config, tenants, diags)


def _namespace_of_folder(
    tenant: str, parent: str, segment: str, folder: str, diags: list[Diagnostic]
) -> tuple[str, str] | None:
    pieces = segment.split(".")
    if any(p == "" for p in pieces):
        diags.append(
            _error(folder, "layout.bad-namespace", f"folder {segment!r} has an empty namespace segment",
                   "remove the doubled, leading or trailing '.'")
        )
        return None
    for piece in pieces:
        if piece in RESERVED:
            diags.append(
                _error(folder, "layout.reserved-namespace",
                       f"a namespace segment named {piece!r} is reserved",
                       f"'{piece}' inside a namespace name would be confused with the {piece}/ "
                       "folder; rename the namespace")
            )
            return None
    name = f"{parent}.{segment}" if parent else segment
    if not NAMESPACE_RE.match(name) or not all(SEGMENT_RE.match(p) for p in pieces):
        diags.append(
            _error(folder, "layout.bad-namespace", f"namespace {name!r} is not a valid name",
                   "use lowercase letters, digits, '-' and '_' in each dot-separated segment")
        )
        return None
    if len(name) > NAMESPACE_MAX:
        diags.append(
            _error(folder, "layout.bad-namespace",
                   f"namespace {name[:40]}… is {len(name)} characters, above {NAMESPACE_MAX}",
                   "shorten the folder names")
        )
        return None
    return tenant, name


def _ensure(tenant: Tenant, name: str, folder: str) -> None:
    """Create the namespace and its implied ancestors (empty layers without folders)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        ancestor = ".".join(parts[:i])
        tenant.namespaces.setdefault(ancestor, Namespace(tenant.name, ancestor, None))
    existing = tenant.namespaces.get(name)
    if existing is None:
        tenant.namespaces[name] = Namespace(tenant.name, name, folder)
    elif existing.folder is None:
        existing.folder = folder


def _add_flow(namespace: Namespace, entry: TreeEntry, below: list[str], diags: list[Diagnostic]) -> None:
    if len(below) != 1:
        diags.append(
            _error(entry.path, "layout.flows-subfolder", "flows/ may not contain sub-folders",
                   "put each flow directly in flows/; use a child namespace folder to group flows")
        )
        return
    filename = below[0]
    stem, ext = posixpath.splitext(filename)
    if ext not in FLOW_SUFFIXES:
        diags.append(
            _error(entry.path, "layout.not-a-flow", f"{filename!r} in flows/ is not a .yaml/.yml file",
                   "flows/ holds only flow definitions; put other files under files/")
        )
        return
    if not FLOW_ID_RE.match(stem) or len(stem) > FLOW_ID_MAX:
        diags.append(
            _error(entry.path, "layout.bad-flow-id", f"flow file name {stem!r} is not a valid flow id",
                   "use letters, digits, '.', '-' and '_' (at most 100), starting with a letter or digit")
        )
        return
    other = namespace.flows.get(stem)
    if other is not None:
        diags.append(
            Diagnostic(entry.path, None, None, "layout.duplicate-flow",
                       f"flow {stem!r} is defined twice: {other.path} and {entry.path}",
                       hint="keep one file per flow id", related=(other.path,))
        )
        return
    namespace.flows[stem] = entry


def _add_file(
    namespace: Namespace,
    entry: TreeEntry,
    rel: str,
    max_bytes: int,
    case_seen: dict[tuple[str, str, str], str],
    diags: list[Diagnostic],
) -> None:
    if entry.size > max_bytes:
        diags.append(
            _error(entry.path, "layout.file-too-large",
                   f"namespace file is {entry.size} bytes, above the limit of {max_bytes}",
                   "keep large data out of the repository, or raise limits.maxFileBytes in headwater.yaml")
        )
        return
    folded = (namespace.tenant, namespace.name, rel.casefold())
    other = case_seen.get(folded)
    if other is not None:
        diags.append(
            Diagnostic(entry.path, None, None, "layout.case-collision",
                       f"{entry.path} and {other} differ only by letter case",
                       hint="rename one; they would collide on case-insensitive file systems",
                       related=(other,))
        )
        return
    case_seen[folded] = entry.path
    namespace.files[rel] = entry
