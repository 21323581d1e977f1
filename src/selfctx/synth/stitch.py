"""Stitch one document's chunks into a long sample (for --from-docs), measured within +-1% of a target.

The context is a contiguous run of the document's own chunks in their order (the gold chunks inside it),
grown around the gold chunks while it fits, then padded with chunks of OTHER documents as distractors, placed
before and after the document's run. The rendered chat has the six-task format (`Passage i:` headers, then
instruction and question; see selfctx.synth.assemble), so its token count is additive over the pieces; the
result is measured anyway and one padding piece is re-truncated if the tokenizer disagrees.

Only the document's trailing chunk or a distractor is ever truncated (a prefix cut at a sentence end), so
the document text stays in order and the gold chunks stay whole.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from selfctx.errors import SelfctxError
from selfctx.synth.assemble import (
    _GOLD,
    _adjust,
    _header_costs,
    _Piece,
    _Plan,
    _tail_tokens,
    fill_gold,
    passage_tokens,
    truncate_to_fit,
)
from selfctx.synth.lengths import tolerance_window
from selfctx.synth.tokens import TokenCounter, chat_overhead
from selfctx.synth.types import Passage, Sample


@dataclass(frozen=True)
class DocDraft:
    """A --from-docs item before stitching: gold chunks (indices into its document's chunks) and the QA."""

    task: str
    doc_id: str
    gold: tuple[int, ...]
    instruction: str
    question: str
    answer: str
    extra: dict[str, Any] = field(default_factory=dict)


def stitch_sample(
    draft: DocDraft,
    doc_chunks: Sequence[Passage],
    others: Sequence[Passage],
    target_tokens: int,
    counter: TokenCounter,
    rng: random.Random,
    *,
    bucket: str,
    model: str,
    seed: int,
) -> Sample:
    """The draft's document run (plus distractors from `others`) as a chat sample of ~target_tokens."""
    lo, hi = tolerance_window(target_tokens, bucket)
    headers = _header_costs(counter)
    costs = [passage_tokens(p, counter) for p in doc_chunks]
    first, last = min(draft.gold), max(draft.gold)
    parts = [draft.instruction.strip(), draft.question.strip(), draft.answer.strip()]
    guess = [len(doc_chunks) + len(others)] * len(draft.gold)  # widest position numbers: an upper bound
    n_placeholders = sum(len(_GOLD.findall(t)) for t in parts)
    fixed = chat_overhead(counter) + _tail_tokens(counter, *(fill_gold(t, guess) for t in parts))
    start, end = first, last + 1  # the document's run: doc_chunks[start:end]
    body = sum(costs[start:end])

    def total(n_distractors: int = 0, extra_tokens: int = 0) -> int:
        return fixed + headers.total(end - start + n_distractors) + body + extra_tokens

    if total() > hi:
        raise SelfctxError(
            f"a {draft.task} sample needs {total():,} tokens for its gold chunks and prompt, more than the "
            f"{target_tokens:,}-token target: choose a longer length or smaller chunks (chunk_tokens)"
        )
    margin = min(max(2 * n_placeholders, (hi - lo) // 4), (hi - lo) // 3)
    aim_lo, aim_hi = lo + margin, hi - margin

    # 1. Grow the document's own run, a whole chunk at a time, on a random side each step.
    sides = ["before", "after"]
    while total() < aim_lo and sides:
        side = rng.choice(sides)
        index = start - 1 if side == "before" else end
        if not 0 <= index < len(doc_chunks) or total(1, costs[index]) > aim_hi:
            sides.remove(side)
            continue
        body += costs[index]
        start, end = (index, end) if side == "before" else (start, index + 1)

    # 2. Pad with other documents' chunks; the last one that would overshoot is cut to fit.
    padding: list[_Piece] = []
    tail_piece: _Piece | None = None  # the document's next chunk, cut short (only when nothing else fits)
    order = list(range(len(others)))
    rng.shuffle(order)
    pad_tokens = 0
    for i in order:
        if total(len(padding), pad_tokens) >= aim_lo:
            break
        text, cost = others[i].text.strip(), passage_tokens(others[i], counter)
        now = total(len(padding) + 1, pad_tokens)
        if now + cost <= aim_hi:
            padding.append(_Piece(text, cost, others[i].id, text, cost))
            pad_tokens += cost
            continue
        fit = truncate_to_fit(text, counter, aim_lo - now, aim_hi - now) or truncate_to_fit(
            text, counter, lo - now, hi - now
        )
        if fit is not None:
            padding.append(_Piece(fit[0], fit[1], others[i].id, text, cost))
            pad_tokens += fit[1]
            break
    now = total(len(padding), pad_tokens)
    if now < lo and end < len(doc_chunks):  # no distractor fits the gap: cut the document's next chunk
        room = total(len(padding) + 1, pad_tokens)
        text = doc_chunks[end].text.strip()
        fit = truncate_to_fit(text, counter, lo - room, hi - room)
        if fit is not None:
            tail_piece = _Piece(fit[0], fit[1], doc_chunks[end].id, text, costs[end])
            now = room + fit[1]
    if now < lo:
        raise SelfctxError(
            f"cannot fill a {draft.task} sample of document {draft.doc_id!r} to {target_tokens:,} tokens "
            f"+-1% (reached {now:,}): add documents or choose a shorter length"
        )

    # 3. Order: distractors before, the document's run (in order), distractors after.
    rng.shuffle(padding)
    n_before = rng.randint(0, len(padding))
    run = [_Piece(p.text.strip(), c, p.id, p.text.strip(), c, True) for p, c in
           zip(doc_chunks[start:end], costs[start:end], strict=True)]  # fmt: skip
    if tail_piece is not None:
        run.append(tail_piece)
    pieces = padding[:n_before] + run + padding[n_before:]
    gold = tuple(n_before + g - start + 1 for g in draft.gold)
    instruction, question, answer = (fill_gold(t, gold) for t in parts)
    planned = fixed - _tail_tokens(counter, *(fill_gold(t, guess) for t in parts))
    planned += headers.total(len(pieces)) + sum(p.tokens for p in pieces)
    planned += _tail_tokens(counter, instruction, question, answer)
    plan = _Plan(pieces, gold, instruction, question, answer, planned, (lo, hi), False)
    for _ in range(4):
        messages = (
            {"role": "user", "content": plan.user_text()},
            {"role": "assistant", "content": plan.answer},
        )
        measured = counter.count_chat(messages)
        if lo <= measured <= hi:
            break
        _adjust(plan, measured, counter)  # re-cut one padding piece (never the document's run)
    else:
        raise RuntimeError(f"sample count {measured:,} stays outside [{lo:,}, {hi:,}] after corrections")
    return Sample(
        messages=messages,
        task=draft.task,
        bucket=bucket,
        token_count=measured,
        target_tokens=target_tokens,
        n_distractors=len(padding),
        gold_positions=gold,
        nouns=(draft.doc_id,),
        seed=seed,
        model=model,
        extra={
            **draft.extra,
            "doc_id": draft.doc_id,
            "doc_chunks": [start, end + (1 if tail_piece is not None else 0)],
            "gold_chunks": list(draft.gold),
            "truncated_pieces": sum(1 for p in pieces if p.truncated),
        },
    )
