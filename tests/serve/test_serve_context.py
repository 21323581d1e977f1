"""Where a request splits into compressed context and raw question (selfctx.serve.context), with a budget
measured in characters instead of tokens."""

from __future__ import annotations

import pytest

from selfctx.serve.context import ChatMessage, Fits, split_chat, split_last_part, split_text


def _within(limit: int) -> Fits:
    return lambda question: len(question) <= limit


DOC = "Alpha beta. Gamma delta epsilon. " * 6  # 198 characters, sentences but no line breaks


@pytest.mark.parametrize(
    ("text", "question"),
    [
        ("Just a question?", "Just a question?"),  # (a) no paragraph break and it fits: all question
        (f"{DOC}\n\nWhat is beta?", "What is beta?"),  # (a) the final paragraph
        (f"{DOC}\nWhat is beta, and where?", "What is beta, and where?"),  # (b) the final line
        (f"{DOC}What is beta?", "What is beta?"),  # (c) the final sentence
        (f"{DOC}\n\n{'x' * 50} one two three four five six", "one two three four five six"),  # (d) words
        ("y" * 100, "y" * 100),  # not even one word fits: kept whole, the worker refuses it
    ],
)
def test_the_last_part_is_the_largest_unit_that_fits(text: str, question: str) -> None:
    head, got = split_last_part(text, _within(30))
    assert got == question
    assert text.startswith(head) and text.endswith(question)
    kept_head, kept = split_last_part(text, _within(31), keep_separator=True)
    assert kept_head + kept == text  # text mode reads exactly the prompt


def test_the_same_document_gives_the_same_context_whatever_the_question() -> None:
    fits = _within(40)
    for sep in ("\n\n", "\n", " "):
        contexts = {
            split_chat([ChatMessage("user", f"{DOC.strip()}{sep}{q}")], fits).context
            for q in ("Which word comes first?", "And the last one, please?")
        }
        assert contexts == {DOC.strip()}, sep
    assert split_text(f"{DOC}Which word?", fits).context == DOC.rstrip()
    assert split_text(f"{DOC}Which word?", fits).question == " Which word?"


def test_the_word_fallback_measures_only_about_the_budget() -> None:
    measured: list[int] = []

    def fits(question: str) -> bool:
        measured.append(len(question))
        return len(question) <= 60

    text = " ".join(f"w{i}" for i in range(20_000))  # one long line of words, no sentence ends
    head, question = split_last_part(text, fits)
    assert len(question) <= 60 and text == f"{head} {question}"
    assert sorted(measured)[-2] < 300  # besides the whole text (rule a), only short tails were measured
