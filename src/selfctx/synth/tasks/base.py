"""What a task builder is: a small program the pipeline schedules.

`build(ctx)` is a generator: it yields a list of ChatRequests, receives their Completions (same order) via
send(), may ask again (multi-step tasks), and finally returns a SampleDraft, or a `Dropped` outcome that the
filters count. The scheduler keeps many builders in flight and batches their requests, so the backend stays
busy. Everything random in a builder comes from `ctx.rng`, seeded per item.
"""

from __future__ import annotations

import random
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from selfctx.llm.base import ChatRequest, Completion, SamplingParams
from selfctx.synth.filters import Dropped, is_refusal
from selfctx.synth.genres import GENRES, Genre
from selfctx.synth.types import Passage, SampleDraft

Outcome = SampleDraft | Dropped
BuildGen = Generator[list[ChatRequest], list[Completion], Outcome]

ANSWER_INSTRUCTION = "Answer the question based on the passages."


class CountsTokens(Protocol):
    def count(self, text: str) -> int: ...


@dataclass(frozen=True)
class Knobs:
    """Generation settings shared by builders (config `gen.*`)."""

    passage_words: int = 120
    passage_max_tokens: int = 320
    answer_max_tokens: int = 160
    temperature: float = 0.7
    top_p: float = 0.95
    min_passage_words: int = 40
    min_grounding: float = 0.5


@dataclass
class TaskContext:
    """What one builder may use: its seed/rng, the passage pool (read-only), a token counter, the knobs."""

    task: str
    index: int
    seed: int
    pool: Sequence[Passage]
    counter: CountsTokens
    knobs: Knobs = field(default_factory=Knobs)
    rng: random.Random = field(init=False)
    _calls: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def request(
        self, prompt: str, *, max_tokens: int | None = None, stop: tuple[str, ...] = ()
    ) -> ChatRequest:
        """A user-turn request whose sampling seed is derived from this item's seed and the call's order."""
        self._calls += 1
        sampling = SamplingParams(
            max_tokens=max_tokens or self.knobs.answer_max_tokens,
            temperature=self.knobs.temperature,
            top_p=self.knobs.top_p,
            seed=(self.seed + 7919 * self._calls) % (2**31 - 1),
            stop=stop,
        )
        return ChatRequest.user(prompt, sampling)

    def genre(self) -> Genre:
        return GENRES[self.rng.randrange(len(GENRES))]

    def passage_prompt(self, noun: str, genre: Genre, extra: str = "") -> str:
        what = genre.prompt.format(noun=noun)
        return f"Write {what}. Use about {self.knobs.passage_words} words.{extra} Write only the text."

    def new_passage(self, noun: str, genre: str, text: str, tag: str) -> Passage:
        return Passage(
            id=f"{self.task}-{self.index}-{tag}",
            noun=noun,
            genre=genre,
            text=text,
            n_tokens=self.counter.count(text),
        )

    def pick_passages(self, k: int) -> list[Passage]:
        """k pool passages about k different nouns (raises ValueError when the pool has too few nouns)."""
        by_noun: dict[str, Passage] = {}
        for i in self.rng.sample(range(len(self.pool)), len(self.pool)):
            by_noun.setdefault(self.pool[i].noun.lower(), self.pool[i])
            if len(by_noun) == k:
                return list(by_noun.values())
        raise ValueError(f"the pool has fewer than {k} distinct nouns")


def failed(completion: Completion) -> Dropped | None:
    """The drop for a call that failed after the backend's retries, or whose answer is a refusal."""
    if not completion.ok:
        return Dropped("error", completion.error or "")
    if is_refusal(completion.text):
        return Dropped("refusal")
    return None


class Builder(Protocol):
    def __call__(self, ctx: TaskContext) -> BuildGen: ...
