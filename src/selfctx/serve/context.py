"""Which part of a request is the long context (compressed once, reused) and which part is the question.

Chat requests (`/v1/chat/completions`), in order of precedence:
1. With the extension field `context_id` (from `POST /v1/contexts`), the registered text is the context and
   the messages are the question (their contents joined by blank lines).
2. Otherwise the context is every message before the last user message (their contents, each preceded by
   its role for assistant turns, joined by blank lines) followed by the head of the last user message; the
   question is that message's last part, read raw. Messages after the last user message (rare) join the
   question.

The last part of the last user message is the first of these that fits the answer budget (question +
max_tokens within `--answer-budget` tokens, see `selfctx.serve.config`):
  a. the text after its final paragraph break ("\\n\\n"), or the whole message when it has none;
  b. its final line (after the last "\\n");
  c. its final sentence (after the last ".", "?" or "!" followed by whitespace);
  d. its longest run of final words that fits (a budget of tokens, not a boundary of the text).
If not even the last word fits, (a) is kept and the request is refused for its question length.
(a) is the rule whenever it fits, so "system: <document>", "user: <question>" and
"user: <document>\\n\\n<question>" compress the document; (b) and (c) make one message holding
"<document>\\n<question>" or "<document> <question>" compress the document, so the same document with another
question (one line or one sentence) has the same context and reuses its memory. A question of several
sentences written on the document's line keeps only its last sentence raw: start it on a new line.
Known limit: the rule that applies depends on the question's length and max_tokens, so when a document's last
paragraph plus one question fits (a) and the next question does not, the two get different contexts and the
second compresses again (preferring a split whose memory is already held is not done yet).

Text completions (`/v1/completions`): with `context_id` the registered text is the context and the prompt the
question; otherwise the same rule splits the prompt, the separator staying with the question (the model reads
exactly the prompt's text).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Mode = Literal["chat", "text"]
# Does this question text, read raw with the request's max_tokens, fit the server's answer budget?
Fits = Callable[[str], bool]

_PARAGRAPH = re.compile(r"\n\n")
_LINE = re.compile(r"\n")
_SENTENCE = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_SPACE = re.compile(r"\s+")


def _always(_: str) -> bool:
    return True


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class Split:
    context: str
    question: str


def split_chat(messages: list[ChatMessage], fits: Fits = _always) -> Split:
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last_user is None:  # no user turn: everything is context, the question is empty
        return Split(_join(messages), "")
    before = _join(messages[:last_user])
    after = "\n\n".join(m.content for m in messages[last_user + 1 :])

    def with_after(question: str) -> str:
        return "\n\n".join(p for p in (question, after) if p)

    document, question = split_last_part(messages[last_user].content, lambda q: fits(with_after(q)))
    context = "\n\n".join(p for p in (before, document) if p)
    return Split(context, with_after(question))


def split_text(prompt: str, fits: Fits = _always) -> Split:
    context, question = split_last_part(prompt, fits, keep_separator=True)
    return Split(context, question)


def split_last_part(text: str, fits: Fits, *, keep_separator: bool = False) -> tuple[str, str]:
    """(head, question) of `text` by the rule in the module docstring. The separator between them (blank
    line, newline, whitespace) is dropped, or kept at the question's start with `keep_separator`; `fits` is
    asked about the question exactly as returned."""

    def question(span: tuple[int, int]) -> str:
        return text[span[0] if keep_separator else span[1] :]

    end = len(text.rstrip())  # a boundary needs some text after it
    spans = [_last_boundary(pattern, text, end) for pattern in (_PARAGRAPH, _LINE, _SENTENCE)]
    rule_a = spans[0] or (0, 0)
    if end == 0 or fits(question(rule_a)):
        return text[: rule_a[0]], question(rule_a)
    tried = rule_a[1]
    for span in spans[1:]:  # (b), (c): only a boundary after the last one tried gives a smaller part
        if span is not None and span[1] > tried:
            if fits(question(span)):
                return text[: span[0]], question(span)
            tried = span[1]
    chosen = _last_words_that_fit(text, tried, end, lambda span: fits(question(span))) or rule_a
    return text[: chosen[0]], question(chosen)


def _last_boundary(pattern: re.Pattern[str], text: str, end: int) -> tuple[int, int] | None:
    """(start, end) of the last match of `pattern` that has non-blank text after it."""
    last = None
    for match in pattern.finditer(text, 0, end):
        last = match
    return None if last is None else last.span()


def _last_words_that_fit(
    text: str, start: int, end: int, fits: Callable[[tuple[int, int]], bool]
) -> tuple[int, int] | None:
    """Span of the whitespace before the longest run of final words of text[start:end] that fits; None when
    not even the last word does (or the part is a single word).

    Runs are tried from the end in doubling lengths, then bisected, so only about twice the budget's worth of
    text is ever measured, however long the document."""
    gaps = [m.span() for m in _SPACE.finditer(text, start, end) if m.start() > start]
    n, best = 1, 0
    while n <= len(gaps) and fits(gaps[-n]):
        best, n = n, n * 2
    if best == 0:
        return None
    low, high = best, min(n, len(gaps) + 1)  # `low` final words fit, `high` do not (or do not exist)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(gaps[-middle]):
            low = middle
        else:
            high = middle
    return gaps[-low]


def _join(messages: list[ChatMessage]) -> str:
    return "\n\n".join(m.content if m.role != "assistant" else f"assistant: {m.content}" for m in messages)
