"""A tokenized training example and the two ways text becomes one: a chat with answer-only labels, and a
long token stream packed into full-length sequences."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from selfctx.errors import SelfctxError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # IGNORE_INDEX where no loss is taken; same length as input_ids
    source: str

    @property
    def n_targets(self) -> int:
        return sum(1 for t in self.labels[1:] if t != IGNORE_INDEX)


def tokenize_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]]) -> Example | None:
    """Token ids of the rendered conversation; labels only on the assistant turns (answer-only loss).

    Assistant spans are located in the rendered text by rendering growing prefixes of the conversation
    (chat templates are prefix-consistent), then mapped to tokens through the tokenizer's offsets.
    """
    messages = list(messages)
    if not messages or messages[-1].get("role") != "assistant":
        return None
    render = tokenizer.apply_chat_template
    full = str(render(messages, tokenize=False))
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or i == 0:
            continue
        start_text = str(render(messages[:i], tokenize=False, add_generation_prompt=True))
        end_text = str(render(messages[: i + 1], tokenize=False))
        if not full.startswith(start_text) or not full.startswith(end_text):
            raise SelfctxError(
                "the tokenizer's chat template is not prefix-consistent, so assistant tokens cannot be "
                "located: use a model whose template renders a conversation as the concatenation of its turns"
            )
        spans.append((len(start_text), len(end_text)))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for k, (char_start, _) in enumerate(encoded["offset_mapping"]):
        if any(start <= char_start < end for start, end in spans):
            labels[k] = ids[k]
    return Example(tuple(ids), tuple(labels), "chat")


def pack_text(token_stream: Sequence[int], length: int, min_tokens: int, source: str) -> list[Example]:
    """Cut one long token stream into full-length sequences (the tail is kept if >= min_tokens)."""
    out = []
    for start in range(0, len(token_stream), length):
        chunk = tuple(token_stream[start : start + length])
        if len(chunk) >= min_tokens:
            out.append(Example(chunk, chunk, source))
    return out
