from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from selfctx.compress import CompressedLM, ExpertBattery
from selfctx.serve import ServeConfig, serve_in_thread
from selfctx.tiny import TINY_TOKENIZER_VOCAB, tiny_llama, tiny_tokenizer

# Routing: answer budget 128 in a 512 native context with window 16 -> documents over ~384 byte-tokens are
# compressed (x8 here), and documents over ~2960 tokens fit no expert.
TINY_CONFIG: dict[str, Any] = dict(
    model_name="tiny", answer_budget=128, default_max_tokens=8, max_input_tokens=4000, max_body_bytes=64_000
)


def tiny_lm(seed: int = 0) -> CompressedLM:
    """A tiny random Llama + byte tokenizer; window 16, native context 512, experts x2/x4/x8."""
    model = tiny_llama(seed=seed, vocab_size=TINY_TOKENIZER_VOCAB)
    battery = ExpertBattery.create(model, (2, 4, 8))
    return CompressedLM(model, tiny_tokenizer(), battery, window=16, native_context=512, name="tiny")


def document(tag: str, words: int = 150) -> str:
    return " ".join(f"{tag}{i}" for i in range(words))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny matmuls on a shared 2-core machine are several times faster on one thread than fighting for two.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lm() -> CompressedLM:
    return tiny_lm(seed=3)


@pytest.fixture
def server(lm: CompressedLM) -> Iterator[Any]:
    with serve_in_thread(lm, ServeConfig(**TINY_CONFIG)) as running:
        yield running
