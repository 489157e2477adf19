"""Headwater: GitOps sync for Kestra-style orchestration."""

__version__ = "0.1.0"
