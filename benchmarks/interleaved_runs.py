"""Benchmark configurations run in rounds: each one once per round, `repeats` rounds, so a
change in the machine's load touches every configuration alike."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

Key = TypeVar("Key", bound=Hashable)
Result = TypeVar("Result")


def interleaved(configs: dict[Key, Callable[[], Result]], repeats: int) -> dict[Key, list[Result]]:
    """Every configuration's results, in run order."""
    results: dict[Key, list[Result]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, run in configs.items():
            results[name].append(run())
    return results
