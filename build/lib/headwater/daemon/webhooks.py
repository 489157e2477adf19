"""Push webhooks: verify the sender, then say which branch was pushed (pure functions).

Accepted signatures, all checked with a constant-time compare against one shared secret:

- GitHub (and Gitea ≥ 1.19): ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``
- Gitea / Forgejo / Gogs: ``X-Gitea-Signature`` / ``X-Forgejo-Signature`` /
  ``X-Gogs-Signature: <hex HMAC-SHA256 of the body>``
- GitLab: ``X-Gitlab-Token: <the secret itself>``
- anything else: ``X-Headwater-Signature: sha256=<hex HMAC-SHA256 of the body>``

The forge is told by its event header (``X-GitHub-Event``, ``X-Gitlab-Event``,
``X-Gitea-Event``, ``X-Forgejo-Event``, ``X-Gogs-Event``); without one the request is a
generic trigger whose JSON body may name the branch (``{"ref": "refs/heads/dev"}``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

# (header, scheme): "hmac-prefixed" expects "sha256=<hex>", "hmac" a bare hex digest.
_SIGNATURES: tuple[tuple[str, str], ...] = (
    ("x-hub-signature-256", "hmac-prefixed"),
    ("x-forgejo-signature", "hmac"),
    ("x-gitea-signature", "hmac"),
    ("x-gogs-signature", "hmac"),
    ("x-gitlab-token", "token"),
    ("x-headwater-signature", "hmac-prefixed"),
)
_EVENTS: tuple[tuple[str, str], ...] = (
    ("x-github-event", "github"),
    ("x-gitlab-event", "gitlab"),
    ("x-forgejo-event", "forgejo"),
    ("x-gitea-event", "gitea"),
    ("x-gogs-event", "gogs"),
)
_PUSH_EVENTS = {
    "github": {"push"},
    "gitlab": {"push hook", "system hook"},
    "forgejo": {"push"},
    "gitea": {"push"},
    "gogs": {"push"},
}


class Rejected(Exception):
    """The request is refused with an HTTP status (401 signature, 400 body)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Event:
    """A verified webhook: the forge, its event, and the pushed branch.

    ``branch`` None with ``ignored`` None means "every instance" (a generic trigger without a
    ref); ``ignored`` says why nothing is triggered (a tag, a ping, another event).
    """

    forge: str
    event: str
    branch: str | None
    ignored: str | None = None


def sign(secret: bytes, body: bytes) -> str:
    """The ``sha256=<hex>`` value of X-Hub-Signature-256 / X-Headwater-Signature."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(headers: Mapping[str, str], body: bytes, secret: bytes) -> str:
    """The header that authenticated the request; Rejected(401) when none does.

    ``headers`` have lower-case names. The first signature header present decides.
    """
    for header, scheme in _SIGNATURES:
        value = headers.get(header)
        if value is None:
            continue
        given = value.strip().encode("latin-1", "replace")
        if scheme == "token":
            expected = secret
        else:
            digest = hmac.new(secret, body, hashlib.sha256).hexdigest().encode("ascii")
            expected = b"sha256=" + digest if scheme == "hmac-prefixed" else digest
            given = given.lower()
        if hmac.compare_digest(given, expected):
            return header
        raise Rejected(401, f"invalid {header} signature")
    raise Rejected(401, "missing signature")


def parse(headers: Mapping[str, str], body: bytes) -> Event:
    """What a verified request asks for; Rejected(400) for a body that is not a payload."""
    forge, event = "generic", ""
    for header, name in _EVENTS:
        if header in headers:
            forge, event = name, headers[header].strip()
            break
    if forge != "generic" and event.lower() not in _PUSH_EVENTS[forge]:
        return Event(forge, event, None, ignored=f"{event or 'unnamed'} event")
    payload = _payload(headers, body)
    if forge == "generic" and payload is None:
        return Event(forge, event, None)
    if not isinstance(payload, dict):
        raise Rejected(400, "the body is not a JSON object")
    if (
        forge == "gitlab"
        and event.lower() == "system hook"
        and payload.get("object_kind") != "push"
    ):
        return Event(forge, event, None, ignored=f"system hook {payload.get('object_kind')!r}")
    ref = payload.get("ref")
    if ref is None and forge == "generic":
        branch = payload.get("branch")
        if branch is None:
            return Event(forge, event, None)
        ref = f"refs/heads/{branch}"
    if not isinstance(ref, str) or not ref:
        raise Rejected(400, "the payload has no ref")
    if not ref.startswith("refs/heads/"):
        return Event(forge, event, None, ignored=f"{ref} is not a branch")
    return Event(forge, event, ref[len("refs/heads/") :])


def _payload(headers: Mapping[str, str], body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        text = body.decode("utf-8")
        form = headers.get("content-type", "").split(";")[0].strip()
        if form == "application/x-www-form-urlencoded" and text.startswith("payload="):
            text = parse_qs(text, errors="strict")["payload"][0]  # GitHub's form encoding
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError):
        raise Rejected(400, "the body is not valid JSON") from None
