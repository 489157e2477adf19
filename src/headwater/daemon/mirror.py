"""The daemon's mirror of the remote: URL checks, credentials, and a bare repository.

The mirror lives in ``<state_dir>/mirror.git`` and holds only the tracked branches, fetched
with ``+refs/heads/B:refs/heads/B`` (a force-push is followed). A token never reaches a
command line: git gets it from a one-line credential helper that reads
``HEADWATER_GIT_PASSWORD`` from the environment of that one git process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from headwater import gitrepo
from headwater.errors import ConfigError, GitError

MIRROR_DIR = "mirror.git"
_MARKER = "headwater-remote"
_CONFIG_BRANCH = "headwater-config-branch"
_SCHEMES = {"file", "git", "ssh", "git+ssh", "ssh+git", "http", "https"}
# Transports git may use for the mirror: no ext::, fd:: or other remote helpers, ever.
ALLOWED_PROTOCOLS = "file:git:ssh:http:https"
# Transports served by the change-proportional fetch (no credential helper involved).
_FAST_SCHEMES = {"local", "file", "git"}
_SCP_LIKE = re.compile(r"^(?:[^@/\s]+@)?[^/:\s]+:(?!//)")
_BRANCH = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._/-]*$")
_CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || exit 0; '
    'echo "username=${HEADWATER_GIT_USERNAME}"; echo "password=${HEADWATER_GIT_PASSWORD}"; }; f'
)


@dataclass(frozen=True)
class Remote:
    """A checked remote: ``url`` is what git gets, ``display`` is safe to log and show."""

    url: str
    display: str
    scheme: str  # local, file, git, ssh, http or https
    local_path: Path | None = None


def parse_remote(url: str) -> Remote:
    """Check a repository URL; ConfigError for what the daemon refuses to hand to git."""
    text = url.strip()
    if not text:
        raise ConfigError(
            "repository.url is empty", hint="give the URL or path of the GitOps repository"
        )
    if text.startswith("-"):
        raise ConfigError(
            f"refusing repository URL {text!r}: it looks like a command-line option",
            hint="give a file://, git://, ssh:// or https:// URL, or a path",
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ConfigError("refusing a repository URL with control characters")
    head = text.split("/", 1)[0]
    if "::" in head:
        raise ConfigError(
            f"refusing repository URL {text!r}: remote helpers such as ext:: can run commands",
            hint="give a file://, git://, ssh:// or https:// URL, or a path",
        )
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if match:
        scheme = match.group(1).lower()
        if scheme not in _SCHEMES:
            raise ConfigError(
                f"refusing repository URL scheme {scheme}://",
                hint="use file://, git://, ssh:// or https://",
            )
        parts = urlsplit(text)
        if parts.password is not None:
            raise ConfigError(
                "the repository URL holds a password",
                hint="remove it from the URL and set repository.auth.token_env instead",
            )
        if scheme == "file":
            return Remote(text, text, "file", Path(parts.path))
        return Remote(text, text, "ssh" if "ssh" in scheme else scheme)
    if _SCP_LIKE.match(text) and not Path(text).exists():
        return Remote(text, text, "ssh")
    path = Path(text).expanduser().absolute()
    return Remote(str(path), str(path), "local", path)


def check_token_transport(remote: Remote) -> None:
    """A token is sent over https only (or plain http to this machine, for tests)."""
    if remote.scheme == "https":
        return
    if remote.scheme == "http":
        host = urlsplit(remote.url).hostname or ""
        with contextlib.suppress(ValueError):
            if host == "localhost" or ipaddress.ip_address(host).is_loopback:
                return
    raise ConfigError(
        f"repository.auth.token_env is set but {remote.display} is not an https URL",
        hint="a token is only ever sent over https; ssh remotes use GIT_SSH_COMMAND and keys",
    )


def check_branch(name: str) -> str:
    """A branch name safe to put in a refspec; ConfigError otherwise."""
    if (
        not _BRANCH.match(name)
        or ".." in name
        or "//" in name
        or name.endswith(("/", ".lock", "."))
        or "@{" in name
    ):
        raise ConfigError(f"{name!r} is not a branch name the daemon can track")
    return name


def git_env(token: str | None, username: str | None) -> dict[str, str]:
    """The environment of every git process that talks to the remote."""
    env = {"GIT_ALLOW_PROTOCOL": ALLOWED_PROTOCOLS, "GIT_TERMINAL_PROMPT": "0"}
    if "GIT_SSH_COMMAND" not in os.environ and "GIT_SSH" not in os.environ:
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    # Reset inherited credential helpers (none may store the token), then add ours.
    config = [("credential.helper", "")]
    if token:
        config.append(("credential.helper", _CREDENTIAL_HELPER))
        env["HEADWATER_GIT_USERNAME"] = username or "x-access-token"
        env["HEADWATER_GIT_PASSWORD"] = token
    try:
        base = int(os.environ.get("GIT_CONFIG_COUNT", "0"))
    except ValueError:
        base = 0
    for i, (key, value) in enumerate(config, start=base):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    env["GIT_CONFIG_COUNT"] = str(base + len(config))
    return env


def local_git_dir(path: Path) -> Path | None:
    """The git directory of a local repository (bare or not), without running git."""
    dot = path / ".git"
    if dot.is_dir():
        return dot
    if dot.is_file():
        text = dot.read_text("utf-8", "replace").strip()
        if text.startswith("gitdir:"):
            found = Path(text[7:].strip())
            return found if found.is_absolute() else (path / found).resolve()
    if (path / "HEAD").is_file() and (path / "objects").is_dir():
        return path
    return None


class Mirror:
    """A bare repository under the state directory holding the tracked branches."""

    def __init__(
        self, state_dir: Path, remote: Remote, env: dict[str, str], timeout: float
    ) -> None:
        self.state_dir = state_dir
        self.path = state_dir / MIRROR_DIR
        self.remote = remote
        self.env = env
        self.timeout = timeout
        self._marker = hashlib.sha256(remote.url.encode("utf-8")).hexdigest()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Serialise fetches and re-clones between daemons sharing the state directory."""
        fd = os.open(self.state_dir / "mirror.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def usable(self) -> bool:
        """The mirror exists, looks like a bare repository, and mirrors this remote."""
        try:
            marker = (self.path / _MARKER).read_text("ascii").strip()
        except (OSError, UnicodeDecodeError):
            return False
        return (
            marker == self._marker
            and (self.path / "HEAD").is_file()
            and (self.path / "objects").is_dir()
            and (self.path / "refs").is_dir()
        )

    def ensure(self) -> bool:
        """Create the mirror when it is missing or unusable; True when it was (re)created."""
        self._remove_leftovers()
        if self.usable():
            return False
        fresh = self._new_repo()
        self._swap_in(fresh)
        return True

    def heads(self) -> gitrepo.RemoteHeads:
        return gitrepo.ls_remote(self.remote.url, env=self.env, timeout=self.timeout)

    def fetch(self, branches: Iterable[str], have: dict[str, str] | None = None) -> str:
        """Fetch ``branches``; ``have`` is the mirror's present heads. Returns how: ``moved``
        when every branch was already mirrored and the fast path succeeded, else ``fetch``.

        The fast path (:func:`gitrepo.fetch_moved`) serves the transports fetch-pack speaks
        without credentials: paths, file:// and git://. Any failure of it falls back to a plain
        ``git fetch``, which then reports the problem in its own words.
        """
        wanted = sorted(set(branches))
        have = have or {}
        if self.remote.scheme in _FAST_SCHEMES and wanted and all(b in have for b in wanted):
            try:
                gitrepo.fetch_moved(
                    self.path, self.remote.url, {b: have[b] for b in wanted},
                    env=self.env, timeout=self.timeout,
                )
                return "moved"
            except GitError:
                pass
        self._fetch_into(self.path, wanted)
        return "fetch"

    def remembered_config_branch(self) -> str | None:
        """The branch whose headwater.yaml mapped the instances at the last contact."""
        try:
            name = (self.path / _CONFIG_BRANCH).read_text("utf-8").strip()
            return check_branch(name) if name else None
        except (OSError, UnicodeDecodeError, ConfigError):
            return None

    def remember_config_branch(self, name: str) -> None:
        if self.remembered_config_branch() != name:
            with contextlib.suppress(OSError):
                (self.path / _CONFIG_BRANCH).write_text(name + "\n", "utf-8")

    def integrity(self) -> str | None:
        """None when the mirror is sound, else what is wrong with it."""
        if not self.usable():
            return f"{self.path} is not a usable mirror"
        return gitrepo.check_integrity(self.path, timeout=max(self.timeout, 60.0))

    def reclone(self, branches: Iterable[str]) -> None:
        """Fetch the branches into a fresh repository, then swap it in; the old one goes."""
        fresh = self._new_repo()
        try:
            self._fetch_into(fresh, branches)
        except BaseException:
            shutil.rmtree(fresh, ignore_errors=True)
            raise
        self._swap_in(fresh)

    # -- internals -----------------------------------------------------------------------------

    def _fetch_into(self, git_dir: Path, branches: Iterable[str]) -> None:
        refspecs = [f"+refs/heads/{b}:refs/heads/{b}" for b in sorted(set(branches))]
        if refspecs:
            gitrepo.fetch(git_dir, self.remote.url, refspecs, env=self.env, timeout=self.timeout)

    def _new_repo(self) -> Path:
        fresh = self.state_dir / f"{MIRROR_DIR}.new-{secrets.token_hex(6)}"
        try:
            gitrepo.init_bare(fresh)
            (fresh / _MARKER).write_text(self._marker + "\n", "ascii")
        except (OSError, GitError) as exc:
            shutil.rmtree(fresh, ignore_errors=True)
            raise GitError(
                f"cannot create the mirror in {self.state_dir}: {exc}",
                hint="check that the state directory is writable and has free space",
            ) from exc
        return fresh

    def _swap_in(self, fresh: Path) -> None:
        old = self.state_dir / f"{MIRROR_DIR}.old-{secrets.token_hex(6)}"
        if self.path.exists() or self.path.is_symlink():
            os.rename(self.path, old)
        os.rename(fresh, self.path)
        shutil.rmtree(old, ignore_errors=True)

    def _remove_leftovers(self) -> None:
        for entry in self.state_dir.glob(f"{MIRROR_DIR}.*-*"):
            shutil.rmtree(entry, ignore_errors=True)
