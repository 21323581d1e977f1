"""Single-doc QA: the model writes one highly specific QA pair about one passage.

Two calls (question, then answer): SmolLM2-135M rarely writes both parts of a "Question/Answer" format in
one reply, but follows one instruction at a time.
"""

from __future__ import annotations

from selfctx.synth.filters import Dropped, check_answer, check_text, grounding
from selfctx.synth.parsing import first_line
from selfctx.synth.tasks.base import ANSWER_INSTRUCTION, BuildGen, TaskContext, failed
from selfctx.synth.types import SampleDraft

# A question must name something in its passage: a quarter of its content words at least.
MIN_QUESTION_GROUNDING = 0.25
QUESTION_PROMPT = (
    "Passage:\n{text}\n\nWrite one specific question about a detail in this passage. Write only the question."
)
ANSWER_PROMPT = (
    "Passage:\n{text}\n\nQuestion: {question}\nAnswer the question in one short sentence, using the passage."
)


def clean_question(text: str) -> str:
    line = first_line(text).removeprefix("Question:").strip().strip('"')
    return line


def clean_answer(text: str) -> str:
    return text.strip().split("\n\n")[0].removeprefix("Answer:").strip()


def build(ctx: TaskContext) -> BuildGen:
    (passage,) = ctx.pick_passages(1)
    (reply,) = yield [ctx.request(QUESTION_PROMPT.format(text=passage.text), max_tokens=48)]
    if drop := failed(reply):
        return drop
    question = clean_question(reply.text)
    if not question.endswith("?"):
        return Dropped("malformed", "not a question")
    if reason := check_text(question, min_words=3):
        return Dropped(reason, "question")
    if grounding(question, passage.text) < MIN_QUESTION_GROUNDING:  # e.g. "What is a detail of the passage?"
        return Dropped("ungrounded", "question")
    (reply,) = yield [ctx.request(ANSWER_PROMPT.format(text=passage.text, question=question))]
    if drop := failed(reply):
        return drop
    answer = clean_answer(reply.text)
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
