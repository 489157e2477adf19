"""The sync daemon end to end: a real remote (file://, `git daemon`, git over HTTP, a local
path), the daemon as a subprocess, its HTTP server on 127.0.0.1, real SQLite and targets.

Issue 4's acceptance items are marked in each test's docstring.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from headwater.state import StateStore
from headwater.targets.local import LocalTarget
from tests.gitutil import commit, git
from tests.test_daemon_harness import (
    FLOW_DIR,
    INVALID_FLOW,
    Daemon,
    GitDaemon,
    GitHttpServer,
    Remote,
    base_config,
    cmdline_watch,
    debris,
    flow,
    push_payload,
    sign,
    target_files,
    wait_until,
)

pytestmark = pytest.mark.slow
FAST_POLL = {"poll": {"interval": "0.2s", "jitter": "10%"}}


def consistent(root: Path, instance: str) -> str | None:
    """The store agrees with the target, nothing is pending, no temporary debris is left."""
    instance_dir = root / "instances" / instance
    with StateStore(root / "state" / "state.db") as store:
        state = store.get(instance)
    current = LocalTarget(instance_dir).current_revision()
    assert state.pending_revision is None, state
    assert state.applied_revision == current, (state, current)
    assert debris(instance_dir) == []
    return current


@pytest.mark.parametrize("transport", ["file", "git-daemon"])
def test_commits_reach_the_instance_of_their_branch(tmp_path: Path, transport: str) -> None:
    """Acceptance 1 (file:// and git daemon remotes); acceptance 3, polling alone."""
    remote = Remote(tmp_path)
    initial = remote.head("main")
    with GitDaemon(tmp_path) as gd:
        url = remote.url if transport == "file" else gd.url("remote.git")
        with Daemon(tmp_path, base_config(tmp_path, url, **FAST_POLL)) as d:
            d.wait_ready()
            status = d.status()
            assert {n: s["applied_revision"] for n, s in status["instances"].items()} == {
                "dev": initial,
                "prod": initial,
            }
            assert status["repository"]["condition"] == "ok"
            assert status["repository"]["branches"]["dev"]["exists_on_remote"] is True

            on_dev = remote.commit("dev")
            d.wait_applied("dev", on_dev)
            assert d.instance("prod")["applied_revision"] == initial
            assert "acme/company/flows/added-1.yaml" in target_files(tmp_path / "instances" / "dev")

            on_main = remote.commit("main")
            prod = d.wait_applied("prod", on_main)
            dev = d.instance("dev")
            assert (dev["applied_revision"], dev["attempted_revision"], dev["outcome"]) == (
                on_dev,
                on_dev,
                "applied",
            )
            assert (prod["attempted_revision"], prod["branch"], prod["in_sync"]) == (
                on_main,
                "main",
                True,
            )
            assert d.metric("headwater_triggers_total", source="poll") > 0
            # the first fetch of each branch is a plain one; a moved branch, fetch-pack's
            fetches = [e["method"] for e in d.events() if e.get("event") == "mirror.fetch"]
            assert fetches[0] == "fetch" and fetches[-2:] == ["moved", "moved"], fetches
            assert d.stop() == 0


def test_webhooks_of_every_forge_trigger_a_sync_and_bad_ones_nothing(tmp_path: Path) -> None:
    """Acceptance 2: four kinds (plus Forgejo and a form-encoded GitHub payload) trigger a
    sync; missing or wrong signatures get 401, oversized bodies 413, untracked branches and
    tags nothing."""
    remote = Remote(tmp_path)
    with Daemon(tmp_path, base_config(tmp_path, remote.url)) as d:
        d.wait_ready()
        for kind in ("github", "gitlab", "gitea", "forgejo", "generic"):
            sha = remote.commit("dev")
            body, headers = push_payload(kind, "dev")
            code, answer = d.webhook(body, headers)
            assert (code, json.loads(answer)) == (202, {"triggered": ["dev"]}), kind
            d.wait_applied("dev", sha)

        # GitHub's form encoding: payload=<json>
        sha = remote.commit("dev")
        form = b"payload=" + json.dumps({"ref": "refs/heads/dev"}).replace(" ", "").encode()
        code, _ = d.webhook(
            form,
            {
                "X-GitHub-Event": "push",
                "X-Hub-Signature-256": sign(b"webhook-secret-for-tests", form),
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        assert code == 202
        d.wait_applied("dev", sha)

        pending = remote.commit("dev")
        before = d.metric("headwater_triggers_total", source="webhook")
        body, headers = push_payload("github", "dev")
        refused = {
            "missing": {k: v for k, v in headers.items() if k != "X-Hub-Signature-256"},
            "github": {**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64},
            "github, other secret": push_payload("github", "dev", secret="not-the-secret")[1],
            "gitlab": push_payload("gitlab", "dev", secret="not-the-secret")[1],
            "gitea": push_payload("gitea", "dev", secret="not-the-secret")[1],
            "generic": push_payload("generic", "dev", secret="not-the-secret")[1],
        }
        for case, bad in refused.items():
            assert d.webhook(body, bad)[0] == 401, case
        big = json.dumps({"ref": "refs/heads/dev", "pad": "x" * 5000}).encode()
        assert (
            d.webhook(big, {"X-Headwater-Signature": sign(b"webhook-secret-for-tests", big)})[0]
            == 413
        )
        untracked, untracked_headers = push_payload("github", "feature")
        remote.commit("main", {"README.md": "main moves but nobody says\n"})
        assert json.loads(d.webhook(untracked, untracked_headers)[1]) == {
            "ignored": "branch feature is not tracked"
        }
        tag = json.dumps({"ref": "refs/tags/v1"}).encode()
        code, answer = d.webhook(
            tag,
            {
                "X-Gitea-Event": "push",
                "X-Gitea-Signature": sign(b"webhook-secret-for-tests", tag)[7:],
            },
        )
        assert (code, json.loads(answer)) == (200, {"ignored": "refs/tags/v1 is not a branch"})
        ping = b"{}"
        assert (
            d.webhook(
                ping,
                {
                    "X-GitHub-Event": "ping",
                    "X-Hub-Signature-256": sign(b"webhook-secret-for-tests", ping),
                },
            )[0]
            == 200
        )

        # Nothing above raised a trigger, so nothing could sync: the instance is where it was.
        assert d.metric("headwater_triggers_total", source="webhook") == before
        assert d.instance("dev")["applied_revision"] != pending
        assert d.metric("headwater_webhooks_total", result="unauthorized") == len(refused)
        assert d.metric("headwater_webhooks_total", result="too_large") == 1

        body, headers = push_payload("generic", "dev")
        assert d.webhook(body, headers)[0] == 202
        d.wait_applied("dev", pending)


def test_a_burst_of_webhooks_coalesces_while_healthz_answers(tmp_path: Path) -> None:
    """Acceptance 2: 500 webhooks within a few seconds give a bounded number of syncs."""
    remote = Remote(tmp_path)
    with Daemon(tmp_path, base_config(tmp_path, remote.url, min_interval="0.5s")) as d:
        d.wait_ready()
        sha = remote.commit("dev")
        syncs_before = d.metric("headwater_sync_results_total", instance="dev")
        body, headers = push_payload("generic", "dev")
        codes: list[int] = []
        health: list[int] = []
        done = threading.Event()

        def send(n: int) -> None:
            for _ in range(n):
                codes.append(d.webhook(body, headers)[0])

        def probe() -> None:
            while not done.is_set():
                health.append(d.get("/healthz")[0])

        prober = threading.Thread(target=probe)
        prober.start()
        senders = [threading.Thread(target=send, args=(50,)) for _ in range(10)]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        done.set()
        prober.join()

        assert codes == [202] * 500
        assert health and set(health) == {200}
        d.wait_applied("dev", sha)
        d.wait(lambda: d.status()["daemon"]["pending_triggers"] == {}, "the board to empty")
        syncs = d.metric("headwater_sync_results_total", instance="dev") - syncs_before
        assert d.metric("headwater_triggers_total", source="webhook") == 500
        assert 1 <= syncs <= 50, syncs
        with StateStore(tmp_path / "state" / "state.db") as store:
            assert [e.revision for e in store.history("dev")].count(sha) == 1


def test_a_local_repository_syncs_through_the_filesystem_watch(tmp_path: Path) -> None:
    """Acceptance 3: a commit in a local repository is applied with polling switched off."""
    remote = Remote(tmp_path)
    work = remote.work
    conf = base_config(tmp_path, str(work), repository={"watch": True}, poll={"interval": 0})
    with Daemon(tmp_path, conf) as d:
        d.wait_ready()
        d.wait(lambda: d.status()["daemon"]["watching"], "the watch to start")
        git(work, "checkout", "-q", "dev")
        sha = commit(work, "local change", {f"{FLOW_DIR}/watched.yaml": flow("watched")})
        d.wait_applied("dev", sha)
        assert d.metric("headwater_triggers_total", source="watch") >= 1
        assert d.metric("headwater_triggers_total", source="poll") == 0


def test_sighup_triggers_a_sync(tmp_path: Path) -> None:
    remote = Remote(tmp_path)
    with Daemon(tmp_path, base_config(tmp_path, remote.url)) as d:
        d.wait_ready()
        sha = remote.commit("main")
        d.send(signal.SIGHUP)
        d.wait_applied("prod", sha)
        assert d.metric("headwater_triggers_total", source="signal") == 1


def test_old_revisions_are_pruned_once_each_apply_is_reported(tmp_path: Path) -> None:
    remote = Remote(tmp_path)
    conf = base_config(tmp_path, remote.url, instances={"dev": {"target": {"keep": 1}}})
    with Daemon(tmp_path, conf) as d:
        d.wait_ready()
        shas = []
        for _ in range(4):
            shas.append(remote.commit("dev"))
            d.send(signal.SIGHUP)
            d.wait_applied("dev", shas[-1])
        target = LocalTarget(tmp_path / "instances" / "dev")
        # pruning renames the old revisions away first, then removes them with their spaces
        d.wait(
            lambda: len(target.revisions()) == 2 and debris(tmp_path / "instances" / "dev") == [],
            "the old revisions to be pruned",
        )
        assert target.revisions() == [shas[-1], shas[-2]]  # keep 1, and the previous one
        assert consistent(tmp_path, "dev") == shas[-1]
        assert not any(e.get("event") == "prune.failed" for e in d.events())


def test_remote_unreachable_at_start_and_mid_run(tmp_path: Path) -> None:
    """Acceptance 4: keeps serving, reports in /status and metrics, recovers."""
    remote = Remote(tmp_path)
    gd = GitDaemon(tmp_path)
    conf = base_config(tmp_path, gd.url("remote.git"), **FAST_POLL)
    with Daemon(tmp_path, conf) as d:
        d.wait(
            lambda: d.status()["repository"]["condition"] == "unreachable",
            "the remote to be reported down",
        )
        assert d.get("/healthz")[0] == 200
        code, body = d.get("/readyz")
        assert code == 503 and json.loads(body)["waiting_for"] == ["dev", "prod"]
        assert "unable to connect" in d.status()["repository"]["error"]
        assert d.metric("headwater_remote_up") == 0

        initial = remote.head("dev")
        with gd:
            d.wait_ready()
            d.wait_applied("dev", initial)
            assert d.status()["repository"]["condition"] == "ok"
            assert d.metric("headwater_remote_up") == 1

        sha = remote.commit("dev")
        d.wait(
            lambda: d.status()["repository"]["condition"] == "unreachable",
            "the outage to be reported",
        )
        assert d.get("/healthz")[0] == 200 and d.get("/readyz")[0] == 200
        assert d.instance("dev")["applied_revision"] == initial
        assert d.stop() == 0

    # Restarted while the remote is still down: serves the last good revisions from the mirror.
    with Daemon(tmp_path, conf, name="restarted") as d:
        d.wait_ready()
        assert d.status()["repository"]["condition"] == "unreachable"
        assert d.instance("dev")["applied_revision"] == initial
        with gd:
            d.wait_applied("dev", sha)
            assert d.status()["repository"]["condition"] == "ok"


def test_a_force_push_is_followed(tmp_path: Path) -> None:
    """Acceptance 4: history rewritten on the remote; the daemon follows the new head."""
    remote = Remote(tmp_path)
    with Daemon(tmp_path, base_config(tmp_path, remote.url, **FAST_POLL)) as d:
        d.wait_ready()
        first = remote.commit("dev")
        d.wait_applied("dev", first)
        git(remote.work, "reset", "-q", "--hard", "HEAD~1")
        rewritten = remote.commit(
            "dev", {f"{FLOW_DIR}/rewritten.yaml": flow("rewritten")}, force=True
        )
        d.wait_applied("dev", rewritten)
        files = target_files(tmp_path / "instances" / "dev")
        assert "acme/company/flows/rewritten.yaml" in files
        assert "acme/company/flows/added-1.yaml" not in files


def test_a_deleted_branch_is_reported_and_the_last_good_revision_kept(tmp_path: Path) -> None:
    """Acceptance 4: the branch disappears on the remote; then comes back."""
    remote = Remote(tmp_path)
    with Daemon(tmp_path, base_config(tmp_path, remote.url, **FAST_POLL)) as d:
        d.wait_ready()
        good = remote.commit("dev")
        d.wait_applied("dev", good)
        git(remote.bare, "branch", "-D", "dev")
        dev = d.wait(
            lambda: (lambda s: s if s["last_result"] == "no_branch" else None)(d.instance("dev")),
            "the deleted branch to be reported",
        )
        assert "does not exist on the remote" in dev["error"]
        assert (dev["applied_revision"], dev["target_revision"]) == (good, good)
        assert d.status()["repository"]["branches"]["dev"]["exists_on_remote"] is False
        assert d.get("/readyz")[0] == 200
        assert d.instance("prod")["last_result"] in ("up_to_date", "applied")

        back = remote.commit("dev")
        d.wait_applied("dev", back)


def test_an_invalid_commit_keeps_the_last_good_revision_until_a_valid_one(tmp_path: Path) -> None:
    """Acceptance 4: applied vs attempted visible; the invalid commit is not retried."""
    remote = Remote(tmp_path)
    with Daemon(tmp_path, base_config(tmp_path, remote.url, **FAST_POLL)) as d:
        d.wait_ready()
        good = remote.head("dev")
        bad = remote.commit("dev", INVALID_FLOW)
        dev = d.wait(
            lambda: (lambda s: s if s["attempted_revision"] == bad else None)(d.instance("dev")),
            "the invalid commit to be attempted",
        )
        assert (dev["applied_revision"], dev["outcome"], dev["verdict"]) == (
            good,
            "failed",
            "invalid",
        )
        assert dev["errors"] and "broken.yaml" in dev["errors"][0]["path"]
        assert dev["target_revision"] == good
        attempted_at = dev["attempted_at"]

        polls = d.metric("headwater_triggers_total", source="poll")
        d.wait(
            lambda: (
                d.metric("headwater_sync_results_total", instance="dev", outcome="skipped") >= 3
            ),
            "three more polls of the same invalid head",
        )
        assert d.metric("headwater_triggers_total", source="poll") > polls
        assert d.metric("headwater_sync_results_total", instance="dev", outcome="invalid") == 1
        assert d.instance("dev")["attempted_at"] == attempted_at
        # skipped poll after poll, the head is still invalid: that stays its verdict
        assert (d.instance("dev")["last_result"], d.instance("dev")["verdict"]) == ("skipped", "invalid")

        fixed = remote.commit(
            "dev", {**dict.fromkeys(INVALID_FLOW), f"{FLOW_DIR}/fixed.yaml": flow("fixed")}
        )
        dev = d.wait_applied("dev", fixed)
        assert (dev["attempted_revision"], dev["outcome"], dev["errors"]) == (fixed, "applied", [])


def _big_commit(remote: Remote, count: int = 2000) -> str:
    files: dict[str, str | bytes | None] = {
        f"tenants/globex/ops/monitoring/alerts/files/bulk/f{i}.txt": f"line {i}\n" * 40
        for i in range(count)
    }
    return remote.commit("main", files)


def test_sigterm_during_an_apply_finishes_it_and_exits_cleanly(tmp_path: Path) -> None:
    """Acceptance 4: SIGTERM lands while an apply is in flight."""
    remote = Remote(tmp_path)
    d = Daemon(tmp_path, base_config(tmp_path, remote.url))
    with d:
        d.wait_ready()
        big = _big_commit(remote)
        d.send(signal.SIGHUP)
        d.wait(
            lambda: any(
                e.get("event") == "apply.begin" and e.get("revision") == big for e in d.events()
            ),
            "the apply of the big commit to begin",
        )
        assert d.stop(signal.SIGTERM) == 0
    assert consistent(tmp_path, "prod") == big  # the apply in flight was finished, not dropped
    assert any(e.get("event") == "daemon.stop" and e.get("reason") == "SIGTERM" for e in d.events())


def test_sigkill_then_restart_resumes_and_converges(tmp_path: Path) -> None:
    """Acceptance 4: kill -9 at any instant of an apply; the next daemon converges."""
    remote = Remote(tmp_path)
    conf = base_config(tmp_path, remote.url)
    with Daemon(tmp_path, conf, name="first") as d:
        d.wait_ready()
        big = _big_commit(remote)
        d.send(signal.SIGHUP)
        d.wait(
            lambda: any(
                e.get("event") == "apply.begin" and e.get("revision") == big for e in d.events()
            ),
            "the apply of the big commit to begin",
        )
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
    with Daemon(tmp_path, conf, name="second") as d:
        d.wait_applied("prod", big, timeout=60)
        d.wait_ready()
        assert d.stop() == 0
    assert consistent(tmp_path, "prod") == big
    assert consistent(tmp_path, "dev") == remote.head("dev")


def test_a_corrupted_mirror_is_cloned_again(tmp_path: Path) -> None:
    """Acceptance 4: every object of the mirror overwritten with garbage."""
    remote = Remote(tmp_path)
    with Daemon(tmp_path, base_config(tmp_path, remote.url, **FAST_POLL)) as d:
        d.wait_ready()
        objects = tmp_path / "state" / "mirror.git" / "objects"
        for path in objects.rglob("*"):
            if path.is_file():
                path.chmod(0o644)
                path.write_bytes(b"garbage" * 10)
        sha = remote.commit("dev")
        d.wait_applied("dev", sha)
        assert d.metric("headwater_mirror_reclones_total") >= 1
        assert d.status()["repository"]["mirror_reclones"] >= 1
        assert any(e.get("event") == "mirror.recloned" for e in d.events())
        assert d.status()["repository"]["condition"] == "ok"


def test_two_daemons_never_apply_to_one_instance_at_once(tmp_path: Path) -> None:
    """Acceptance 5: two daemons on one state directory; their applies never overlap."""
    remote = Remote(tmp_path)
    conf = base_config(tmp_path, remote.url, poll={"interval": "0.1s"})
    with Daemon(tmp_path, conf, name="a") as a, Daemon(tmp_path, conf, name="b") as b:
        a.wait_ready()
        b.wait_ready()
        for n in range(3):
            sha = remote.commit("dev" if n % 2 else "main")
            branch_instance = "dev" if n % 2 else "prod"
            a.send(signal.SIGHUP)
            b.send(signal.SIGHUP)
            a.wait_applied(branch_instance, sha)
            b.wait_applied(branch_instance, sha)
        big = _big_commit(remote, 500)
        a.send(signal.SIGHUP)
        b.send(signal.SIGHUP)
        a.wait_applied("prod", big)
        pids = {a.proc.pid: a, b.proc.pid: b}  # type: ignore[union-attr]
        assert a.stop() == 0 and b.stop() == 0
    begins = {
        (e["instance"], e["revision"], e["trigger"]): e["ts"]
        for d in pids.values()
        for e in d.events()
        if e.get("event") == "apply.begin"
    }
    with StateStore(tmp_path / "state" / "state.db") as store:
        for instance in ("dev", "prod"):
            spans = []
            for entry in store.history(instance, 1000):
                if not entry.trigger.startswith("daemon["):
                    continue
                start = begins[(instance, entry.revision, entry.trigger)]
                spans.append((start, entry.at.timestamp(), entry.trigger))
            spans.sort()
            for (_s1, end1, t1), (start2, _e2, t2) in itertools.pairwise(spans):
                assert end1 <= start2, f"{instance}: {t1} and {t2} applied at the same time"
    # Both daemons worked on the instances (one applied while the other waited or found it done).
    outcomes = [
        e.get("result") for d in pids.values() for e in d.events() if e.get("event") == "sync"
    ]
    assert "applied" in outcomes


def test_an_https_token_never_shows(tmp_path: Path) -> None:
    """Acceptance 6: the token is in no process argument list, log line or status."""
    remote = Remote(tmp_path)
    token = "tok-" + os.urandom(12).hex()
    with GitHttpServer(tmp_path, token) as server:
        conf = base_config(
            tmp_path,
            server.url("remote.git"),
            **FAST_POLL,
            repository={"auth": {"token_env": "HW_TEST_GIT_TOKEN", "username": "bot"}},
            webhook={"status_token_env": "HW_TEST_STATUS_TOKEN"},
        )
        env = {"HW_TEST_GIT_TOKEN": token, "HW_TEST_STATUS_TOKEN": "status-" + token}
        with cmdline_watch(token) as seen, Daemon(tmp_path, conf, env=env) as d:
            auth = {"Authorization": f"Bearer status-{token}"}

            def status() -> dict[str, object]:
                code, body = d.get("/status", auth)
                assert code == 200
                return dict(json.loads(body))

            d.wait(lambda: d.get("/readyz")[0] == 200, "readiness")
            for _ in range(2):
                sha = remote.commit("dev")
                d.wait(
                    lambda sha=sha: status()["instances"]["dev"]["applied_revision"] == sha,  # type: ignore[index]
                    f"dev to apply {sha[:12]}",
                )
            assert d.get("/status")[0] == 401
            assert d.get("/status", {"Authorization": "Bearer wrong"})[0] == 401
            body = json.dumps(status())
            metrics = d.get("/metrics")[1].decode()
        assert (
            server.accepted > 0 and server.refused > 0
        )  # git was challenged and answered with the token
        assert seen == []
        assert token not in body and token not in metrics
        assert token not in d.log_text()


def test_self_heal_restores_drift_and_reports_it_otherwise(tmp_path: Path) -> None:
    remote = Remote(tmp_path)
    conf = base_config(
        tmp_path, remote.url, drift_interval="0.2s", instances={"prod": {"selfHeal": True}}
    )
    with Daemon(tmp_path, conf) as d:
        d.wait_ready()
        for name in ("dev", "prod"):
            hello = (
                tmp_path
                / "instances"
                / name
                / "current"
                / "acme"
                / "company"
                / "flows"
                / "hello.yaml"
            )
            original = hello.read_bytes()
            hello.unlink()
            hello.write_bytes(b"id: hello\nnamespace: company\n# edited by hand\n")
            if name == "prod":
                d.wait(
                    lambda h=hello, o=original: h.read_bytes() == o, "prod's drift to be restored"
                )
                d.wait(lambda: d.instance("prod")["drift"] == [], "prod's drift to clear")
            else:
                dev = d.wait(
                    lambda: (lambda s: s if s["drift"] else None)(d.instance("dev")),
                    "dev's drift reported",
                )
                assert len(dev["drift"]) == 1 and "hello" in dev["drift"][0]
                assert d.metric("headwater_drift_resources", instance="dev") == 1
                assert hello.read_bytes() != original


def test_http_endpoints_and_instances_from_headwater_yaml(tmp_path: Path) -> None:
    remote = Remote(tmp_path)
    conf = base_config(tmp_path, remote.url)
    del conf["instances"]  # every instance headwater.yaml names, targets under the state dir
    with Daemon(tmp_path, conf) as d:
        d.wait_ready()
        assert (tmp_path / "state" / "instances" / "prod" / "current").is_dir()
        assert d.get("/nope")[0] == 404
        assert d.get("/webhook")[0] == 405
        metrics = d.get("/metrics")[1].decode()
        for name in (
            "headwater_sync_duration_seconds_bucket",
            "headwater_last_applied_timestamp_seconds",
            "headwater_sync_results_total",
            "headwater_drift_resources",
            "headwater_pending_triggers",
            "headwater_remote_up",
        ):
            assert name in metrics
        status = d.status()
        assert status["daemon"]["ready"] is True
        assert set(status["instances"]) == {"dev", "prod"}
        assert status["instances"]["dev"]["verdict"] == "applied"
        wait_until(
            lambda: d.metric("headwater_last_applied_timestamp_seconds", instance="dev") > 0,
            "gauge",
        )


def test_a_break_glass_rollback_sticks_until_the_branch_moves(tmp_path: Path) -> None:
    remote = Remote(tmp_path)
    with Daemon(tmp_path, base_config(tmp_path, remote.url, **FAST_POLL)) as d:
        d.wait_ready()
        first = remote.head("dev")
        second = remote.commit("dev")
        d.wait_applied("dev", second)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "headwater.cli.main",
                "rollback",
                "-C",
                str(remote.work),
                "--instance",
                "dev",
                "--to",
                first,
                "--config",
                str(d.config_path),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        skipped = d.metric("headwater_sync_results_total", instance="dev", outcome="skipped")
        d.wait(
            lambda: (
                d.metric("headwater_sync_results_total", instance="dev", outcome="skipped")
                >= skipped + 3
            ),
            "polls that leave the rollback alone",
        )
        dev = d.instance("dev")
        assert (dev["applied_revision"], dev["target_revision"]) == (first, first)
        assert "rolled back to" in dev["error"]
        third = remote.commit("dev")
        d.wait_applied("dev", third)


def test_after_a_restart_in_place_edits_sync_incrementally(tmp_path: Path) -> None:
    """A daemon started on up-to-date instances primes them from the state store and the
    cache, so the next in-place edit is planned and written for its namespace only; a new
    file is a structural change and gets a full sync."""
    remote = Remote(tmp_path)
    conf = base_config(tmp_path, remote.url, **FAST_POLL)
    with Daemon(tmp_path, conf, name="first") as d:
        d.wait_ready()
        first = remote.head("dev")
        d.wait_applied("dev", first)
        d.wait_applied("prod", remote.head("main"))  # both up to date: both primed next time
        assert d.stop() == 0
    edited = remote.commit("dev", {f"{FLOW_DIR}/hello.yaml": flow("hello", message="edited")})
    with Daemon(tmp_path, conf, name="second") as d:
        d.wait_applied("dev", edited)
        # prod (up to date) is primed in its turn, possibly just after dev's sync
        wait_until(
            lambda: sorted(e["instance"] for e in d.events() if e.get("event") == "primed") == ["dev", "prod"],
            "both instances primed", diagnose=d.tail,
        )
        added = remote.commit("dev", {f"{FLOW_DIR}/added.yaml": flow("added")})
        d.wait_applied("dev", added)
        again = remote.commit("dev", {f"{FLOW_DIR}/added.yaml": flow("added", message="again")})
        d.wait_applied("dev", again)
        syncs = {
            e["revision"]: e for e in d.events()
            if e.get("event") == "sync" and e.get("instance") == "dev" and e.get("result") == "applied"
        }
        assert syncs[edited]["incremental"] is True and syncs[edited]["update"] == 1
        assert syncs[added]["incremental"] is False and syncs[added]["create"] == 1
        assert syncs[again]["incremental"] is True and syncs[again]["update"] == 1
        assert d.stop() == 0
    assert consistent(tmp_path, "dev") == again
