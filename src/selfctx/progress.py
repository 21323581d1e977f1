"""Progress bars with ETA for every long stage (tqdm), quiet when stderr is not a terminal unless asked."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap `iterable` in a tqdm bar (rate and ETA). SELFCTX_PROGRESS=0 silences it."""
    disable = os.environ.get("SELFCTX_PROGRESS", "1") == "0"
    yield from tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, dynamic_ncols=True)


def progress_bar(*, desc: str, total: int | None, unit: str = "it") -> tqdm:
    """A manual bar for work that advances in uneven steps (call .update(n))."""
    disable = os.environ.get("SELFCTX_PROGRESS", "1") == "0"
    return tqdm(desc=desc, total=total, unit=unit, disable=disable, dynamic_ncols=True)
