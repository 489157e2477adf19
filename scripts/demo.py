"""`make demo`: the whole loop on the embedded local target, from sample-repo/ to two instances.

Builds a Git repository with `main` (prod) and `dev` branches from sample-repo/, validates,
applies both instances, shows the pull-request view of promoting dev to prod, explains where a
value comes from, prints the status, promotes, and ends with a summary. Everything lives in
.demo/ and is rebuilt on every run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
REPO = DEMO / "gitops"
STATE = DEMO / "state"
ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Headwater Demo", "GIT_AUTHOR_EMAIL": "demo@example.com",
    "GIT_COMMITTER_NAME": "Headwater Demo", "GIT_COMMITTER_EMAIL": "demo@example.com",
    "GIT_CONFIG_NOSYSTEM": "1", "NO_COLOR": os.environ.get("NO_COLOR", ""),
}
SECRETS = {
    "acme/company/DB_PASSWORD": "demo-db-password",
    "acme/SLACK_WEBHOOK": "https://hooks.example.com/demo",
    "globex/PAGER_TOKEN": "demo-pager-token",
}


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, env=ENV, check=True, capture_output=True, text=True).stdout.strip()


def headwater(*args: str, ok: tuple[int, ...] = (0,)) -> int:
    cmd = [sys.executable, "-m", "headwater.cli.main", *args]
    print("$ headwater " + " ".join(args), flush=True)
    code = subprocess.run(cmd, env=ENV, check=False).returncode
    if code not in ok:
        raise SystemExit(f"demo step failed (exit {code}): headwater {' '.join(args)}")
    return code


def build_repository() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    shutil.copytree(ROOT / "sample-repo", REPO)
    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", "Sample GitOps repository")
    git("checkout", "-q", "-b", "dev")
    ingest = REPO / "tenants/acme/company/team/namespace.yaml"
    ingest.write_text(ingest.read_text().replace("batch_size: 500", "batch_size: 800"))
    flow = REPO / "tenants/acme/company/team/flows/quality.yaml"
    flow.write_text(
        "id: quality\nnamespace: company.team\ndescription: Data quality checks (new on dev).\n"
        "tasks:\n  - id: check\n    type: io.kestra.plugin.core.log.Log\n"
        "    message: \"checking {{ vars.batch_size }} rows in {{ vars.db.host }}\"\n"
    )
    git("add", "-A")
    git("commit", "-q", "-m", "Data team: bigger batches and a quality flow")
    git("checkout", "-q", "main")
    for rel, value in SECRETS.items():
        path = STATE / "secrets" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
        path.chmod(0o600)


def main() -> None:
    started = time.monotonic()
    common = ["-C", str(REPO)]
    state = ["--state-dir", str(STATE)]
    banner("1. A Git repository from sample-repo/: branch main feeds prod, branch dev feeds dev")
    build_repository()
    print(git("log", "--oneline", "--all", "--graph"))

    banner("2. Validate both branches for every instance")
    headwater("validate", *common, "--rev", "main")
    headwater("validate", *common, "--rev", "dev")

    banner("3. Apply dev (branch dev) and prod (branch main) to the embedded local target")
    headwater("-q", "apply", *common, "--instance", "dev", "--yes", *state)
    headwater("-q", "apply", *common, "--instance", "prod", "--yes", *state)
    headwater("plan", *common, "--instance", "prod", *state, "--detailed-exitcode", "--no-color")

    banner("4. The pull-request view: what merging dev into main would change on prod")
    headwater("plan", *common, "--instance", "prod", "--base", "main", "--head", "dev", "--no-color", *state)

    banner("5. Explain: every effective value of acme/company.team on prod, and where it comes from")
    headwater("explain", *common, "acme/company.team", "--instance", "prod")

    banner("6. Status of both instances")
    headwater("status", *common, *state)

    promoted = False
    probe = subprocess.run([sys.executable, "-m", "headwater.cli.main", "promote", "--help"],
                           env=ENV, check=False, capture_output=True)
    if probe.returncode == 0:
        banner("7. Promote what dev proved to prod (a branch ready for a pull request)")
        headwater("promote", *common, *state, "--from", "dev", "--to", "prod", "--force", "--reason",
                  "demo: skip the soak window")
        promoted = True

    revisions = sorted(p.name for p in (STATE / "instances").iterdir())
    banner("Summary")
    print(f"repository:  {REPO}")
    print(f"instances:   {', '.join(revisions)} under {STATE / 'instances'}")
    for name in revisions:
        current = (STATE / "instances" / name / "current").resolve()
        flows = len(list(current.glob("*/*/flows/*.yaml")))
        print(f"  {name}: revision {current.name[:12]}, {flows} flows, files in {current}")
    if promoted:
        print("promotion:   " + git("branch", "--list", "promote/*").strip())
    print(f"done in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
