"""Targets: where an instance's resources live (``base.Target``), and the embedded local one."""

from headwater.targets.base import SecretValues, Target
from headwater.targets.local import LocalTarget

__all__ = ["LocalTarget", "SecretValues", "Target"]
