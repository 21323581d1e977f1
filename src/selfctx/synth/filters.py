"""Quality filters. Each check returns a drop reason (or None); `FilterCounts` tallies what was dropped.

Reasons (the run summary and dataset card report each): malformed (model output did not parse), ungrounded
(answer shares too few content words with its passage), duplicate (normalized text seen before), too_short
(empty or too-short passage/answer), refusal ("I'm sorry", "As an AI", ...), error (the backend call failed
after its retries).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass

REASONS = ("malformed", "ungrounded", "duplicate", "too_short", "refusal", "error")

_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|as an ai|as a language model|i cannot|i can'?t (help|assist|"
    r"write|provide)|i'?m unable|i am unable|i'?m not able)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "and",
        "or",
        "but",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "as",
        "into",
        "than",
        "then",
        "so",
        "such",
        "not",
        "no",
        "do",
        "does",
        "did",
        "has",
        "have",
        "had",
        "he",
        "she",
        "they",
        "them",
        "his",
        "her",
        "their",
        "we",
        "you",
        "i",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "there",
        "here",
        "about",
        "over",
        "under",
        "can",
        "could",
        "would",
        "should",
        "will",
        "may",
        "might",
        "must",
        "also",
        "very",
        "more",
        "most",
    ]
)


@dataclass(frozen=True)
class Dropped:
    """A builder's outcome when its item is filtered out."""

    reason: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown drop reason {self.reason!r}")


class FilterCounts(Counter[str]):
    """reason -> number of items dropped for it."""

    def as_dict(self) -> dict[str, int]:
        return {reason: int(self.get(reason, 0)) for reason in REASONS}


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(text))


def normalized_hash(text: str) -> str:
    """Hash of the lower-cased words, so whitespace/punctuation variants count as duplicates."""
    return hashlib.sha256(" ".join(_WORD.findall(text.lower())).encode()).hexdigest()


def grounding(answer: str, source: str) -> float:
    """Fraction of the answer's content words that occur in the source (1.0 for an answer with none)."""
    words = content_words(answer)
    if not words:
        return 0.0
    vocab = set(content_words(source))
    return sum(1 for w in words if w in vocab) / len(words)


def check_text(text: str, *, min_words: int) -> str | None:
    """Drop reason for a model-written text (passage, summary, answer), or None if it passes."""
    if is_refusal(text):
        return "refusal"
    if len(_WORD.findall(text)) < min_words:
        return "too_short"
    return None


def check_answer(answer: str, source: str, *, min_grounding: float, min_words: int = 1) -> str | None:
    """Drop reason for an answer that must be grounded in `source`."""
    reason = check_text(answer, min_words=min_words)
    if reason:
        return reason
    if grounding(answer, source) < min_grounding:
        return "ungrounded"
    return None
