"""Benchmarks: synthetic repositories, floors and the `make bench` runner."""
