"""Compression that its requests can abandon: it stops between groups of windows once every request waiting
for it has gone away, so a shutdown (or the queue behind it) never waits on a memory nobody will read."""

from __future__ import annotations

from collections.abc import Callable

import torch

from selfctx.compress import CompressedLM, Memory, MemoryInfo


class Abandoned(Exception):
    """Every request waiting for this compression went away before it finished."""


@torch.no_grad()
def compress_unless_abandoned(
    lm: CompressedLM, ids: list[int], ratio: int, abandoned: Callable[[], bool]
) -> Memory:
    """`lm.compress(ids, ratio=ratio)`, asking `abandoned()` before it starts and after each group of windows
    (`CompressedLM.group_tokens` tokens); raises Abandoned when it says so. The memory is the same as
    `lm.compress` makes (tests/serve check it)."""
    if abandoned():
        raise Abandoned
    if ratio == 1:  # nothing to compress: the context is read raw
        return lm.compress(ids, ratio=1)

    def check(_start: int, _hidden: torch.Tensor) -> None:
        if abandoned():
            raise Abandoned

    tensor = torch.tensor([ids], dtype=torch.long, device=lm.device)  # (1, N)
    layers, tail = lm.compress_ids(tensor, ratio, on_hidden=check)
    info = MemoryInfo(
        model_name=lm.name,
        adapter=lm.battery.adapter_name(ratio),
        ratio=ratio,
        window=lm.window,
        n_context_tokens=len(ids),
        num_layers=len(lm.parts.layers),
        num_kv_heads=lm.parts.num_kv_heads,
        head_dim=lm.parts.head_dim,
        dtype=str(lm.parts.embed_tokens.weight.dtype).replace("torch.", ""),
        sink=min(lm.sink, len(ids)),
    )
    return Memory(layers=layers, tail_ids=tail[0], info=info)
