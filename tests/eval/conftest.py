"""Shared fixtures: the tiny byte-level model and tokenizer (fast) and the embedded SmolLM2 (slow)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_lm():  # type: ignore[no-untyped-def]
    from selfctx.tiny import TINY_TOKENIZER_VOCAB, tiny_llama, tiny_tokenizer

    return tiny_llama(seed=0, vocab_size=TINY_TOKENIZER_VOCAB), tiny_tokenizer()


@pytest.fixture(scope="session")
def smollm():  # type: ignore[no-untyped-def]
    from selfctx.models import load_causal_lm

    return load_causal_lm("smollm2-135m", dtype="float32")
