from collections.abc import Callable
from typing import Any

def compose(
    text: str, max_depth: int, max_nodes: int, plain: bool, resolve: Callable[[str], Any], /
) -> tuple[Any, dict[tuple[str | int, ...], tuple[int, int]], tuple[tuple[tuple[int, int], str], ...], bool] | None: ...
