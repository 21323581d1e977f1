"""A built-in key -> value recall task (data source kind `recall`): code words and their numbers spread over a
long context, then a question about one of them, answer-only loss.

It needs no files and no model, so the `cpu-smoke` preset and the tests can train experts anywhere; and
answering needs what the compressed memory of earlier windows holds, which is exactly what the experts learn.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from selfctx.train.data import Example, tokenize_chat

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_WORDS = (
    "amber",
    "basil",
    "cedar",
    "delta",
    "ember",
    "falcon",
    "garnet",
    "harbor",
    "indigo",
    "juniper",
    "kestrel",
    "lumen",
    "marble",
    "nectar",
    "onyx",
    "pepper",
    "quartz",
    "raven",
    "sable",
    "thistle",
    "umber",
    "violet",
    "willow",
    "xenon",
    "yarrow",
    "zephyr",
)
DEFAULT_SAMPLES = 64


def recall_messages(rng: random.Random, target_chars: int) -> list[dict[str, str]]:
    """One conversation: records until the context reaches ~target_chars, a question, its answer."""
    records: list[tuple[str, str]] = []
    used: set[str] = set()
    text_len = 0
    while text_len < target_chars:
        key = f"{rng.choice(_WORDS)}-{rng.randrange(100)}"
        if key in used:
            continue
        used.add(key)
        value = str(rng.randrange(1000, 10000))
        records.append((key, value))
        text_len += len(key) + len(value) + 20
    key, value = records[rng.randrange(len(records))]
    context = " ".join(f"The number of {k} is {v}." for k, v in records)
    return [
        {"role": "user", "content": f"{context}\n\nWhat is the number of {key}?"},
        {"role": "assistant", "content": value},
    ]


def recall_examples(
    tokenizer: PreTrainedTokenizerBase, n_samples: int, min_tokens: int, max_tokens: int, seed: int
) -> list[Example]:
    """`n_samples` tokenized conversations of min_tokens..max_tokens tokens (lengths drawn uniformly)."""
    rng = random.Random(f"recall-{seed}")
    out: list[Example] = []
    attempts = 0
    while len(out) < n_samples and attempts < 20 * n_samples:
        attempts += 1
        target = rng.randint(min_tokens, max_tokens)
        chars = target  # a first guess, corrected by the measured chars-per-token of the first try
        for _ in range(3):
            example = tokenize_chat(tokenizer, recall_messages(random.Random(rng.random()), chars))
            assert example is not None
            n = len(example.input_ids)
            if min_tokens <= n <= max_tokens:
                out.append(Example(example.input_ids, example.labels, "recall"))
                break
            chars = max(16, int(chars * target / max(1, n)))
    return out
