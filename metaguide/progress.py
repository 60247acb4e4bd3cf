"""Progress bars for the steps that take more than a few seconds (embedding a data set,
replaying events): tqdm on stderr when it is a terminal; nothing when it is not (a log, a
pipe, a test) or after :func:`quiet` (``metaguide --quiet``)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

__all__ = ["bar", "enabled", "iterate", "quiet"]

T = TypeVar("T")
_quiet = False


def quiet(on: bool = True) -> None:
    """No progress output from here on (``--quiet``)."""
    global _quiet
    _quiet = on


def enabled() -> bool:
    return not _quiet and sys.stderr.isatty()


def bar(total: int | None, desc: str, unit: str = "it") -> Any:
    """A progress bar (a no-op one when progress is off); ``update(n)`` it, then ``close()``."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled(), leave=False)


def iterate(
    items: Iterable[T], desc: str, unit: str = "it", total: int | None = None
) -> Iterator[T]:
    """``items``, with a progress bar while they are consumed."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total, desc, unit) as progress:
        for item in items:
            yield item
            progress.update(1)
