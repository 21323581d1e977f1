"""Needle retrieval as 4-way multiple choice: items, and their scoring through a CompressedLM.

Each item hides "One of the special magic numbers for KEY is: VALUE." at a sentence boundary of the haystack
(depths spread evenly over 0..1), asks for KEY's number, and offers VALUE among three other 7-digit numbers.
Ranking the four by log-likelihood gives a graded signal (chance = 25%) of whether a method carries the fact.

`benchmarks/harness_needle_mc.py` scores the items through lm-evaluation-harness (the `selfctx` model);
`score_items` here makes the same requests directly — lm-eval's context/continuation split, one compression
per context, the choice with the highest summed log-likelihood wins — for machines without lm-eval.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfctx.compress.likelihood import middle_truncate, score_continuations

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from selfctx.compress.model import CompressedLM

PROMPT = "{context}\n\nQuestion: {question}\nAnswer:"  # the task YAML's doc_to_text, same text


@dataclass(frozen=True)
class ChoiceItem:
    context: str
    question: str
    choices: list[str]
    label: int
    depth: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def make_items(
    tokenizer: PreTrainedTokenizerBase, haystack: str, length: int, n_items: int, seed: int = 0
) -> list[ChoiceItem]:
    """`n_items` items of `length` tokens, needle depths evenly spread over 0..1."""
    from selfctx.eval.needle import make_task, place_needles

    rng = random.Random(seed)
    items = []
    for i in range(n_items):
        depth = i / max(1, n_items - 1)
        task = make_task("single", depth, rng)
        value = task.expected[0]
        others: set[str] = set()
        while len(others) < 3:
            candidate = str(rng.randint(1_000_000, 9_999_999))
            if candidate != value:
                others.add(candidate)
        choices = [value, *sorted(others)]
        rng.shuffle(choices)
        placed = place_needles(tokenizer, haystack, length, task)
        items.append(
            ChoiceItem(
                placed.context,
                task.question,
                choices,
                choices.index(value),
                round(placed.placed_depths[0], 3),
            )
        )
    return items


def _encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing spaces move to the continuation, which is what the whole string adds."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation, context = context[-spaces:] + continuation, context[:-spaces]
    whole = list(tokenizer(context + continuation, add_special_tokens=False)["input_ids"])
    head = list(tokenizer(context, add_special_tokens=False)["input_ids"])
    return head, whole[len(head) :]


def score_items(
    lm: CompressedLM,
    items: list[ChoiceItem],
    *,
    ratio: int | None,
    truncate: int | None = None,
    answer_budget: int = 128,
) -> dict[str, Any]:
    """Accuracy (with its standard error) and per-item correctness; `truncate` = the truncation baseline
    (ratio 1 over the context's first and last halves of truncate - answer_budget tokens)."""
    per_item = []
    for item in items:
        prompt = PROMPT.format(context=item.context, question=item.question)
        pairs = [_encode_pair(lm.tokenizer, prompt, " " + choice) for choice in item.choices]
        context = pairs[0][0]
        if truncate is not None:
            context = middle_truncate(context, truncate - answer_budget)
        scores = score_continuations(
            lm,
            context,
            [c for _, c in pairs],
            ratio=1 if truncate is not None else ratio,
            budget=answer_budget,
        )
        best = max(range(len(scores)), key=lambda k: scores[k][0])
        per_item.append({"depth": item.depth, "correct": best == item.label})
    return summarize(per_item)


def write_items(path: Path, items: Sequence[ChoiceItem]) -> None:
    """The items as one JSON object a line: what the lm-eval task YAML and the kvpress runner read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item.to_json()) + "\n" for item in items), encoding="utf-8")


def summarize(per_item: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy and its standard error over scored items (rows of score_items' `per_item`, possibly merged
    from several calls)."""
    if not per_item:
        raise ValueError("no scored items to summarize")
    acc = sum(r["correct"] for r in per_item) / len(per_item)
    stderr = math.sqrt(acc * (1 - acc) / max(1, len(per_item) - 1))  # lm-eval's sample stderr of the mean
    return {"acc": acc, "acc_stderr": stderr, "items": len(per_item), "per_item": per_item}
