"""Which part of a request is the long context (compressed once, reused) and which part is the question.

Chat requests (`/v1/chat/completions`), in order of precedence:
1. With the extension field `context_id` (from `POST /v1/contexts`), the registered text is the context and
   the messages are the question (their contents joined by blank lines).
2. Otherwise the context is every message before the last user message (their contents, each preceded by
   its role for assistant turns, joined by blank lines) followed by the last user message up to its final
   paragraph break ("\\n\\n"); the question is the text after that break. A last user message without a
   paragraph break is all question. Messages after the last user message (rare) join the question.
So "system: <document>", "user: <question>" and "user: <document>\\n\\n<question>" both compress the document.

Text completions (`/v1/completions`): with `context_id` the registered text is the context and the prompt the
question; otherwise the prompt up to its final paragraph break is the context and the break plus the rest is
the question (the model reads exactly the prompt's text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["chat", "text"]


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class Split:
    context: str
    question: str


def split_chat(messages: list[ChatMessage]) -> Split:
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last_user is None:  # no user turn: everything is context, the question is empty
        return Split(_join(messages), "")
    before = _join(messages[:last_user])
    document, sep, question = messages[last_user].content.rpartition("\n\n")
    if not sep:
        document, question = "", messages[last_user].content
    after = "\n\n".join(m.content for m in messages[last_user + 1 :])
    context = "\n\n".join(p for p in (before, document) if p)
    return Split(context, "\n\n".join(p for p in (question, after) if p))


def split_text(prompt: str) -> Split:
    context, sep, question = prompt.rpartition("\n\n")
    return Split(context, sep + question) if sep else Split("", prompt)


def _join(messages: list[ChatMessage]) -> str:
    return "\n\n".join(m.content if m.role != "assistant" else f"assistant: {m.content}" for m in messages)
