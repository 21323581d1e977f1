"""Parsers for the detail and question replies a small model writes in multi-doc QA."""

from __future__ import annotations

import pytest

from selfctx.synth.parsing import (
    first_question,
    first_sentence,
    insert_sentence,
    salient_details,
    short_detail,
)


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        ('The detail: "A gift from your friend"', "A gift from your friend"),
        ("Name: Acousma\nPlace: Acropolis", "Acousma"),
        ("**the copper lantern**.", "the copper lantern"),
        ("The key detail in this passage is: the harbor of Vell", "the harbor of Vell"),
        (
            "The gray wolf is a member of the gray wolf family.",
            "The gray wolf is a member of the gray wolf family",
        ),
    ],
)
def test_short_detail_takes_the_quoted_or_labelled_part(reply: str, detail: str) -> None:
    assert short_detail(reply) == detail


def test_first_question_skips_a_greeting_and_labels() -> None:
    reply = "Dear Alex,\n\nI hope this finds you. Would you like to meet Maria in Lyon? Best,"
    assert first_question(reply) == "Would you like to meet Maria in Lyon?"
    assert first_question('Question: "Which city did both travellers visit?"') == (
        "Which city did both travellers visit?"
    )
    assert first_question("No question here.\nNone at all.") == ""


def test_salient_details_are_names_and_numbers_the_passage_states() -> None:
    text = (
        "The orchard grew near Lake Tana in 1887. Farmers from Gondar sold 3,400 baskets, "
        "and Abebe Bikila ran past. Then the rains came."
    )
    assert salient_details(text) == ["Lake Tana", "Gondar", "Abebe Bikila", "1887", "3,400"]
    assert salient_details("Nothing here stands out. At all.") == []
    listed = "The study:\n1. The rats slept.\n 2) They woke in 2023.\nCOVID-19 came; 7 of them ran."
    assert salient_details(listed) == ["2023"]  # no list markers, single digits or parts of a name


def test_first_sentence_skips_a_preamble_and_labels() -> None:
    assert first_sentence('Here is the sentence:\n"The mill ground corn for Lyon. It closed."') == (
        "The mill ground corn for Lyon."
    )
    assert first_sentence("Sentence: The mill stood by 1887 bridge") == "The mill stood by 1887 bridge"
    assert first_sentence("  \n") == ""


def test_insert_sentence_keeps_paragraphs() -> None:
    text = "One. Two.\n\nThree."
    assert insert_sentence(text, "New.", 0) == "One. New. Two.\n\nThree."
    assert insert_sentence(text, "New.", 1) == "One. Two. New.\n\nThree."
    assert insert_sentence(text, "New.", 2) == "One. Two.\n\nThree. New."
    assert insert_sentence("No end", "New.", 5) == "No end New."
