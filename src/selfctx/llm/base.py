"""One batch interface for every text-generation backend used to write data.

A backend takes a list of ChatRequests and returns one Completion per request, in order. Failures that
survive the backend's retries come back as a Completion with `error` set (never an exception for one bad
call), so a long run counts them and goes on. Importing this module must not import torch.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; `seed` makes a call reproducible where the backend supports seeding."""

    max_tokens: int = 512
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)

    @staticmethod
    def user(text: str, sampling: SamplingParams | None = None, system: str | None = None) -> ChatRequest:
        messages = ((Message("system", system),) if system else ()) + (Message("user", text),)
        return ChatRequest(messages=messages, sampling=sampling or SamplingParams())

    def as_openai_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]

    def cache_key(self, model: str) -> str:
        """Content address of this call: (model, messages, sampling parameters incl. seed)."""
        payload = {"model": model, "messages": self.as_openai_messages(), "sampling": asdict(self.sampling)}
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" | "length" | "error"
    cached: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Completion:
        return Completion(**data)


@dataclass
class BackendStats:
    """Counters a run summary reports."""

    calls: int = 0
    cached_calls: int = 0
    retries: int = 0
    errors: int = 0
    timeouts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def count_call(self, completion: Completion, seconds: float) -> None:
        """Count one finished call: every backend that completes calls one at a time counts them the same
        way, so a run summary means the same whatever wrote it. Not thread-safe: hold the backend's lock."""
        self.calls += 1
        self.errors += 0 if completion.ok else 1
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        self.seconds += seconds

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def in_request_order(results: Iterator[tuple[int, Completion]], n: int) -> list[Completion]:
    """The completions of a `generate_iter` run, back in the order of its n requests."""
    ordered: list[Completion | None] = [None] * n
    for i, completion in results:
        ordered[i] = completion
    return [c for c in ordered if c is not None]


class LLM(ABC):
    """A text generator behind one batch call. Subclasses set `model_id` (used in cache keys)."""

    model_id: str

    def __init__(self) -> None:
        self.stats = BackendStats()

    @abstractmethod
    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """One Completion per request, same order. Implementations batch/parallelize as they can."""

    def generate_iter(self, requests: Sequence[ChatRequest]) -> Iterator[tuple[int, Completion]]:
        """Yield (index into requests, Completion) as each call finishes, in any order.

        The default makes one `generate` call; backends that finish calls one by one override it, so a caller
        (e.g. the call cache) can save each result at once instead of waiting for the slowest in the batch.
        """
        yield from enumerate(self.generate(requests))

    @property
    def preferred_batch_size(self) -> int:
        """How many requests the caller should hand over at once to keep this backend busy."""
        return 8

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (threads, HTTP clients, model memory)."""

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
