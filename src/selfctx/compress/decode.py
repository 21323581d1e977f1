"""Batched decoding over one shared compressed memory, the one decoder of `CompressedLM.generate` and the
server: each row has its own max_tokens / temperature / top_p / seed / stop strings, and its text can stream
as it becomes final. Rows are the memory's raw tail + each row's prompt tokens, left-padded; finished rows
stop attending (mask 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from selfctx.compress.engine import LayerMemory, cache_from_memory, extend
from selfctx.errors import SelfctxError
from selfctx.sampling import eos_token_ids, sample_token

if TYPE_CHECKING:  # the model module calls this one
    from selfctx.compress.memory import Memory
    from selfctx.compress.model import CompressedLM


@dataclass
class DecodeRow:
    """One request's decoding state. `on_text(delta)` receives text as it becomes final."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    on_text: Callable[[str], None] | None = None
    cancelled: Callable[[], bool] | None = None
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""
    _emitted: int = 0

    @property
    def done(self) -> bool:
        return bool(self.finish_reason)


def _partial_stop(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string (held back in streams)."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                best = max(best, n)
                break
    return best


def _advance_text(row: DecodeRow, decoded: str) -> None:
    """Apply stop strings to the decoded text so far and emit the part that can no longer change."""
    hits = [i for i in (decoded.find(s) for s in row.stop if s) if i >= 0]
    if hits:
        decoded = decoded[: min(hits)]
        row.finish_reason = "stop"
    row.text = decoded
    final = row.done
    safe = len(decoded) if final else len(decoded) - _partial_stop(decoded, row.stop)
    if not final and decoded.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
        safe = min(safe, len(decoded) - 1)
    if safe > row._emitted and row.on_text is not None:
        row.on_text(decoded[row._emitted : safe])
    row._emitted = max(row._emitted, safe)


def _flush(row: DecodeRow) -> None:
    if row.on_text is not None and len(row.text) > row._emitted:
        row.on_text(row.text[row._emitted :])
    row._emitted = len(row.text)


@torch.no_grad()
def decode_rows(lm: CompressedLM, memory: Memory, rows: list[DecodeRow]) -> None:
    """Decode every row over `memory` as one batch; fills token_ids, text and finish_reason of each row. Text
    is followed step by step only for rows that stream or have stop strings; the others get it at the end."""
    tokenizer = lm.tokenizer
    follows_text = [bool(row.stop) or row.on_text is not None for row in rows]
    if tokenizer is None and any(follows_text):
        raise SelfctxError(
            "stop strings and streamed text need a tokenizer: load the model with its tokenizer"
        )
    device = lm.device
    tail = memory.tail_ids.tolist()
    sequences = [tail + row.prompt_ids for row in rows]
    width = max(len(s) for s in sequences)
    ids = torch.tensor([[0] * (width - len(s)) + s for s in sequences], dtype=torch.long, device=device)
    mask = torch.tensor(
        [[0] * (width - len(s)) + [1] * len(s) for s in sequences], dtype=torch.long, device=device
    )
    layers = [LayerMemory(m.keys.to(device), m.values.to(device)) for m in memory.layers]
    cache = cache_from_memory(lm.parts, layers, len(rows))
    adapter = lm.battery.adapter_for(memory.info.ratio) if memory.info.ratio > 1 else None
    logits, cache = extend(lm.parts, cache, ids, mask, adapter=adapter)
    generators = [
        torch.Generator(device=device).manual_seed(row.seed)
        if row.temperature > 0 and row.seed is not None
        else None
        for row in rows
    ]
    stops = eos_token_ids(tokenizer, lm.model.generation_config)
    for row in rows:
        if row.max_tokens <= 0:
            row.finish_reason = "length"
    steps = max(row.max_tokens for row in rows)
    for _ in range(steps):
        if all(row.done for row in rows):
            break
        assert logits is not None
        next_ids = []
        for b, row in enumerate(rows):
            if row.done:
                next_ids.append(0)
                continue
            if row.cancelled is not None and row.cancelled():
                row.finish_reason = "cancelled"
                next_ids.append(0)
                continue
            token = sample_token(logits[b], row.temperature, row.top_p, generators[b])
            next_ids.append(token)
            if token in stops:
                row.finish_reason = "stop"
                _flush(row)
                continue
            row.token_ids.append(token)
            if len(row.token_ids) >= row.max_tokens:
                row.finish_reason = "length"
            if follows_text[b]:
                assert tokenizer is not None
                _advance_text(row, str(tokenizer.decode(row.token_ids, skip_special_tokens=True)))
        if all(row.done for row in rows):
            break
        step = torch.tensor(next_ids, dtype=torch.long, device=device)[:, None]  # (B, 1)
        alive = torch.tensor([0 if row.done else 1 for row in rows], dtype=torch.long, device=device)[:, None]
        logits, cache = extend(lm.parts, cache, step, alive, adapter=adapter)
    for row, follows in zip(rows, follows_text, strict=True):
        if not follows and tokenizer is not None:
            row.text = str(tokenizer.decode(row.token_ids, skip_special_tokens=True))
        _flush(row)
