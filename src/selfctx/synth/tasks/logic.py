"""Multi-doc logic: fact A->B in one passage, B->C in another; the question asks about A and C.

The facts use transitive relations, so the answer follows from the two facts, not from the model: the model
only writes the passages that carry them. A passage that leaves its fact sentence out gets it inserted at a
sentence boundary (recorded in `extra.facts_inserted`), so the chain is always present in the context.
"""

from __future__ import annotations

import re

from selfctx.synth.filters import Dropped, check_text
from selfctx.synth.nouns import draw_nouns
from selfctx.synth.parsing import clean_passage
from selfctx.synth.tasks.base import BuildGen, TaskContext, failed
from selfctx.synth.types import SampleDraft

# (relation phrase, question phrase)
RELATIONS = (
    ("is older than", "Which is older, {a} or {c}?"),
    ("is larger than", "Which is larger, {a} or {c}?"),
    ("is heavier than", "Which is heavier, {a} or {c}?"),
    ("was invented before", "Which was invented first, {a} or {c}?"),
    ("is more expensive than", "Which is more expensive, {a} or {c}?"),
)
FACT_PROMPT = ' Include this exact sentence: "{fact}"'


def _with_fact(text: str, fact: str, rng_choice: int) -> tuple[str, bool]:
    if fact.lower().rstrip(".") in text.lower():
        return text, False
    sentences = re.split(r"(?<=[.!?])\s+", text)
    at = rng_choice % (len(sentences) + 1)
    return " ".join([*sentences[:at], fact, *sentences[at:]]).strip(), True


def build(ctx: TaskContext) -> BuildGen:
    a, b, c = draw_nouns(ctx.rng, 3)
    relation, question = RELATIONS[ctx.rng.randrange(len(RELATIONS))]
    facts = (f"The {a} {relation} the {b}.", f"The {b} {relation} the {c}.")
    genres = (ctx.genre(), ctx.genre())
    prompts = [
        ctx.passage_prompt(noun, genre, FACT_PROMPT.format(fact=fact))
        for noun, genre, fact in zip((a, c), genres, facts, strict=True)
    ]
    replies = yield [ctx.request(p, max_tokens=ctx.knobs.passage_max_tokens) for p in prompts]
    passages, inserted = [], 0
    for i, (reply, fact, noun, genre) in enumerate(zip(replies, facts, (a, c), genres, strict=True)):
        if drop := failed(reply):
            return drop
        text = clean_passage(reply.text)
        if reason := check_text(text, min_words=ctx.knobs.min_passage_words):
            return Dropped(reason, f"passage {i + 1}")
        text, added = _with_fact(text, fact, ctx.rng.randrange(1000))
        inserted += added
        passages.append(ctx.new_passage(noun, genre.name, text, str(i)))
    answer = (
        f"The {a}. Passage {{gold[0]}} says the {a} {relation} the {b}, and passage {{gold[1]}} says the {b} "
        f"{relation} the {c}, so the {a} {relation} the {c}."
    )
    return SampleDraft(
        task="logic",
        relevant=tuple(passages),
        instruction="Answer the question based on the passages. Explain which passages you used.",
        question=question.format(a=f"the {a}", c=f"the {c}"),
        answer=answer,
        nouns=(a, b, c),
        extra={"relation": relation, "facts": list(facts), "facts_inserted": inserted},
    )
