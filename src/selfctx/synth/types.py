"""Records that flow between synthesis stages; each has a JSON form so stages can be resumed or inspected."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Passage:
    """A passage the model wrote about one noun, in one genre, with its length under the target tokenizer."""

    id: str
    noun: str
    genre: str
    text: str
    n_tokens: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Passage:
        return Passage(**data)


@dataclass(frozen=True)
class SampleDraft:
    """What a task builder produces before distractors are added.

    `relevant` are the passages the answer depends on (their order is the task's; the assembler shuffles
    them among distractors unless depths are given). `instruction` and `question` follow the context in the
    user turn; `answer` is the assistant turn. `nouns` are excluded from the distractors.
    """

    task: str
    relevant: tuple[Passage, ...]
    instruction: str
    question: str
    answer: str
    nouns: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    """A finished training/eval sample in chat form, plus the metadata the dataset card counts."""

    messages: tuple[dict[str, str], ...]
    task: str
    bucket: str
    token_count: int
    target_tokens: int
    n_distractors: int
    gold_positions: tuple[int, ...]
    nouns: tuple[str, ...]
    seed: int
    model: str
    repeated_distractors: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["messages"] = list(self.messages)
        return data
