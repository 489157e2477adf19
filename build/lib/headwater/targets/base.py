"""The target protocol: where an instance's resources live.

The engine talks to every target through these few methods and never learns which one it has.
A target is read back as a ``State`` (resource key -> Resource with a content hash) and written
with ``apply``, which makes it hold exactly the desired state of one revision, all or nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from headwater.resources import Resource, ResourceKey, State

SecretValues = Mapping[tuple[str, str], Mapping[str, str]]
"""Secret values by ``(tenant, namespace)`` then secret name; they only ever reach a target."""


class Target(Protocol):
    """An instance's resources, read back with hashes and replaced one revision at a time."""

    def current_revision(self) -> str | None:
        """The revision the target holds now, or None when nothing was ever applied."""
        ...

    def inventory(self) -> State:
        """Every resource the target actually holds, with the hash of what is there now.

        Content is not included (``Resource.content`` is None): call ``read`` for the resources
        whose content a plan needs to show. Secrets carry a keyed hash, never a value.
        """
        ...

    def read(self, key: ResourceKey) -> bytes | None:
        """The content the target holds for one resource; None if absent or a secret."""
        ...

    def apply(
        self, revision: str, desired: Mapping[ResourceKey, Resource], secrets: SecretValues
    ) -> None:
        """Make the target hold exactly ``desired`` for ``revision``, all or nothing.

        ``desired`` holds every resource: content bytes for flow/file/config/kv resources;
        kind ``secret`` resources have no content and take their value from
        ``secrets[(tenant, namespace)][name]``. Raises TargetError, leaving the target as it
        was, when anything is wrong.
        """
        ...

    def revisions(self) -> list[str]:
        """Revisions still materialised on the target, newest first."""
        ...

    def activate(self, revision: str) -> None:
        """Publish a revision that is still materialised (fast rollback); TargetError if not."""
        ...
