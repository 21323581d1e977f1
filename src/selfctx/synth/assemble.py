"""Assemble a long sample: context = shuffle(relevant passages + distractors), filled to a token target.

The user turn is

    Passage 1:\n<text>\n\nPassage 2:\n<text> ... \n\n<instruction>\n\n<question>

and the assistant turn is the answer. Every piece after the first starts with a newline and every passage
text is stripped, so under byte-level BPE (and the test counter) no token spans a piece boundary: the
sample's token count is exactly the chat template's fixed overhead plus the sum of per-piece counts. The
planner relies on that (passages carry `n_tokens`), `assemble_sample` then MEASURES the rendered chat sample
and corrects any difference, and `stream_sample` (for 10M-token samples) relies on it without re-tokenizing
and streams the text to a file. Tests check the additivity on the real tokenizer.

Fill: distractors (never sharing a relevant noun) are drawn in a random order from the sample's rng; the
first one that would overshoot is truncated at a sentence boundary (a word boundary if no sentence fits) so
the count lands within +-1% of the target and inside its bucket. Relevant passages are never truncated.
Infeasible targets fail at once with numbers, before any work.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from selfctx.errors import SelfctxError
from selfctx.synth.lengths import tolerance_window
from selfctx.synth.tokens import TokenCounter, chat_overhead
from selfctx.synth.types import Passage, Sample, SampleDraft
from selfctx.synth.writer import sample_row

PART_SEPARATOR = "\n\n"
_GOLD = re.compile(r"\{gold\[(\d+)\]\}")
_SENTENCE_END = re.compile(r"[.!?…][\"')\]»”’]*(?=\s)")
_WORD_END = re.compile(r"\S(?=\s)")


def passage_header(index: int) -> str:
    """The header before the passage at 1-based `index` (the first has no separator before it)."""
    return ("" if index == 1 else PART_SEPARATOR) + f"Passage {index}:\n"


def fill_gold(text: str, gold_positions: Sequence[int]) -> str:
    """Replace `{gold[i]}` by the 1-based context position of relevant passage i (other braces untouched)."""

    def replace(match: re.Match[str]) -> str:
        i = int(match.group(1))
        if i >= len(gold_positions):
            raise ValueError(
                f"placeholder {match.group(0)} but the draft has {len(gold_positions)} relevant passages"
            )
        return str(gold_positions[i])

    return _GOLD.sub(replace, text)


def passage_tokens(passage: Passage, counter: TokenCounter) -> int:
    """Tokens of the passage's stripped text: its recorded n_tokens when the text is already stripped."""
    text = passage.text.strip()
    if text == passage.text and passage.n_tokens > 0:
        return passage.n_tokens
    return counter.count(text)


def _pool_costs(passages: Sequence[Passage], counter: TokenCounter) -> list[int]:
    """passage_tokens for many passages, recounting unstripped ones in one batch."""
    costs = [p.n_tokens if p.n_tokens > 0 and p.text == p.text.strip() else -1 for p in passages]
    redo = [i for i, c in enumerate(costs) if c < 0]
    for i, n in zip(redo, counter.count_batch([passages[i].text.strip() for i in redo]), strict=True):
        costs[i] = n
    return costs


def normalize_pool(passages: Sequence[Passage], counter: TokenCounter) -> list[Passage]:
    """Strip passage texts and recount those that changed, once per pool (assembly then trusts n_tokens)."""
    costs = _pool_costs(passages, counter)
    return [
        p if p.text == p.text.strip() and p.n_tokens == c else replace(p, text=p.text.strip(), n_tokens=c)
        for p, c in zip(passages, costs, strict=True)
    ]


class _HeaderCosts:
    """Token counts of passage headers by position, with prefix sums (headers depend only on position)."""

    def __init__(self, counter: TokenCounter) -> None:
        self._counter = counter
        self._prefix = [0]  # _prefix[n] = tokens of headers 1..n

    def _ensure(self, n: int) -> None:
        while len(self._prefix) <= n:
            start = len(self._prefix)
            stop = min(max(n + 1, 2 * start), start + 2048)  # small batches: Encoding objects are heavy
            counts = self._counter.count_batch([passage_header(i) for i in range(start, stop)])
            for c in counts:
                self._prefix.append(self._prefix[-1] + c)

    def cost(self, index: int) -> int:
        self._ensure(index)
        return self._prefix[index] - self._prefix[index - 1]

    def total(self, n: int) -> int:
        self._ensure(n)
        return self._prefix[n]


def _header_costs(counter: TokenCounter) -> _HeaderCosts:
    cached = getattr(counter, "_selfctx_header_costs", None)
    if isinstance(cached, _HeaderCosts):
        return cached
    costs = _HeaderCosts(counter)
    with contextlib.suppress(AttributeError):
        counter._selfctx_header_costs = costs  # type: ignore[attr-defined]
    return costs


def truncate_to_fit(text: str, counter: TokenCounter, lo: int, hi: int) -> tuple[str, int] | None:
    """The longest prefix of `text` ending at a sentence end (else a word end) with lo <= tokens <= hi."""
    if hi <= 0:
        return None
    for boundary in (_SENTENCE_END, _WORD_END):
        ends = [m.end() for m in boundary.finditer(text)] + [len(text)]
        # Prefix counts are (nearly) monotone in the cut point: binary search the last cut with count <= hi.
        low, high, best = 0, len(ends) - 1, None
        while low <= high:
            mid = (low + high) // 2
            n = counter.count(text[: ends[mid]])
            if n <= hi:
                best, low = (text[: ends[mid]], n), mid + 1
            else:
                high = mid - 1
        if best is not None and best[1] >= lo:
            return best
    return None


@dataclass
class _Piece:
    """One passage in the context: its text (possibly truncated) and token count."""

    text: str
    tokens: int
    passage_id: str
    full_text: str
    full_tokens: int
    relevant: bool = False

    @property
    def truncated(self) -> bool:
        return len(self.text) < len(self.full_text)


@dataclass
class _Plan:
    pieces: list[_Piece]  # in context order
    gold_positions: tuple[int, ...]
    instruction: str
    question: str
    answer: str
    tokens: int  # planned count of the whole chat sample (overhead + headers + pieces + tail + answer)
    window: tuple[int, int]
    repeated: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def user_parts(self) -> Iterator[str]:
        for i, piece in enumerate(self.pieces, start=1):
            yield passage_header(i)
            yield piece.text
        for part in (self.instruction, self.question):
            if part:
                yield PART_SEPARATOR
                yield part

    def user_text(self) -> str:
        return "".join(self.user_parts())


def _depth_slots(depths: Sequence[float], n: int) -> list[int]:
    """Slots (0-based) for relevant passages at relative depths; collisions move to the nearest free slot."""
    taken: set[int] = set()
    slots = []
    for depth in depths:
        want = round(depth * (n - 1))
        for step in range(n):
            found = next((s for s in (want - step, want + step) if 0 <= s < n and s not in taken), None)
            if found is not None:
                break
        assert found is not None
        taken.add(found)
        slots.append(found)
    return slots


def _tail_tokens(counter: TokenCounter, instruction: str, question: str, answer: str) -> int:
    parts = [PART_SEPARATOR + p for p in (instruction, question) if p] + [answer]
    return sum(counter.count_batch(parts))


def minimum_tokens(draft: SampleDraft, pool_size: int, counter: TokenCounter) -> int:
    """The fewest tokens a sample of `draft` can have: its relevant passages, their headers and the prompt,
    with no distractor (drawing a target, a length range starts above it)."""
    k = len(draft.relevant)
    instruction, question, answer = draft.instruction.strip(), draft.question.strip(), draft.answer.strip()
    # Placeholders hold positions not known yet: estimate with the widest plausible number, fix up later.
    guess = [pool_size + k] * k
    tail_estimate = _tail_tokens(
        counter, fill_gold(instruction, guess), fill_gold(question, guess), fill_gold(answer, guess)
    )
    relevant = sum(passage_tokens(p, counter) for p in draft.relevant)
    return chat_overhead(counter) + relevant + tail_estimate + _header_costs(counter).total(k)


def _plan(
    draft: SampleDraft,
    pool: Sequence[Passage],
    target_tokens: int,
    counter: TokenCounter,
    rng: random.Random,
    *,
    depths: Sequence[float] | None,
    allow_repeat: bool,
    bucket: str | None,
) -> _Plan:
    if not draft.relevant:
        raise ValueError(f"draft for task {draft.task!r} has no relevant passages")
    k = len(draft.relevant)
    if depths is not None:
        if len(depths) != k:
            raise SelfctxError(
                f"{len(depths)} depths given for {k} relevant passages: give one depth per passage"
            )
        if any(not 0.0 <= d <= 1.0 for d in depths):
            raise SelfctxError(f"depths {list(depths)} must lie between 0.0 (start) and 1.0 (end)")
    lo, hi = tolerance_window(target_tokens, bucket)
    headers = _header_costs(counter)
    overhead = chat_overhead(counter)
    instruction, question, answer = draft.instruction.strip(), draft.question.strip(), draft.answer.strip()

    relevant = [
        _Piece(
            p.text.strip(), passage_tokens(p, counter), p.id, p.text.strip(), passage_tokens(p, counter), True
        )
        for p in draft.relevant
    ]
    if any(not piece.text for piece in relevant):
        raise ValueError(f"draft for task {draft.task!r} has an empty relevant passage")
    n_placeholders = sum(len(_GOLD.findall(t)) for t in (instruction, question, answer))
    minimum = minimum_tokens(draft, len(pool), counter)
    if minimum > hi:
        raise SelfctxError(
            f"target {target_tokens:,} tokens is smaller than the relevant passages + prompt "
            f"({minimum:,} tokens) of this {draft.task} sample: choose a longer length"
        )

    excluded_nouns = {n.strip().lower() for n in draft.nouns} | {
        p.noun.strip().lower() for p in draft.relevant
    }
    excluded_ids = {p.id for p in draft.relevant}
    eligible = [
        p
        for p in pool
        if p.noun.strip().lower() not in excluded_nouns and p.id not in excluded_ids and p.text.strip()
    ]
    costs = _pool_costs(eligible, counter)
    capacity = sum(costs) + headers.total(k + len(eligible)) - headers.total(k)
    if minimum < lo:
        if not eligible:
            raise SelfctxError(
                f"no passage in the pool can be a distractor for a {draft.task} sample about "
                f"{', '.join(sorted(excluded_nouns))} (all share its nouns or are empty): "
                "grow the pool with --pool-size"
            )
        if minimum + capacity < lo and not allow_repeat:
            raise SelfctxError(
                f"the pool holds {capacity:,} tokens of usable distractors; a {target_tokens:,}-token sample "
                f"needs {lo - minimum:,}: grow the pool with --pool-size or pass --allow-repeat"
            )

    # Aim at the middle half of the window (counts land near the target, not on the window's edge); the
    # margin also absorbs the placeholder estimate's error. The full window is the fallback.
    margin = min(max(2 * n_placeholders, (hi - lo) // 4), (hi - lo) // 3)
    aim_lo, aim_hi = lo + margin, hi - margin
    chosen: list[_Piece] = []
    total = minimum
    repeated = False

    def candidates() -> Iterator[int]:
        nonlocal repeated
        order = list(range(len(eligible)))
        while True:
            rng.shuffle(order)
            yield from order
            if not allow_repeat:
                return
            repeated = True

    stream = candidates()
    # A bound on the loop (drops can undo adds): never hang, whatever the pool looks like.
    mean_cost = max(1, sum(costs) // max(1, len(costs)))
    max_steps = 3 * (target_tokens // mean_cost + len(eligible)) + 100
    steps = 0
    while total < aim_lo:
        steps += 1
        idx = next(stream, None) if steps <= max_steps else None
        if idx is None:
            if total >= lo:  # short of the aim, inside the window
                break
            raise SelfctxError(
                f"cannot fill a {draft.task} sample to {target_tokens:,} tokens +-1% from this pool (reached "
                f"{total:,}): grow the pool with --pool-size, pass --allow-repeat, or choose another length"
            )
        passage, cost = eligible[idx], costs[idx]
        text = passage.text.strip()
        header = headers.cost(k + len(chosen) + 1)
        if total + header + cost <= aim_hi:
            chosen.append(_Piece(text, cost, passage.id, text, cost))
            total += header + cost
            continue
        fit = truncate_to_fit(text, counter, aim_lo - total - header, aim_hi - total - header)
        if fit is None:  # the aim is narrower than the window: any count inside the window will do
            fit = truncate_to_fit(text, counter, lo - total - header, hi - total - header)
        if fit is not None:
            chosen.append(_Piece(fit[0], fit[1], passage.id, text, cost))
            total += header + fit[1]
            break
        if chosen:  # the gap is smaller than this passage's first word: free room and go on
            dropped = chosen.pop()
            total -= headers.cost(k + len(chosen) + 1) + dropped.tokens

    n = k + len(chosen)
    slots = _depth_slots(depths, n) if depths is not None else rng.sample(range(n), k)
    rng.shuffle(chosen)  # so the truncated distractor is not always the last one
    pieces: list[_Piece | None] = [None] * n
    for slot, piece in zip(slots, relevant, strict=True):
        pieces[slot] = piece
    fill = iter(chosen)
    ordered = [p if p is not None else next(fill) for p in pieces]
    gold = tuple(s + 1 for s in slots)
    instruction, question, answer = (fill_gold(t, gold) for t in (instruction, question, answer))
    planned = (
        overhead
        + headers.total(n)
        + sum(p.tokens for p in ordered)
        + _tail_tokens(counter, instruction, question, answer)
    )
    plan = _Plan(ordered, gold, instruction, question, answer, planned, (lo, hi), repeated)
    if not lo <= planned <= hi:
        _adjust(plan, planned, counter)
    return plan


def _adjust(plan: _Plan, measured: int, counter: TokenCounter) -> None:
    """Re-truncate one distractor so that `measured` (the sample's count) moves into the window."""
    lo, hi = plan.window
    distractors = sorted(
        (p for p in plan.pieces if not p.relevant), key=lambda p: (not p.truncated, -p.full_tokens)
    )
    for piece in distractors:
        # Counts are additive, so the piece must change by (window - measured).
        want_lo, want_hi = piece.tokens + lo - measured, piece.tokens + hi - measured
        if want_hi <= 0 or want_lo > piece.full_tokens:
            continue
        fit = truncate_to_fit(piece.full_text, counter, max(want_lo, 1), min(want_hi, piece.full_tokens))
        if fit is None:
            continue
        plan.tokens = measured + fit[1] - piece.tokens
        piece.text, piece.tokens = fit
        return
    raise RuntimeError(
        f"cannot bring a sample of {measured:,} tokens into [{lo:,}, {hi:,}] by truncating one distractor"
    )


def _metadata(
    draft: SampleDraft,
    plan: _Plan,
    token_count: int,
    target_tokens: int,
    *,
    model: str,
    seed: int,
    bucket: str,
) -> dict[str, Any]:
    return {
        "task": draft.task,
        "bucket": bucket,
        "token_count": token_count,
        "target_tokens": target_tokens,
        "n_distractors": sum(1 for p in plan.pieces if not p.relevant),
        "gold_positions": plan.gold_positions,
        "nouns": tuple(draft.nouns),
        "seed": seed,
        "model": model,
        "repeated_distractors": plan.repeated,
        "extra": {**draft.extra, "truncated_distractors": sum(1 for p in plan.pieces if p.truncated)},
    }


def assemble_sample(
    draft: SampleDraft,
    pool: Sequence[Passage],
    target_tokens: int,
    counter: TokenCounter,
    rng: random.Random,
    *,
    depths: Sequence[float] | None = None,
    allow_repeat: bool = False,
    model: str,
    seed: int,
    bucket: str,
) -> Sample:
    """Build one chat sample whose MEASURED token count is within +-1% of target_tokens and in `bucket`.

    `rng` should be derived per sample (e.g. from run seed, task and index) so that samples do not share one
    shuffle pattern. `depths` (one per relevant passage, 0.0 = first, 1.0 = last) fix positions for evals.
    """
    plan = _plan(
        draft, pool, target_tokens, counter, rng, depths=depths, allow_repeat=allow_repeat, bucket=bucket
    )
    lo, hi = plan.window
    for _ in range(4):
        messages = (
            {"role": "user", "content": plan.user_text()},
            {"role": "assistant", "content": plan.answer},
        )
        measured = counter.count_chat(messages)
        if lo <= measured <= hi:
            meta = _metadata(draft, plan, measured, target_tokens, model=model, seed=seed, bucket=bucket)
            return Sample(messages=messages, **meta)
        _adjust(plan, measured, counter)  # the tokenizer merged across a boundary: correct and re-measure
    raise RuntimeError(f"sample count {measured:,} stays outside [{lo:,}, {hi:,}] after corrections")


@dataclass(frozen=True)
class StreamedSample:
    """What `stream_sample` wrote: the sample's metadata (as in Sample.to_json, without messages)."""

    metadata: dict[str, Any]
    chars_written: int


def stream_sample(
    draft: SampleDraft,
    pool: Sequence[Passage],
    target_tokens: int,
    counter: TokenCounter,
    rng: random.Random,
    out: TextIO,
    *,
    depths: Sequence[float] | None = None,
    allow_repeat: bool = False,
    model: str,
    seed: int,
    bucket: str,
    fmt: str = "jsonl",
) -> StreamedSample:
    """assemble_sample for huge samples: streams the sample to `out` piece by piece, never whole in memory.

    fmt="jsonl" writes one JSON line in the dataset's row format (writer.sample_row: messages + metadata);
    fmt="text" writes only the user turn. The token count is the planned one, exact by additivity of the
    pieces (see module doc), with no re-tokenization: assembly costs less than one tokenizer pass.
    """
    if fmt not in ("jsonl", "text"):
        raise ValueError(f"fmt must be 'jsonl' or 'text', not {fmt!r}")
    plan = _plan(
        draft, pool, target_tokens, counter, rng, depths=depths, allow_repeat=allow_repeat, bucket=bucket
    )
    meta = _metadata(draft, plan, plan.tokens, target_tokens, model=model, seed=seed, bucket=bucket)
    meta["extra"]["token_count_method"] = "additive"
    written = 0

    def write(chunk: str) -> None:
        nonlocal written
        out.write(chunk)
        written += len(chunk)

    if fmt == "jsonl":
        write('{"messages": [{"role": "user", "content": "')
        for part in plan.user_parts():
            write(json.dumps(part, ensure_ascii=False)[1:-1])
        write('"}, {"role": "assistant", "content": ' + json.dumps(plan.answer, ensure_ascii=False) + "}], ")
        row = sample_row(meta)  # the dataset's row format (extra as a JSON string), as DatasetWriter writes
        del row["messages"]
        write(json.dumps(row, ensure_ascii=False)[1:] + "\n")
    else:
        for part in plan.user_parts():
            write(part)
    return StreamedSample(metadata=meta, chars_written=written)


__all__ = [
    "StreamedSample",
    "assemble_sample",
    "fill_gold",
    "normalize_pool",
    "passage_header",
    "passage_tokens",
    "stream_sample",
    "truncate_to_fit",
]
