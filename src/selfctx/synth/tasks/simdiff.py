"""Multi-doc sim-diff: two near-identical passages about one noun that differ in a few key details."""

from __future__ import annotations

from selfctx.synth.filters import Dropped, check_text, content_words
from selfctx.synth.nouns import draw_nouns
from selfctx.synth.parsing import clean_passage, labeled_fields
from selfctx.synth.tasks.base import BuildGen, TaskContext, failed
from selfctx.synth.types import SampleDraft

REWRITE_PROMPT = (
    "Passage:\n{text}\n\nRewrite this passage but change two details (a name, a number, a place or a color). "
    "Keep everything else the same. Write only the new passage."
)
COMPARE_PROMPT = (
    "Passage A:\n{a}\n\nPassage B:\n{b}\n\nCompare the two passages. Use exactly this format:\n"
    "Similarities: <what is the same>\nDifferences: <which details differ>"
)


def _overlap(a: str, b: str) -> float:
    wa, wb = set(content_words(a)), set(content_words(b))
    return len(wa & wb) / max(1, len(wa | wb))


def build(ctx: TaskContext) -> BuildGen:
    (noun,) = draw_nouns(ctx.rng, 1)
    genre = ctx.genre()
    (first,) = yield [ctx.request(ctx.passage_prompt(noun, genre), max_tokens=ctx.knobs.passage_max_tokens)]
    if drop := failed(first):
        return drop
    text_a = clean_passage(first.text)
    if reason := check_text(text_a, min_words=ctx.knobs.min_passage_words):
        return Dropped(reason, "passage A")
    (second,) = yield [
        ctx.request(REWRITE_PROMPT.format(text=text_a), max_tokens=ctx.knobs.passage_max_tokens)
    ]
    if drop := failed(second):
        return drop
    text_b = clean_passage(second.text)
    if reason := check_text(text_b, min_words=ctx.knobs.min_passage_words):
        return Dropped(reason, "passage B")
    similarity = _overlap(text_a, text_b)
    if text_b == text_a or similarity < 0.3:  # identical, or not a near-copy: no sim-diff structure
        return Dropped("malformed", f"rewrite overlap {similarity:.2f}")
    (third,) = yield [ctx.request(COMPARE_PROMPT.format(a=text_a, b=text_b))]
    if drop := failed(third):
        return drop
    fields = labeled_fields(third.text, ("Similarities", "Differences"))
    if fields is None:
        return Dropped("malformed", "no Similarities/Differences")
    a = ctx.new_passage(noun, genre.name, text_a, "a")
    b = ctx.new_passage(noun, genre.name, text_b, "b")
    return SampleDraft(
        task="simdiff",
        relevant=(a, b),
        instruction=f"Passages {{gold[0]}} and {{gold[1]}} are both about {noun}.",
        question="What are their similarities and differences?",
        answer=f"Similarities: {fields['similarities']}\nDifferences: {fields['differences']}",
        nouns=(noun,),
        extra={"rewrite_overlap": round(similarity, 3)},
    )
