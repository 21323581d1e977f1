"""Request bodies of the OpenAI endpoints: the fields this server honours, and the ones it refuses.

Unknown fields are ignored, except the OpenAI parameters listed in `REFUSED`: this server cannot honour them,
so a request that asks for one (any value but the ones that ask for nothing) is refused with 400 naming the
parameter, never answered as if it had not asked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


@dataclass(frozen=True)
class Refusal:
    """An OpenAI parameter this server does not implement. `off(value)`: the value asks for nothing (absent
    is None); `instead`: what the client can do."""

    param: str
    off: Callable[[Any], bool]
    instead: str


def _empty(value: Any) -> bool:  # None, False, 0, "", [], {}
    return not value


def _one(value: Any) -> bool:
    return value is None or (type(value) is int and value == 1)


_NO_TOOLS = "this server does not call tools or functions: send the request without them"
_NO_LOGPROBS = "this server does not return log-probabilities: send the request without them"
_NO_PENALTY = "this server applies no repetition penalties: send 0 or leave it out"
_ONE_CHOICE = "one choice per request: send several requests (they share the compressed context)"

REFUSED: tuple[Refusal, ...] = (
    Refusal("tools", _empty, _NO_TOOLS),
    Refusal("tool_choice", lambda v: v in (None, "none"), _NO_TOOLS),
    Refusal("functions", _empty, _NO_TOOLS),
    Refusal("function_call", lambda v: v in (None, "none"), _NO_TOOLS),
    Refusal("parallel_tool_calls", lambda v: v is None or v is False, _NO_TOOLS),
    Refusal(
        "response_format",
        lambda v: v is None or v == {"type": "text"},
        'only {"type": "text"} is supported: describe the format you want in the prompt',
    ),
    Refusal("logprobs", lambda v: v is None or v is False, _NO_LOGPROBS),
    Refusal("top_logprobs", lambda v: v is None or (type(v) is int and v == 0), _NO_LOGPROBS),
    Refusal("echo", lambda v: v is None or v is False, "the prompt is not echoed: prepend it yourself"),
    Refusal("n", _one, _ONE_CHOICE),
    Refusal("best_of", _one, _ONE_CHOICE),
    Refusal("suffix", _empty, "text insertion is not supported: send a prompt only"),
    Refusal("presence_penalty", _empty, _NO_PENALTY),
    Refusal("frequency_penalty", _empty, _NO_PENALTY),
    Refusal("logit_bias", _empty, "this server applies no logit bias: leave it out"),
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # kept (in model_extra) so `refused` can see them

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    context_id: str | None = None  # extension: a context registered with POST /v1/contexts

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def refused(self) -> Refusal | None:
        """The first parameter of `REFUSED` this request asks for, if any."""
        sent = self.model_extra or {}
        return next((r for r in REFUSED if not r.off(sent.get(r.param))), None)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)


class CompletionBody(_Body):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("send exactly one prompt per request")
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ContextBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1)
    mode: Literal["chat", "text"] = "chat"
