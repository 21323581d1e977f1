"""Parsers for the detail and question replies a small model writes in multi-doc QA."""

from __future__ import annotations

import pytest

from selfctx.synth.parsing import first_question, salient_details, short_detail


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
