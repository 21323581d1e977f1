"""The compressor on the real embedded SmolLM2 (slow: loads the model through transformers)."""

from __future__ import annotations

import resource

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lm():
    from selfctx.compress import CompressedLM

    return CompressedLM.from_pretrained(
        "smollm2-135m", window=512, ratios=(4, 8), dtype="float32", device="cpu"
    )


def test_short_input_matches_the_base_model(lm):
    ids = lm.tokenizer("The capital of France is Paris. The capital of Italy is", return_tensors="pt")[
        "input_ids"
    ]
    with torch.no_grad():
        assert torch.allclose(lm.logits(ids, ratio=8), lm.model(ids).logits, atol=1e-4)


def test_long_input_runs_end_to_end_in_bounded_memory(lm):
    text = " ".join(f"Item {i} is a {['red', 'green', 'blue'][i % 3]} box." for i in range(800))
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"][: 4 * 512 + 100]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    memory = lm.compress(ids, ratio=8)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert memory.num_entries == 4 * 64 and memory.tail_ids.numel() == 100
    assert grown_mib < 1024  # a 4-window pass must not hold anything like full-attention activations
    result = lm.generate(memory=memory, prompt="What colour is item 3?", max_new_tokens=8)
    assert result.expert == "lora-r8" and result.memory_entries == 256
    assert result.achieved_ratio == pytest.approx(len(ids) / (256 + 100))
