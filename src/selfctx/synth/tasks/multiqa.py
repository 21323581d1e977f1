"""Multi-doc QA: two passages linked by a key detail; a question that needs both.

The model names the shared detail; when its reply is no usable detail (SmolLM2-135M often answers with a
sentence about the passage), a name or number the passage states is taken instead (`detail_source`).
"""

from __future__ import annotations

from selfctx.synth.filters import Dropped, check_answer, check_text, content_words, grounding
from selfctx.synth.nouns import draw_nouns
from selfctx.synth.parsing import clean_passage, first_question, salient_details, short_detail
from selfctx.synth.tasks.base import ANSWER_INSTRUCTION, BuildGen, TaskContext, failed
from selfctx.synth.tasks.qa import MIN_QUESTION_GROUNDING, clean_answer
from selfctx.synth.types import SampleDraft

DETAIL_PROMPT = (
    "Passage:\n{text}\n\nName one key detail from this passage (a name, a place, a number or an object). "
    "Write only the detail, in a few words."
)
LINK_PROMPT = " Mention {detail}."
QUESTION_PROMPT = (
    "Passage 1:\n{a}\n\nPassage 2:\n{b}\n\nBoth passages mention {detail}. Write one question that needs "
    "both passages. Write only the question."
)
ANSWER_PROMPT = (
    "Passage 1:\n{a}\n\nPassage 2:\n{b}\n\nQuestion: {question}\nAnswer the question in one short sentence, "
    "using both passages."
)


def build(ctx: TaskContext) -> BuildGen:
    (first,) = ctx.pick_passages(1)
    (reply,) = yield [ctx.request(DETAIL_PROMPT.format(text=first.text), max_tokens=24)]
    if drop := failed(reply):
        return drop
    detail, source = short_detail(reply.text), "model"
    if not usable_detail(detail, first.text):
        candidates = salient_details(first.text)
        if not candidates:
            return Dropped("malformed", "detail")
        detail, source = ctx.rng.choice(candidates), "passage"
    (noun,) = draw_nouns(ctx.rng, 1, exclude=frozenset({first.noun}))
    genre = ctx.genre()
    prompt = ctx.passage_prompt(noun, genre, LINK_PROMPT.format(detail=detail))
    (second,) = yield [ctx.request(prompt, max_tokens=ctx.knobs.passage_max_tokens)]
    if drop := failed(second):
        return drop
    text_b = clean_passage(second.text)
    if reason := check_text(text_b, min_words=ctx.knobs.min_passage_words):
        return Dropped(reason, "passage 2")
    if not set(content_words(detail)) & set(content_words(text_b)):
        return Dropped("ungrounded", "passage 2 lacks the shared detail")
    (third,) = yield [ctx.request(QUESTION_PROMPT.format(a=first.text, b=text_b, detail=detail))]
    if drop := failed(third):
        return drop
    question = first_question(third.text)
    if not question:
        return Dropped("malformed", "not a question")
    if reason := check_text(question, min_words=3):
        return Dropped(reason, "question")
    if grounding(question, first.text + "\n" + text_b) < MIN_QUESTION_GROUNDING:
        return Dropped("ungrounded", "question")
    (fourth,) = yield [ctx.request(ANSWER_PROMPT.format(a=first.text, b=text_b, question=question))]
    if drop := failed(fourth):
        return drop
    answer = clean_answer(fourth.text)
    both = first.text + "\n" + text_b
    if reason := check_answer(answer, both, min_grounding=ctx.knobs.min_grounding):
        return Dropped(reason, "answer")
    second_passage = ctx.new_passage(noun, genre.name, text_b, "b")
    return SampleDraft(
        task="multiqa",
        relevant=(first, second_passage),
        instruction=ANSWER_INSTRUCTION,
        question=question,
        answer=answer,
        nouns=(first.noun, noun),
        extra={"shared_detail": detail, "detail_source": source},
    )


def usable_detail(detail: str, passage: str) -> bool:
    """A few words, at least one of them in the passage."""
    if not detail or len(detail.split()) > 8:
        return False
    return bool(set(content_words(detail)) & set(content_words(passage)))
