"""Multi-doc QA: two passages linked by a key detail; a question that needs both.

The model names the shared detail; when its reply is no usable detail (SmolLM2-135M often answers with a
sentence about the passage), a name or number the passage states is taken instead, else the passage's own
noun (`detail_source`: model, passage, noun). The second passage is asked to mention the detail; when it
does not (SmolLM2-135M leaves a "Mention X." out of a 120-word text about half the time), the model writes
one sentence about the second noun that mentions it, and that sentence is inserted at a sentence boundary
(`bridge_inserted`), so the link is in both passages; a bridge sentence without the detail drops the item.
"""

from __future__ import annotations

from selfctx.synth.filters import Dropped, check_answer, check_text, content_words, grounding
from selfctx.synth.nouns import draw_nouns
from selfctx.synth.parsing import (
    clean_passage,
    first_question,
    first_sentence,
    insert_sentence,
    salient_details,
    short_detail,
)
from selfctx.synth.tasks.base import ANSWER_INSTRUCTION, BuildGen, TaskContext, failed
from selfctx.synth.tasks.qa import MIN_QUESTION_GROUNDING, clean_answer
from selfctx.synth.types import Passage, SampleDraft

DETAIL_PROMPT = (
    "Passage:\n{text}\n\nName one key detail from this passage (a name, a place, a number or an object). "
    "Write only the detail, in a few words."
)
LINK_PROMPT = " Mention {detail}."
BRIDGE_PROMPT = "Write one sentence about {noun} that mentions {detail}. Write only the sentence."
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
    picked = pick_detail(reply.text, first, ctx)
    if picked is None:
        return Dropped("malformed", "detail")
    detail, source = picked
    (noun,) = draw_nouns(ctx.rng, 1, exclude=frozenset({first.noun}))
    genre = ctx.genre()
    prompt = ctx.passage_prompt(noun, genre, LINK_PROMPT.format(detail=detail))
    (second,) = yield [ctx.request(prompt, max_tokens=ctx.knobs.passage_max_tokens)]
    if drop := failed(second):
        return drop
    text_b = clean_passage(second.text)
    if reason := check_text(text_b, min_words=ctx.knobs.min_passage_words):
        return Dropped(reason, "passage 2")
    bridged = not mentions(text_b, detail)
    if bridged:
        (bridge,) = yield [ctx.request(BRIDGE_PROMPT.format(noun=noun, detail=detail), max_tokens=60)]
        if drop := failed(bridge):
            return drop
        sentence = first_sentence(bridge.text)
        if check_text(sentence, min_words=5) or not mentions(sentence, detail):
            return Dropped("ungrounded", "passage 2 lacks the shared detail")
        text_b = insert_sentence(text_b, sentence, ctx.rng.randrange(1000))
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
        extra={"shared_detail": detail, "detail_source": source, "bridge_inserted": bridged},
    )


def pick_detail(reply: str, passage: Passage, ctx: TaskContext) -> tuple[str, str] | None:
    """(detail, source): the model's detail if usable, else a name or number the passage states, else the
    passage's noun when the passage names it; None when the passage offers none of these."""
    detail = short_detail(reply)
    if usable_detail(detail, passage.text):
        return detail, "model"
    candidates = salient_details(passage.text)
    if candidates:
        return ctx.rng.choice(candidates), "passage"
    if mentions(passage.text, passage.noun):
        return passage.noun, "noun"
    return None


def usable_detail(detail: str, passage: str) -> bool:
    """A few words, at least one of them in the passage."""
    if not detail or len(detail.split()) > 8:
        return False
    return bool(set(content_words(detail)) & set(content_words(passage)))


def mentions(text: str, detail: str) -> bool:
    """Whether `text` names `detail`: at least half of the detail's content words (one of one or two, two of
    three or four, ...) occur in it."""
    words = {w for w in content_words(detail) if len(w) > 1}  # not the "s" of "UK's"
    if not words:
        return False
    return 2 * len(words & set(content_words(text))) >= len(words)
