"""The daemon's parts on their own: webhook checks, URL checks, the mirror, triggers, settings,
logs and the runtime rules. Real git repositories where git is involved; no daemon process
except for the command-line checks at the end."""

from __future__ import annotations

import io
import json
import logging
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from headwater import gitrepo
from headwater.daemon import config, logs, webhooks
from headwater.daemon.mirror import (
    Mirror,
    check_branch,
    check_token_transport,
    git_env,
    local_git_dir,
    parse_remote,
)
from headwater.daemon.runtime import (
    failure_verdict,
    first_error,
    instance_map,
    permanent_failure,
    rolled_back_from,
)
from headwater.daemon.triggers import ALL, TriggerBoard, Waker, backoff_delay, poll_delay
from headwater.errors import ConfigError
from headwater.state import HistoryEntry, InstanceState
from tests.gitutil import ROOT, commit, git, init_repo

SECRET = b"s3cret"
BODY = json.dumps({"ref": "refs/heads/dev"}).encode()

# -- webhooks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "header"),
    [
        ({"x-hub-signature-256": webhooks.sign(SECRET, BODY)}, "x-hub-signature-256"),
        ({"x-gitea-signature": webhooks.sign(SECRET, BODY)[7:]}, "x-gitea-signature"),
        ({"x-forgejo-signature": webhooks.sign(SECRET, BODY)[7:].upper()}, "x-forgejo-signature"),
        ({"x-gitlab-token": "s3cret"}, "x-gitlab-token"),
        ({"x-headwater-signature": webhooks.sign(SECRET, BODY)}, "x-headwater-signature"),
    ],
)
def test_each_forge_signature_verifies(headers: dict[str, str], header: str) -> None:
    assert webhooks.verify(headers, BODY, SECRET) == header


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-github-event": "push"},
        {"x-hub-signature-256": webhooks.sign(b"other", BODY)},
        {"x-hub-signature-256": webhooks.sign(SECRET, BODY)[7:]},  # the prefix is required
        {"x-gitea-signature": "zz"},
        {"x-gitlab-token": "s3cret "[:-1] + "x"},
        {"x-gitlab-token": "é"},
        {"x-headwater-signature": "sha256="},
        # the first signature header present decides: a valid one behind a bad one fails
        {"x-hub-signature-256": "sha256=00", "x-gitlab-token": "s3cret"},
    ],
)
def test_missing_or_wrong_signatures_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(webhooks.Rejected) as info:
        webhooks.verify(headers, BODY, SECRET)
    assert info.value.status == 401


def test_a_signature_covers_the_body() -> None:
    headers = {"x-hub-signature-256": webhooks.sign(SECRET, BODY)}
    with pytest.raises(webhooks.Rejected):
        webhooks.verify(headers, BODY + b" ", SECRET)


@pytest.mark.parametrize(
    ("headers", "body", "branch", "ignored"),
    [
        ({"x-github-event": "push"}, BODY, "dev", None),
        ({"x-github-event": "ping"}, b"{}", None, "ping event"),
        (
            {"x-github-event": "push"},
            b'{"ref": "refs/tags/v1"}',
            None,
            "refs/tags/v1 is not a branch",
        ),
        ({"x-gitlab-event": "Push Hook"}, b'{"ref": "refs/heads/a/b"}', "a/b", None),
        (
            {"x-gitlab-event": "Tag Push Hook"},
            b'{"ref": "refs/tags/v1"}',
            None,
            "Tag Push Hook event",
        ),
        (
            {"x-gitlab-event": "System Hook"},
            b'{"object_kind": "push", "ref": "refs/heads/x"}',
            "x",
            None,
        ),
        (
            {"x-gitlab-event": "System Hook"},
            b'{"object_kind": "merge_request"}',
            None,
            "system hook 'merge_request'",
        ),
        ({"x-gitea-event": "push"}, BODY, "dev", None),
        ({"x-forgejo-event": "push", "x-gitea-event": "push"}, BODY, "dev", None),
        ({}, b"", None, None),  # generic without a body: every instance
        ({}, b'{"branch": "main"}', "main", None),
        ({}, b'{"note": "anything"}', None, None),
        (
            {"x-github-event": "push", "content-type": "application/x-www-form-urlencoded"},
            b"payload=%7B%22ref%22%3A%22refs%2Fheads%2Fdev%22%7D",
            "dev",
            None,
        ),
        ({"content-type": "application/x-www-form-urlencoded"}, BODY, "dev", None),  # curl -d
    ],
)
def test_push_parsing(
    headers: dict[str, str], body: bytes, branch: str | None, ignored: str | None
) -> None:
    event = webhooks.parse(headers, body)
    assert (event.branch, event.ignored) == (branch, ignored)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"x-github-event": "push"}, b"{not json"),
        ({"x-github-event": "push"}, b"[1, 2]"),
        ({"x-github-event": "push"}, b"{}"),
        ({"x-github-event": "push"}, b'{"ref": 5}'),
        ({"x-github-event": "push"}, b"\xff\xfe"),
        (
            {"x-github-event": "push", "content-type": "application/x-www-form-urlencoded"},
            b"other=1",
        ),
        ({"content-type": "application/x-www-form-urlencoded"}, b"payload=%7B"),
        ({}, b"[" * 100_000),
    ],
)
def test_bad_payloads_are_400(headers: dict[str, str], body: bytes) -> None:
    with pytest.raises(webhooks.Rejected) as info:
        webhooks.parse(headers, body)
    assert info.value.status == 400


# -- remotes and credentials --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("file:///srv/gitops.git", "file"),
        ("git://127.0.0.1:9418/gitops.git", "git"),
        ("ssh://git@example.com/acme/gitops.git", "ssh"),
        ("git@example.com:acme/gitops.git", "ssh"),
        ("https://git.example.com/acme/gitops.git", "https"),
        ("https://bot@git.example.com/acme/gitops.git", "https"),
        ("/srv/gitops", "local"),
        ("relative/gitops", "local"),
    ],
)
def test_accepted_remotes(url: str, scheme: str) -> None:
    assert parse_remote(url).scheme == scheme


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ext::sh -c touch% /tmp/pwned", "remote helpers"),
        ("fd::3", "remote helpers"),
        ("-uhack", "option"),
        ("--upload-pack=touch /tmp/x", "option"),
        ("https://user:hunter2@example.com/x.git", "password"),
        ("ftp://example.com/x.git", "scheme"),
        ("gopher://example.com/x", "scheme"),
        ("file:///srv/x\n--upload-pack=x", "control"),
        ("", "empty"),
    ],
)
def test_refused_remotes(url: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_remote(url)


def test_a_token_goes_over_https_or_loopback_http_only() -> None:
    check_token_transport(parse_remote("https://example.com/x.git"))
    check_token_transport(parse_remote("http://127.0.0.1:8080/x.git"))
    check_token_transport(parse_remote("http://localhost/x.git"))
    for url in (
        "http://example.com/x.git",
        "git://example.com/x.git",
        "ssh://example.com/x.git",
        "/srv/x",
    ):
        with pytest.raises(ConfigError, match="is not an https URL"):
            check_token_transport(parse_remote(url))


def test_credentials_reach_git_through_the_environment_only() -> None:
    env = git_env("tok-123", None)
    assert env["HEADWATER_GIT_PASSWORD"] == "tok-123"
    assert env["HEADWATER_GIT_USERNAME"] == "x-access-token"
    assert [k for k, v in env.items() if "tok-123" in v] == ["HEADWATER_GIT_PASSWORD"]
    assert env["GIT_ALLOW_PROTOCOL"] == "file:git:ssh:http:https"
    helpers = [env[f"GIT_CONFIG_VALUE_{i}"] for i in range(int(env["GIT_CONFIG_COUNT"]))]
    assert helpers[0] == "" and "HEADWATER_GIT_PASSWORD" in helpers[1]
    assert "HEADWATER_GIT_PASSWORD" not in git_env(None, None)


@pytest.mark.parametrize("name", ["main", "dev", "release/1.x", "feature_a-b"])
def test_branch_names_that_can_be_tracked(name: str) -> None:
    assert check_branch(name) == name


@pytest.mark.parametrize(
    "name", ["-x", "a..b", "a:refs/heads/b", "a b", "x.lock", "a//b", "a/", "@{-1}", ""]
)
def test_branch_names_that_cannot(name: str) -> None:
    with pytest.raises(ConfigError):
        check_branch(name)


def test_ext_transport_is_refused_by_git_too(tmp_path: Path) -> None:
    env = git_env(None, None)
    with pytest.raises(gitrepo.GitError):
        gitrepo.ls_remote(f"ext::sh -c touch% {tmp_path}/pwned", env=env, timeout=30)
    assert not (tmp_path / "pwned").exists()


# -- the mirror ---------------------------------------------------------------------------------


def _origin(tmp_path: Path) -> Path:
    origin = init_repo(tmp_path / "origin", {"headwater.yaml": "version: 1\n"})
    for branch in ("dev", "feature", "other"):
        git(origin, "branch", branch)
    return origin


def test_the_mirror_holds_only_the_tracked_branches(tmp_path: Path) -> None:
    origin = _origin(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    mirror = Mirror(state, parse_remote(origin.as_uri()), git_env(None, None), 30)
    assert mirror.ensure() is True
    assert mirror.ensure() is False
    heads = mirror.heads()
    assert heads.default_branch == "main" and set(heads.heads) == {
        "main",
        "dev",
        "feature",
        "other",
    }
    mirror.fetch(["dev", "main"])
    with gitrepo.GitRepo(mirror.path) as repo:
        assert set(repo.branches()) == {"dev", "main"}
        assert gitrepo.read_path(repo, "dev", "headwater.yaml") == b"version: 1\n"
        assert gitrepo.read_path(repo, "dev", "missing.yaml") is None
    assert mirror.integrity() is None

    # a force-push is followed
    git(origin, "checkout", "-q", "dev")
    new = commit(origin, "rewrite", {"x.txt": "x"})
    git(origin, "branch", "-f", "main", new)
    mirror.fetch(["main"])
    with gitrepo.GitRepo(mirror.path) as repo:
        assert repo.branches()["main"] == new


def _loose_object(git_dir: Path, oid: str) -> Path:
    return git_dir / "objects" / oid[:2] / oid[2:]


@pytest.mark.parametrize("url", ["path", "file", "file-force-push"])
def test_a_moved_branch_is_fetched_in_proportion_to_the_change(tmp_path: Path, url: str) -> None:
    origin = _origin(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    remote = parse_remote(str(origin) if url == "path" else origin.as_uri())
    mirror = Mirror(state, remote, git_env(None, None), 30)
    mirror.ensure()
    assert mirror.fetch(["dev", "main"]) == "fetch"  # new branches: a plain fetch
    with gitrepo.GitRepo(mirror.path) as repo:
        have = repo.branches()
    git(origin, "checkout", "-q", "dev")
    if url == "file-force-push":
        git(origin, "reset", "-q", "--hard", "HEAD")
        git(origin, "commit", "-q", "--amend", "-m", "rewritten")
    new = commit(origin, "edit", {"tenants/acme/flows/x.yaml": "id: x\n"})
    assert mirror.fetch(["dev"], have) == "moved"
    with gitrepo.GitRepo(mirror.path) as repo:
        assert repo.branches() == {"dev": new, "main": have["main"]}
        assert gitrepo.read_path(repo, "dev", "tenants/acme/flows/x.yaml") == b"id: x\n"
    assert mirror.integrity() is None
    # nothing moved: fetch-pack brings nothing, the refs stay
    with gitrepo.GitRepo(mirror.path) as repo:
        assert mirror.fetch(["dev"], repo.branches()) == "moved"
        assert repo.branches()["dev"] == new


def test_a_stale_view_of_the_mirror_falls_back_to_a_plain_fetch(tmp_path: Path) -> None:
    origin = _origin(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    mirror = Mirror(state, parse_remote(origin.as_uri()), git_env(None, None), 30)
    mirror.ensure()
    mirror.fetch(["dev"])
    git(origin, "checkout", "-q", "dev")
    new = commit(origin, "edit", {"a.txt": "a"})
    # The caller believes dev is elsewhere (another daemon moved it): the compare-and-swap
    # refuses, and git fetch takes over.
    assert mirror.fetch(["dev"], {"dev": new}) == "fetch"
    with gitrepo.GitRepo(mirror.path) as repo:
        assert repo.branches()["dev"] == new


def test_missing_new_objects_fail_the_check_and_move_no_ref(tmp_path: Path) -> None:
    origin = _origin(tmp_path)
    git(origin, "checkout", "-q", "dev")
    old = git(origin, "rev-parse", "HEAD").strip()
    new = commit(origin, "edit", {"b.txt": "a brand new blob\n"})
    blob = git(origin, "rev-parse", f"{new}:b.txt").strip()
    work_git = origin / ".git"
    gitrepo.check_new_objects(work_git, [(old, new)], timeout=30)  # complete: passes
    _loose_object(work_git, blob).unlink()
    with pytest.raises(gitrepo.GitError, match="incomplete"):
        gitrepo.check_new_objects(work_git, [(old, new)], timeout=30)

    # A remote missing that object cannot serve the branch: neither path moves the ref.
    state = tmp_path / "state"
    state.mkdir()
    mirror = Mirror(state, parse_remote(origin.as_uri()), git_env(None, None), 30)
    mirror.ensure()
    git(origin, "branch", "-f", "old", old)
    mirror.fetch(["old"])
    with gitrepo.GitRepo(mirror.path) as repo:
        have = repo.branches()
    git(origin, "branch", "-f", "old", new)
    with pytest.raises(gitrepo.GitError):
        mirror.fetch(["old"], have)
    with gitrepo.GitRepo(mirror.path) as repo:
        assert repo.branches()["old"] == old


def test_a_corrupt_or_foreign_mirror_is_replaced(tmp_path: Path) -> None:
    origin = _origin(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    mirror = Mirror(state, parse_remote(str(origin)), git_env(None, None), 30)
    mirror.ensure()
    mirror.fetch(["main"])
    for path in (mirror.path / "objects").rglob("*"):
        if path.is_file():
            path.chmod(0o644)
            path.write_bytes(b"junk")
    problem = mirror.integrity()
    assert problem is not None and "fsck" in problem
    mirror.reclone(["main", "dev"])
    assert mirror.integrity() is None
    assert sorted(p.name for p in state.iterdir()) == ["mirror.git"]  # no debris

    other = Mirror(state, parse_remote(str(tmp_path / "elsewhere")), git_env(None, None), 30)
    assert other.usable() is False  # a mirror of another URL is not reused
    assert other.ensure() is True
    (other.path / "HEAD").unlink()
    assert other.ensure() is True


def test_local_git_dir(tmp_path: Path) -> None:
    work = init_repo(tmp_path / "work", {"a": "1"})
    assert local_git_dir(work) == work / ".git"
    git(tmp_path, "clone", "-q", "--bare", str(work), str(tmp_path / "bare.git"))
    assert local_git_dir(tmp_path / "bare.git") == tmp_path / "bare.git"
    git(work, "worktree", "add", "-q", str(tmp_path / "wt"))
    found = local_git_dir(tmp_path / "wt")
    assert found is not None and found.is_dir()
    assert local_git_dir(tmp_path / "nothing") is None


# -- triggers -----------------------------------------------------------------------------------


def test_the_board_coalesces_a_burst() -> None:
    seen: list[dict[str, int]] = []
    board = TriggerBoard(seen.append)
    for _ in range(500):
        board.add(["dev"], "webhook")
    board.add(None, "poll")
    assert board.counts() == {"dev": 500, ALL: 1}
    taken = board.take()
    assert taken["dev"]["webhook"] == 500 and taken[ALL]["poll"] == 1
    assert not board and board.counts() == {}
    assert seen[-1] == {"dev": 0, ALL: 0}


def test_the_waker_wakes_a_wait() -> None:
    waker = Waker()
    try:
        waker.wake()
        waker.wake()
        started = time.monotonic()
        waker.wait(30)  # returns at once: woken
        assert time.monotonic() - started < 30
        waker.wait(0)
    finally:
        waker.close()


def test_backoff_doubles_up_to_the_maximum() -> None:
    rng = random.Random(4)
    delays = [backoff_delay(n, 2.0, 60.0, rng) for n in range(1, 10)]
    assert backoff_delay(0, 2.0, 60.0) == 0
    for n, delay in enumerate(delays, start=1):
        ceiling = min(60.0, 2.0 * 2 ** (n - 1))
        assert 0.8 * ceiling <= delay <= ceiling
    assert backoff_delay(10_000, 2.0, 60.0) <= 60.0


def test_poll_delay_spreads_and_can_be_disabled() -> None:
    rng = random.Random(1)
    values = [poll_delay(60.0, 0.1, rng) for _ in range(200)]
    assert all(v is not None and 54.0 <= v <= 66.0 for v in values)
    assert len(set(values)) > 100
    assert poll_delay(0, 0.1) is None


# -- runtime rules ------------------------------------------------------------------------------


def _entry(i: int, revision: str, action: str = "apply") -> HistoryEntry:
    return HistoryEntry(i, "dev", revision, datetime.now(UTC), action, {}, "cli:me")  # type: ignore[arg-type]


def test_a_rollback_sticks_until_the_branch_moves() -> None:
    history = [_entry(3, "old", "rollback"), _entry(2, "head"), _entry(1, "old")]
    assert rolled_back_from(history, "head") == history[0]
    assert rolled_back_from(history, "newer") is None
    assert rolled_back_from(history[1:], "head") is None
    assert rolled_back_from([], "head") is None


def test_which_failures_are_retried() -> None:
    def state(*codes: str) -> InstanceState:
        return InstanceState(
            "dev", outcome="failed", errors=tuple({"code": c, "message": "m"} for c in codes)
        )

    assert permanent_failure(state("flow.id-mismatch"))
    assert permanent_failure(state("prune.refused"))
    assert not permanent_failure(state("apply.failed"))
    assert not permanent_failure(state("interrupted"))
    assert not permanent_failure(InstanceState("dev", outcome="applied"))
    # the verdict a skip of that head keeps
    assert failure_verdict(state("flow.id-mismatch", "yaml.syntax")) == "invalid"
    assert failure_verdict(state("prune.refused")) == failure_verdict(state("sync.refused")) == "refused"
    assert first_error(state("a", "b").errors) == "[a] m (+1 more)"
    assert (
        first_error(({"path": "f.yaml", "line": 3, "code": "c", "message": "m"},))
        == "f.yaml:3: [c] m"
    )


def test_the_instance_map_of_headwater_yaml() -> None:
    data = (ROOT / "sample-repo" / "headwater.yaml").read_bytes()
    assert instance_map(data) == {"dev": ("dev", False), "prod": ("main", False)}
    assert instance_map(
        b"instances: {a: {branch: x, selfHeal: true}, b: {branch: '-x'}, c: 3}"
    ) == {"a": ("x", True)}
    with pytest.raises(ConfigError):
        instance_map(b"instances: [")


# -- settings -----------------------------------------------------------------------------------


def test_flags_and_variables_lay_over_daemon_yaml(tmp_path: Path) -> None:
    path = tmp_path / "daemon.yaml"
    path.write_text(
        "state_dir: /var/lib/headwater\nrepository: {url: https://example.com/x.git}\n"
        "instances: {prod: {target: {path: /srv/prod}, selfHeal: false}}\npoll: {interval: 60s}\n"
    )
    values = {o.dest: None for o in config.OPTIONS}
    values |= {
        "poll__interval": "5s",
        "webhook__listen": "0.0.0.0:9000",
        "backoff__max": "1m",
        "repository__watch": False,
        "log_format": "json",
    }
    conf = config.load(str(path), config.overrides(values, ("dev=/srv/dev", "prod"), ("prod",)))
    assert conf.state_dir == "/var/lib/headwater"
    assert conf.repository.url == "https://example.com/x.git" and conf.repository.watch is False
    assert conf.poll.interval == 5.0 and conf.backoff.max == 60.0 and conf.log_format == "json"
    assert conf.webhook.listen == "0.0.0.0:9000"
    assert conf.instances["dev"].target.path == "/srv/dev"
    assert (
        conf.instances["prod"].target.path == "/srv/prod"
        and conf.instances["prod"].selfHeal is True
    )


def test_every_setting_has_a_flag_and_a_variable() -> None:
    envs = {o.env for o in config.OPTIONS}
    assert "HEADWATER_WEBHOOK_LISTEN" in envs and "HEADWATER_STATE_DIR" in envs
    assert "HEADWATER_REPOSITORY_URL" in envs and "HEADWATER_POLL_INTERVAL" in envs
    assert len({o.flag for o in config.OPTIONS}) == len(config.OPTIONS)


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"poll\.jitter"):
        config.load(None, {"poll": {"jitter": "300%"}})
    with pytest.raises(ConfigError, match="log_format"):
        config.load(None, {"log_format": "xml"})


def test_the_dockerfile_uses_real_variables_and_the_daemon_entrypoint() -> None:
    text = (ROOT / "Dockerfile").read_text()
    used = {
        word.split("=")[0]
        for word in text.replace("\\", " ").split()
        if word.startswith("HEADWATER_")
    }
    assert used and used <= {o.env for o in config.OPTIONS}
    assert 'ENTRYPOINT ["headwater", "daemon"]' in text
    assert "HEALTHCHECK" in text and "/healthz" in text and "USER headwater" in text


# -- logs ---------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_daemon_logger() -> Iterator[None]:
    yield
    logger = logging.getLogger(logs.LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)


def test_json_logs_are_one_line_per_event_and_redact_secrets() -> None:
    stream = io.StringIO()
    logger = logs.setup("json", logging.INFO, ["tok-123"], stream)
    logs.event(
        logger,
        logging.INFO,
        "sync",
        "dev: applied with tok-123",
        instance="dev",
        error="x tok-123 y",
        create=2,
    )
    logs.event(logger, logging.DEBUG, "sync", "not shown")
    try:
        raise ValueError("boom tok-123")
    except ValueError:
        logger.error("failed", exc_info=True, extra={"event": "internal.error", "fields": {}})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert (first["event"], first["instance"], first["create"], first["level"]) == (
        "sync",
        "dev",
        2,
        "info",
    )
    assert first["msg"] == "dev: applied with ***" and first["error"] == "x *** y"
    second = json.loads(lines[1])
    assert "boom ***" in second["traceback"] and "tok-123" not in lines[1]


def test_text_logs_are_for_people() -> None:
    stream = io.StringIO()
    logger = logs.setup("text", logging.INFO, [], stream)
    logs.event(logger, logging.WARNING, "remote.error", "the remote failed", error="x")
    line = stream.getvalue().strip()
    assert line.endswith("WARNING the remote failed") and line[:4].isdigit()


# -- the command line ---------------------------------------------------------------------------


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "headwater.cli.main", "daemon", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def test_daemon_help_lists_every_flag_and_variable() -> None:
    out = _run("--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for option in config.OPTIONS:
        assert option.flag.split("/")[0] in text and option.env in text


def test_refused_urls_and_missing_secrets_exit_1(tmp_path: Path) -> None:
    out = _run("--repository", "ext::sh -c id", "--state-dir", str(tmp_path / "s"))
    assert out.returncode == 1 and "refusing repository URL" in out.stderr
    out = _run("--state-dir", str(tmp_path / "s"), env={"HEADWATER_REPOSITORY_URL": "-uhack"})
    assert out.returncode == 1 and "looks like a command-line option" in out.stderr
    out = _run(
        "--repository",
        str(tmp_path),
        "--state-dir",
        str(tmp_path / "s"),
        "--webhook-secret-env",
        "NOPE_UNSET",
    )
    assert out.returncode == 1 and "NOPE_UNSET is not set" in out.stderr


def test_status_never_shows_a_sync_half_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync records its attempt in the state store before it sets the instance's verdict:
    /status, asked in between, shows the record as it was when the sync began beside the
    verdict it had; once the sync ends, both are the sync's own."""
    from headwater.daemon import syncing
    from headwater.daemon.loop import Daemon
    from headwater.daemon.runtime import SyncResult
    from headwater.engine import Engine
    from headwater.gitrepo import GitRepo
    from tests.gitutil import sample_repo

    repo = sample_repo(tmp_path / "repo")
    path = tmp_path / "daemon.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\nrepository: {{url: 'file://{repo}'}}\n"
        f"instances: {{dev: {{target: {{path: {tmp_path / 'dev'}}}}}}}\n"
        "webhook: {listen: '127.0.0.1:0'}\n"
    )
    d = Daemon(config.load(str(path), {}))
    seen: list[dict[str, object]] = []

    def attempt(d: Daemon, rt: object, reason: str) -> SyncResult:
        d.store.record_failure("dev", "b" * 40, [{"path": "broken.yaml", "message": "bad"}])
        seen.append(d.http.status_body()["instances"]["dev"])  # the record made, no verdict yet
        return SyncResult("invalid", "b" * 40, error="1 error")

    monkeypatch.setattr(syncing, "attempt", attempt)
    try:
        d.engine = Engine(GitRepo(repo), d.conf, d.store)
        rt = d.instances["dev"]
        rt.verdict = rt.outcome = "up_to_date"
        syncing.sync(d, rt, "test")
        after = d.http.status_body()["instances"]["dev"]
    finally:
        if d.engine is not None:
            d.engine.close()
        d.server.stop()
        d.store.close()
        d.waker.close()
    (during,) = seen
    assert (during["attempted_revision"], during["outcome"], during["verdict"]) == (None, None, "up_to_date")
    assert (after["attempted_revision"], after["outcome"], after["verdict"]) == ("b" * 40, "failed", "invalid")
    assert d.instances["dev"].recorded is None
