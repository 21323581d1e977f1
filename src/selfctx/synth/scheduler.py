"""Runs many builders at once and hands their pending requests to the backend in large batches.

A builder is a generator (see tasks.base): it yields requests and receives completions. The scheduler keeps
`max_in_flight` builders going and calls `llm.generate` with every request pending at that moment (at least
the backend's preferred batch size whenever that many are available), so the backend never waits on the
pipeline. Outcomes are keyed by the builder's key, so results do not depend on the order calls finish.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from selfctx.llm.base import LLM, ChatRequest, Completion

BuilderGen = Any  # Generator[list[ChatRequest], list[Completion], Outcome]


def run_builders(
    llm: LLM,
    next_builder: Callable[[], tuple[Hashable, BuilderGen] | None],
    on_done: Callable[[Hashable, Any], None],
    *,
    max_in_flight: int | None = None,
    on_batch: Callable[[list[Completion]], None] | None = None,
) -> None:
    """Drive `builders` to completion; `on_done(key, outcome)` is called as each finishes.

    `next_builder()` returns the next (key, builder) to start, or None when nothing is to start right now; it
    is asked again after every batch, so a caller decides what to start from the outcomes seen so far. The
    run ends when nothing is in flight and `next_builder()` returns None.
    """
    batch = max(1, llm.preferred_batch_size)
    limit = max_in_flight or max(4 * batch, 16)
    waiting: dict[Hashable, tuple[BuilderGen, list[ChatRequest]]] = {}

    def advance(key: Hashable, gen: BuilderGen, sent: list[Completion] | None) -> None:
        try:
            requests = next(gen) if sent is None else gen.send(sent)
        except StopIteration as stop:
            on_done(key, stop.value)
            return
        if not requests:
            raise RuntimeError(f"builder {key!r} yielded no requests")
        waiting[key] = (gen, list(requests))

    while True:
        while len(waiting) < limit:
            item = next_builder()
            if item is None:
                break
            advance(*item, None)
        if not waiting:
            return
        keys = list(waiting)
        flat = [r for k in keys for r in waiting[k][1]]
        completions = llm.generate(flat)
        if on_batch is not None:
            on_batch(completions)
        at = 0
        for key in keys:
            gen, requests = waiting.pop(key)
            advance(key, gen, completions[at : at + len(requests)])
            at += len(requests)
