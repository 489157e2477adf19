"""The sync loop: for each instance, new head → validate → plan → apply → record.

Everything that touches git, the targets or the engine runs in one thread (the main one),
so signals are handled between steps and an apply is never interrupted: SIGTERM lets the
apply in flight finish, then the loop ends. Webhooks, the filesystem watch, timers and
SIGHUP only raise flags on the trigger board (see ``triggers``); the HTTP threads read a
snapshot of the daemon's state under one lock.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable
from logging import INFO, WARNING
from types import FrameType
from typing import Any

from headwater.daemon import logs, syncing, upstream
from headwater.daemon.endpoints import DaemonHttp
from headwater.daemon.metrics import Metrics
from headwater.daemon.mirror import (
    Mirror,
    check_branch,
    check_token_transport,
    git_env,
    local_git_dir,
    parse_remote,
)
from headwater.daemon.runtime import InstanceRuntime, RemoteRuntime
from headwater.daemon.server import HttpServer
from headwater.daemon.triggers import ALL, RepoWatcher, TriggerBoard, Waker, poll_delay
from headwater.engine import Engine
from headwater.errors import ConfigError
from headwater.gitrepo import GitRepo
from headwater.settings import Settings
from headwater.state import StateStore


def _secret_from_env(var: str | None, what: str) -> str | None:
    if not var:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConfigError(
            f"{what}: the environment variable {var} is not set or empty", hint=f"export {var}"
        )
    return value


class Daemon:
    """The daemon; ``run()`` serves until SIGTERM/SIGINT (or ``stop()``) and returns 0."""

    def __init__(self, conf: Settings, logger: logging.Logger | None = None) -> None:
        self.conf = conf
        self.log = logger or logging.getLogger(logs.LOGGER)
        if not conf.repository.url:
            raise ConfigError(
                "no repository to sync",
                hint="set repository.url in daemon.yaml, --repository or HEADWATER_REPOSITORY_URL",
            )
        self.remote_spec = parse_remote(conf.repository.url)
        token = _secret_from_env(conf.repository.auth.token_env, "repository.auth.token_env")
        if token is not None:
            check_token_transport(self.remote_spec)
        self.webhook_secret = _secret_from_env(conf.webhook.secret_env, "webhook.secret_env")
        self.status_token = _secret_from_env(
            conf.webhook.status_token_env, "webhook.status_token_env"
        )
        self.secrets = [s for s in (token, self.webhook_secret, self.status_token) if s]
        if conf.repository.config_branch:
            check_branch(conf.repository.config_branch)
        self.metrics = Metrics()
        self.board = TriggerBoard(self.metrics.set_pending)
        self.waker = Waker()
        self.remote = RemoteRuntime(config_branch=conf.repository.config_branch)
        self.instances: dict[str, InstanceRuntime] = {}
        self.dynamic = not conf.instances  # no instance configured: every one headwater.yaml names
        for name, spec in sorted(conf.instances.items()):
            rt = InstanceRuntime(
                name, self_heal_setting=spec.selfHeal, self_heal=bool(spec.selfHeal)
            )
            if spec.branch:
                rt.branch, rt.branch_fixed = check_branch(spec.branch), True
            self.instances[name] = rt
        self.mu = threading.Lock()  # guards self.instances and self.remote for HTTP readers
        self.started = time.time()
        state = conf.state_path
        try:
            state.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the state directory {state}: {exc.strerror}"
            ) from None
        self.mirror = Mirror(
            state,
            self.remote_spec,
            git_env(token, conf.repository.auth.username),
            conf.repository.timeout,
        )
        self.http = DaemonHttp(self)
        self.store = StateStore(state / "state.db")
        try:
            self.server = HttpServer(conf.webhook.listen, self.http)
        except BaseException:
            self.store.close()
            self.waker.close()
            raise
        self.repo: GitRepo | None = None
        self.engine: Engine | None = None
        self.watcher: RepoWatcher | None = None
        self._stop: str | None = None
        self._hup = False
        self._next_cycle = 0.0

    # -- lifecycle -----------------------------------------------------------------------------

    def run(self, install_signals: bool = True) -> int:
        previous: dict[signal.Signals, Any] = {}
        old_wakeup: int | None = None
        try:
            if install_signals:  # first: a SIGTERM during start-up ends the daemon cleanly too
                old_wakeup = signal.set_wakeup_fd(self.waker.write_fd, warn_on_full_buffer=False)
                for signum, handler in (
                    (signal.SIGTERM, self._on_stop),
                    (signal.SIGINT, self._on_stop),
                    (signal.SIGHUP, self._on_hup),
                ):
                    previous[signum] = signal.signal(signum, handler)
            with self.mirror.exclusive():
                self.mirror.ensure()
            self.repo = GitRepo(self.mirror.path)
            self.engine = Engine(self.repo, self.conf, self.store, prune_later=True)
            for rt in self.instances.values():
                syncing.load_instance(self, rt)
            upstream.load(self)
            self.server.start()
            host, port = self.server.address
            self.event(
                INFO,
                "daemon.start",
                f"headwater daemon listening on http://{host}:{port}, "
                f"syncing {self.remote_spec.display}",
                host=host,
                port=port,
                pid=os.getpid(),
                repository=self.remote_spec.display,
                instances=sorted(self.instances),
            )
            self.start_watch()
            self.trigger(None, "startup")
            self._loop()
            self.event(INFO, "daemon.stop", f"stopped ({self._stop})", reason=self._stop)
            return 0
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            if old_wakeup is not None:
                signal.set_wakeup_fd(old_wakeup)
            self.close()

    def stop(self, reason: str = "stop") -> None:
        """Ask the loop to end after the current step (any thread)."""
        self._stop = reason
        self.waker.wake()

    def close(self) -> None:
        self.server.stop()
        if self.watcher is not None:
            self.watcher.stop()
        if self.engine is not None:
            self.engine.close()
        if self.repo is not None:
            self.repo.close()
        self.store.close()
        self.waker.close()

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop = signal.Signals(signum).name  # the loop sees it after the current step

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._hup = True

    def event(
        self, level: int, name: str, message: str, exc_info: bool = False, **fields: Any
    ) -> None:
        logs.event(self.log, level, name, message, exc_info, **fields)

    # -- triggers -------------------------------------------------------------------------------

    def trigger(self, instances: Iterable[str] | None, source: str) -> None:
        self.metrics.triggers.labels(source).inc()
        self.board.add(instances, source)
        self.waker.wake()

    def instances_for(self, branch: str | None) -> list[str] | None:
        """Instances following ``branch``; None means all (unknown branch map, or no branch)."""
        with self.mu:
            if branch is None or any(rt.branch is None for rt in self.instances.values()):
                return None
            if self.dynamic and self.remote.config_revision is None:
                return None
            return sorted(rt.name for rt in self.instances.values() if rt.branch == branch)

    def _on_watch(self, branch: str | None) -> None:
        names = self.instances_for(branch)
        if names != []:
            self.trigger(names, "watch")

    def start_watch(self) -> None:
        if self.watcher is not None or not self.conf.repository.watch:
            return
        path = self.remote_spec.local_path
        git_dir = local_git_dir(path) if path is not None else None
        if git_dir is None:
            return
        try:
            watcher = RepoWatcher(git_dir, self._on_watch)
            watcher.start()
        except OSError as exc:
            self.event(WARNING, "watch.error", f"cannot watch {git_dir}: {exc}; polling only")
            return
        self.watcher = watcher
        self.event(INFO, "watch.start", f"watching {git_dir} for new commits", path=str(git_dir))

    # -- the loop -------------------------------------------------------------------------------

    def _loop(self) -> None:
        now = time.monotonic()
        delay = poll_delay(self.conf.poll.interval, self.conf.poll.jitter)
        next_poll = math.inf if delay is None else now + delay
        drift_every = self.conf.drift_interval if self.conf.drift_interval > 0 else math.inf
        # The first drift check runs at start (drift may have happened while the daemon was
        # down), but after the first syncs: it reads the whole target back and must not delay
        # readiness. Disabled (``drift_interval: 0``) means never.
        next_drift = now if drift_every < math.inf else math.inf
        while self._stop is None:
            now = time.monotonic()
            if self._hup:
                self._hup = False
                self.event(INFO, "signal", "SIGHUP: syncing every instance", signal="SIGHUP")
                self.trigger(None, "signal")
            if now >= next_poll:
                self.trigger(None, "poll")
                delay = poll_delay(self.conf.poll.interval, self.conf.poll.jitter)
                next_poll = math.inf if delay is None else now + delay
            retries = self._due_retries(now)
            if self.board and now >= self._next_cycle:
                self._cycle(self.board.take())
                continue
            if now >= next_drift:
                syncing.check_drift(self)
                next_drift = time.monotonic() + drift_every
            deadlines = [next_poll, next_drift, *retries]
            if self.board:
                deadlines.append(self._next_cycle)
            soonest = min(deadlines)
            self.waker.wait(None if soonest == math.inf else max(0.0, soonest - time.monotonic()))

    def _due_retries(self, now: float) -> list[float]:
        """Trigger what is due for a retry; return the retry times still ahead."""
        ahead: list[float] = []
        if self.remote.retry_at is not None:
            if now >= self.remote.retry_at:
                self.remote.retry_at = None
                self.trigger(None, "retry")
            else:
                ahead.append(self.remote.retry_at)
        for rt in list(self.instances.values()):
            if rt.retry_at is None:
                continue
            if now >= rt.retry_at:
                rt.retry_at = None
                self.trigger([rt.name], "retry")
            else:
                ahead.append(rt.retry_at)
        return ahead

    def _cycle(self, batch: dict[str, Counter[str]]) -> None:
        self._next_cycle = time.monotonic() + self.conf.min_interval
        try:
            moved = upstream.refresh(self)
        except Exception as exc:  # a bug must not end the daemon
            self.event(
                logging.ERROR,
                "internal.error",
                f"refreshing the mirror failed: {exc!r}",
                error=repr(exc),
                exc_info=True,
            )
            moved = set()
        names = set(self.instances) if ALL in batch else set(batch) & set(self.instances)
        for name in sorted(names | moved):
            if self._stop is not None:
                break  # SIGTERM: no new apply; what is pending is picked up at the next start
            sources = batch.get(name, Counter()) + batch.get(ALL, Counter())
            reason = ",".join(sorted(sources)) or "fetch"
            try:
                syncing.sync(self, self.instances[name], reason)
            except Exception as exc:
                self.event(
                    logging.ERROR,
                    "internal.error",
                    f"{name}: sync crashed: {exc!r}",
                    instance=name,
                    error=repr(exc),
                    exc_info=True,
                )
