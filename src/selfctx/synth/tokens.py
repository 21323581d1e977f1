"""Token counting under the TARGET model's tokenizer (lengths are promises about what the model will see).

    counter = load_token_counter("smollm2-135m")   # the fast Rust tokenizer, no special tokens added
    counter.count("some text")                      # -> int
    counter.count_batch(["a", "b"])                 # -> list[int], batched in Rust
    counter.count_chat([{"role": "user", ...}, ...])  # the whole chat sample as the model sees it

`RegexTokenCounter` is a tiny deterministic stand-in for tests (words, punctuation marks and newlines).
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from selfctx.errors import SelfctxError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from selfctx.models import ModelSpec

Messages = Sequence[Mapping[str, str]]

# A probe chat for measuring the template's fixed overhead; its contents are irrelevant.
_PROBE_CHAT = (
    {"role": "user", "content": "Passage 1:\nA probe passage.\n\nWhat is this?"},
    {"role": "assistant", "content": "A probe."},
)


@runtime_checkable
class TokenCounter(Protocol):
    """Counts tokens of plain text (no special tokens) and of a rendered chat sample."""

    name: str

    def count(self, text: str) -> int: ...

    def count_batch(self, texts: Sequence[str]) -> list[int]: ...

    def count_chat(self, messages: Messages) -> int: ...


def chat_overhead(counter: TokenCounter) -> int:
    """Tokens the chat template adds around the message contents (system prompt, role markers, ends).

    For templates that only wrap contents between special tokens, count_chat(m) equals this overhead plus
    the sum of count(content) over messages; tests check that on the real tokenizer.
    """
    cached = getattr(counter, "_selfctx_chat_overhead", None)
    if cached is not None:
        return int(cached)
    overhead = counter.count_chat(_PROBE_CHAT) - sum(counter.count(m["content"]) for m in _PROBE_CHAT)
    with contextlib.suppress(AttributeError):  # a slotted counter: recompute next time (cheap)
        counter._selfctx_chat_overhead = overhead  # type: ignore[attr-defined]
    return overhead


class HFTokenCounter:
    """Counts with a Hugging Face fast tokenizer's Rust backend (no special tokens, no truncation)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, name: str | None = None) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise SelfctxError(
                f"tokenizer {type(tokenizer).__name__} is not a fast (Rust) tokenizer: "
                "token counting needs one; use a model with a tokenizer.json or a GGUF vocabulary"
            )
        self._tokenizer = tokenizer
        self._backend = backend
        self._backend.no_truncation()
        self._backend.no_padding()
        self.name = name or getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    def count(self, text: str) -> int:
        return len(self._backend.encode(text, add_special_tokens=False).ids)

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(e.ids) for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def render_chat(self, messages: Messages) -> str:
        """The chat sample as text, with the model's chat template (or a plain fallback if it has none)."""
        if getattr(self._tokenizer, "chat_template", None):
            return str(self._tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False))
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages)

    def count_chat(self, messages: Messages) -> int:
        # Special-token strings in the rendered template are parsed as special tokens, as in training.
        return len(self._backend.encode(self.render_chat(messages), add_special_tokens=False).ids)


class RegexTokenCounter:
    """A deterministic counter for tests: a token is a word, a single punctuation mark, or a newline.

    It is additive across any boundary that does not split a word, like the real byte-level BPE is across
    the boundaries the assembler uses. Its chat template adds 3 tokens per message.
    """

    name = "regex-words"
    _TOKEN = re.compile(r"\w+|[^\w\s]|\n")

    def count(self, text: str) -> int:
        return sum(1 for _ in self._TOKEN.finditer(text))

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        return [self.count(t) for t in texts]

    def render_chat(self, messages: Messages) -> str:
        return "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages)

    def count_chat(self, messages: Messages) -> int:
        # "<role>" is one special token, plus a newline before and after the content: 3 per message.
        return sum(3 + self.count(m["content"]) for m in messages)


@functools.lru_cache(maxsize=4)
def _load_counter_cached(spec: ModelSpec) -> HFTokenCounter:
    from selfctx.models import load_tokenizer

    return HFTokenCounter(load_tokenizer(spec), name=spec.name)


def load_token_counter(model: str | ModelSpec) -> HFTokenCounter:
    """The token counter of a model spec (see selfctx.models.resolve_model). Cached per process."""
    from selfctx.models import resolve_model

    spec = resolve_model(model) if isinstance(model, str) else model
    return _load_counter_cached(spec)


def timed_load_token_counter(model: str | ModelSpec) -> tuple[HFTokenCounter, float]:
    """load_token_counter plus the seconds it took (the benchmark reports the tokenizer's load time)."""
    start = time.perf_counter()
    counter = load_token_counter(model)
    return counter, time.perf_counter() - start
