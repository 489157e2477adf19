"""The compiled part of the package; everything else is in pyproject.toml.

``headwater._compose`` (yamlio's fast path) needs a C compiler and libyaml's headers (Debian:
libyaml-dev). It is optional: without them the package installs, and loads YAML with the
Python composer alone, to the same results.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "headwater._compose",
            sources=["src/headwater/_compose.c"],
            libraries=["yaml"],
            optional=True,
        )
    ]
)
