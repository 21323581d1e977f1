"""`tiny` is one more model spec: models.py resolves it, builds it from a seed and reads its config, so no
caller compares model names."""

from __future__ import annotations

import torch

from selfctx.models import hub_id, load_causal_lm, load_model_config, resolve_model
from selfctx.tiny import TINY, TINY_TOKENIZER_VOCAB


def test_tiny_resolves_to_an_in_memory_spec_without_files() -> None:
    spec = resolve_model(TINY)
    assert spec.in_memory and spec.folder == "" and not spec.is_gguf and not spec.runs_on_llamacpp
    assert not resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").in_memory
    assert hub_id(TINY) is None
    assert load_model_config(TINY).vocab_size == TINY_TOKENIZER_VOCAB


def test_tiny_is_built_from_its_seed_with_overrides_and_reads_text() -> None:
    a, tokenizer = load_causal_lm(TINY, dtype="float32", device="cpu", seed=3)
    b, _ = load_causal_lm(TINY, dtype="float32", device="cpu", seed=3)
    c, _ = load_causal_lm(
        TINY, dtype="float32", device="cpu", seed=4, in_memory_config={"max_position_embeddings": 2048}
    )
    assert c.config.max_position_embeddings == 2048 and a.config.max_position_embeddings == 1024
    ids = tokenizer("a short text", return_tensors="pt").input_ids
    assert int(ids.max()) < a.config.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(a(ids).logits, b(ids).logits)
        assert not torch.allclose(a(ids).logits, c(ids).logits)
