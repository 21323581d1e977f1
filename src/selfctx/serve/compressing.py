"""Compression that its requests can abandon: it stops between groups of windows once every request waiting
for it has gone away, so a shutdown (or the queue behind it) never waits on a memory nobody will read."""

from __future__ import annotations

from collections.abc import Callable

from selfctx.compress import CompressedLM, Memory


class Abandoned(Exception):
    """Every request waiting for this compression went away before it finished."""


def compress_unless_abandoned(
    lm: CompressedLM, ids: list[int], ratio: int, abandoned: Callable[[], bool]
) -> Memory:
    """`lm.compress(ids, ratio=ratio)`, asking `abandoned()` before it starts and after each group of windows
    (`CompressedLM.group_tokens` tokens); raises Abandoned when it says so."""

    def check() -> None:
        if abandoned():
            raise Abandoned

    check()
    return lm.compress(ids, ratio=ratio, between_groups=check)
