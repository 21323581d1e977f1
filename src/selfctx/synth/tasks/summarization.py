"""Summarization: the model summarizes several passages; the prompt names each by index and noun."""

from __future__ import annotations

from selfctx.synth.filters import Dropped, check_answer
from selfctx.synth.parsing import clean_passage
from selfctx.synth.tasks.base import BuildGen, TaskContext, failed
from selfctx.synth.types import SampleDraft

SUMMARY_PROMPT = "Passage:\n{text}\n\nSummarize this passage in one or two sentences. Write only the summary."


def build(ctx: TaskContext) -> BuildGen:
    k = ctx.rng.randint(2, 3)
    passages = ctx.pick_passages(k)
    replies = yield [ctx.request(SUMMARY_PROMPT.format(text=p.text)) for p in passages]
    summaries = []
    for passage, reply in zip(passages, replies, strict=True):
        if drop := failed(reply):
            return drop
        summary = clean_passage(reply.text).removeprefix("Summary:").strip()
        if reason := check_answer(summary, passage.text, min_grounding=ctx.knobs.min_grounding, min_words=5):
            return Dropped(reason, "summary")
        summaries.append(summary)
    named = ", ".join(f"passage {{gold[{i}]}} (about {p.noun})" for i, p in enumerate(passages))
    answer = "\n\n".join(
        f"Passage {{gold[{i}]}} ({p.noun}): {s}"
        for i, (p, s) in enumerate(zip(passages, summaries, strict=True))
    )
    return SampleDraft(
        task="summarization",
        relevant=tuple(passages),
        instruction=f"Summarize {named}, in that order.",
        question="",
        answer=answer,
        nouns=tuple(p.noun for p in passages),
    )
