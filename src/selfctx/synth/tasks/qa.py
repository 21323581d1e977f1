"""Single-doc QA: the model writes one highly specific QA pair about one passage."""

from __future__ import annotations

from selfctx.synth.filters import Dropped, check_answer, check_text
from selfctx.synth.parsing import labeled_fields
from selfctx.synth.tasks.base import ANSWER_INSTRUCTION, BuildGen, TaskContext, failed
from selfctx.synth.types import SampleDraft

QA_PROMPT = (
    "Passage:\n{text}\n\n"
    "Write one specific question about a detail in this passage, and its short answer. "
    "Use exactly this format:\nQuestion: <question>\nAnswer: <answer>"
)


def build(ctx: TaskContext) -> BuildGen:
    (passage,) = ctx.pick_passages(1)
    (reply,) = yield [ctx.request(QA_PROMPT.format(text=passage.text))]
    if drop := failed(reply):
        return drop
    fields = labeled_fields(reply.text, ("Question", "Answer"))
    if fields is None:
        return Dropped("malformed", "no Question/Answer")
    # Keep the first paragraph: small models run on into a second QA pair or commentary.
    question, answer = fields["question"].split("\n\n")[0].strip(), fields["answer"].split("\n\n")[0].strip()
    if reason := check_text(question, min_words=3):
        return Dropped(reason, "question")
    if reason := check_answer(answer, passage.text, min_grounding=ctx.knobs.min_grounding):
        return Dropped(reason, "answer")
    return SampleDraft(
        task="qa",
        relevant=(passage,),
        instruction=ANSWER_INSTRUCTION,
        question=question,
        answer=answer,
        nouns=(passage.noun,),
    )
