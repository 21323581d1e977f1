"""Likelihood scoring through compressed memory: what lm-evaluation-harness-style evaluations ask of a model.

Both functions read a long input the way `CompressedLM.generate` does at inference, so a score measures the
same mechanism an answer would use:

- `score_continuations`: the context's full windows are compressed (ratio from the router unless forced);
  its raw tail and each continuation are read over that memory. One compression serves every continuation
  of the same context (multiple-choice answers share it).
- `sequence_logprob`: every token predicted from the memory of earlier windows plus its raw predecessors in
  its own window, the same readout as `CompressedLM.logits`, computed window group by window group so a long
  sequence never holds (tokens x vocabulary) logits at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from selfctx.compress.battery import memory_entries_for
from selfctx.compress.engine import KVCache, LayerMemory, cache_from_memory, empty_memory, extend
from selfctx.errors import SelfctxError

if TYPE_CHECKING:
    from selfctx.compress.model import CompressedLM

_LOGIT_CHUNK = 512  # positions per lm_head call when scoring long hidden-state runs


def _expand(cache: KVCache, batch: int) -> KVCache:
    return KVCache(
        [k.expand(batch, -1, -1, -1) for k in cache.keys],
        [v.expand(batch, -1, -1, -1) for v in cache.values],
        cache.valid.expand(batch, -1),
        cache.next_position.expand(batch),
    )


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, V) logits and (T,) targets -> (T,) log-probabilities and (T,) whether each target is the argmax."""
    logprobs = F.log_softmax(logits.float(), dim=-1)
    return logprobs.gather(-1, targets[:, None])[:, 0], logprobs.argmax(-1) == targets


def middle_truncate(ids: Sequence[int], keep: int) -> list[int]:
    """The first and last halves of `keep` tokens (LongBench's truncation), or all ids if they fit."""
    if len(ids) <= keep:
        return list(ids)
    return [*ids[: keep // 2], *ids[len(ids) - (keep - keep // 2) :]]


@torch.no_grad()
def score_continuations(
    lm: CompressedLM,
    context: Sequence[int],
    continuations: Sequence[Sequence[int]],
    *,
    ratio: int | None = None,
    budget: int = 128,
    batch_size: int = 8,
) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), whether greedy decoding gives the continuation) for each.

    `context` must hold at least one token (lm-eval puts BOS/EOS there for an empty context). Unless forced,
    the ratio is routed from the context length and `budget` tokens after it (more if a continuation is
    longer), so a score does not depend on which other continuations share the call."""
    if not context:
        raise SelfctxError("scoring needs at least one context token: put BOS or EOS before the continuation")
    if any(len(c) == 0 for c in continuations):
        raise SelfctxError("an empty continuation has no likelihood to score: drop it or add a token")
    if not continuations:
        return []
    longest = max(len(c) for c in continuations)
    chosen = ratio if ratio is not None else lm.route_for(len(context), max(budget, longest)).ratio
    # The last context token stays raw so the first continuation token always has a raw predecessor.
    memory = lm.compress(list(context[:-1]), ratio=chosen, chat=False)
    prefix = memory.tail_ids.tolist() + [int(context[-1])]
    if memory.num_entries + len(prefix) + longest > lm.native_context:
        raise SelfctxError(
            f"memory ({memory.num_entries}) + raw tail ({len(prefix)}) + continuation ({longest}) exceed the "
            f"native context {lm.native_context}: force a higher ratio"
        )
    device = lm.device
    adapter = lm.battery.adapter_for(chosen) if chosen > 1 else None
    layers = [LayerMemory(m.keys.to(device), m.values.to(device)) for m in memory.layers]
    cache = cache_from_memory(lm.parts, layers, 1)
    prefix_ids = torch.tensor([prefix], dtype=torch.long, device=device)
    first_logits, cache = extend(lm.parts, cache, prefix_ids, torch.ones_like(prefix_ids), adapter=adapter)
    assert first_logits is not None
    first = F.log_softmax(first_logits[0].float(), dim=-1)  # predicts every continuation's first token
    results: list[tuple[float, bool]] = []
    for start in range(0, len(continuations), batch_size):
        group = [list(c) for c in continuations[start : start + batch_size]]
        rest = [c[:-1] for c in group]  # fed tokens; each predicts the next one of its continuation
        width = max(len(r) for r in rest)
        later: torch.Tensor | None = None
        if width:
            ids = torch.tensor([r + [0] * (width - len(r)) for r in rest], dtype=torch.long, device=device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rest], device=device)
            shared = _expand(cache, len(group))
            later, _ = extend(lm.parts, shared, ids, mask, logits_for="all", adapter=adapter)
        for row, tokens in enumerate(group):
            total = float(first[tokens[0]])
            greedy = int(first.argmax()) == tokens[0]
            if len(tokens) > 1:
                assert later is not None
                targets = torch.tensor(tokens[1:], device=device)
                logprobs, is_top = _token_logprobs(later[row, : len(tokens) - 1], targets)
                total += float(logprobs.sum())
                greedy = greedy and bool(is_top.all())
            results.append((total, greedy))
    return results


@torch.no_grad()
def sequence_logprob(lm: CompressedLM, ids: Sequence[int], *, ratio: int | None = None) -> float:
    """Sum of log p(ids[t] | ids[:t]) over t >= 1 (the first token is only conditioned on)."""
    if len(ids) < 2:
        return 0.0
    chosen = ratio if ratio is not None else lm.route_for(len(ids), 1).ratio
    # the furthest position any token takes: raw input, or memory + one window (+ its memory tokens)
    reach = len(ids) if chosen == 1 else memory_entries_for(len(ids), lm.window, chosen, lm.sink) + lm.window
    if reach > lm.native_context:
        raise SelfctxError(
            f"{len(ids)} tokens at ratio {chosen} reach position {reach}, past the native context "
            f"{lm.native_context}: force a higher ratio or let the router pick"
        )
    device = lm.device
    tensor = torch.tensor([list(ids)], dtype=torch.long, device=device)
    total = torch.zeros((), dtype=torch.float64, device=device)

    def add(start: int, hidden: torch.Tensor) -> None:  # normed hidden (1, T, D): positions start..
        nonlocal total
        for offset in range(0, hidden.shape[1], _LOGIT_CHUNK):
            first = start + offset
            # these positions predict ids[first+1 .. last]; the sequence's last token predicts nothing
            last = min(first + _LOGIT_CHUNK, start + hidden.shape[1], len(ids) - 1)
            if last <= first:
                break
            logits = lm.parts.lm_head(hidden[0, offset : offset + last - first])
            total += _token_logprobs(logits, tensor[0, first + 1 : last + 1])[0].double().sum()

    if chosen == 1:
        memory, tail = empty_memory(lm.parts, 1, lm.parts.embed_tokens.weight), tensor
        adapter = None
    else:
        memory, tail = lm.compress_ids(tensor, chosen, on_hidden=add)
        adapter = lm.battery.adapter_for(chosen)
    cache = cache_from_memory(lm.parts, memory, 1)
    start = len(ids) - tail.shape[1]
    for offset in range(0, tail.shape[1], _LOGIT_CHUNK):  # raw tokens in chunks: the cache carries the rest
        piece = tail[:, offset : offset + _LOGIT_CHUNK]
        ones = torch.ones_like(piece)
        logits, cache = extend(lm.parts, cache, piece, ones, logits_for="all", adapter=adapter)
        assert logits is not None
        first = start + offset
        n = min(piece.shape[1], len(ids) - 1 - first)  # the sequence's last token predicts nothing
        if n > 0:
            total += _token_logprobs(logits[0, :n], tensor[0, first + 1 : first + 1 + n])[0].double().sum()
    return float(total)
