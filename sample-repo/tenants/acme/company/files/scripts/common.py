"""Helpers shared by every namespace below `company`."""


def greet(name: str) -> str:
    return f"hello, {name}"
