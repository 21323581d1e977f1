"""Genre/style prompts for passages: the pool mixes them so distractors are varied like real documents."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Genre:
    name: str
    prompt: str  # "Write {article} about {noun}" style phrase, filled with the noun


GENRES: tuple[Genre, ...] = (
    Genre("academic", "the abstract of an academic paper about {noun}"),
    Genre("news", "a short news article about {noun}"),
    Genre("encyclopedia", "an encyclopedia entry about {noun}"),
    Genre("scifi", "a short science fiction story about {noun}"),
    Genre("fairy-tale", "a short fairy tale about {noun}"),
    Genre("travel-blog", "a travel blog post that mentions {noun}"),
    Genre("review", "a product review about {noun}"),
    Genre("letter", "a letter to a friend about {noun}"),
    Genre("textbook", "a textbook lesson about {noun}"),
    Genre("diary", "a diary entry about {noun}"),
)

GENRE_BY_NAME = {g.name: g for g in GENRES}
