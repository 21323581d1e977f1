"""Needle as multiple choice: the items, and direct scoring equal to lm-eval's requests through SelfctxLM."""

from __future__ import annotations

import pytest
import torch

from selfctx.compress import CompressedLM, ExpertBattery
from selfctx.eval.needle_mc import PROMPT, make_items, score_items
from selfctx.tiny import TINY_TOKENIZER_VOCAB, tiny_llama, tiny_tokenizer

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from selfctx.eval.harness import SelfctxLM  # noqa: E402

HAYSTACK = "The ferry left at dawn. Gulls followed it past the lighthouse. The captain logged the tide. " * 20


def tiny_lm() -> CompressedLM:
    model = tiny_llama(vocab_size=TINY_TOKENIZER_VOCAB, initializer_range=0.2)
    battery = ExpertBattery.create(model, (4,), memory_input="span_last")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in battery.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return CompressedLM(model, tiny_tokenizer(), battery, window=16, native_context=512, sink=1)


def test_items_hide_the_right_value_at_spread_depths() -> None:
    items = make_items(tiny_tokenizer(), HAYSTACK, 400, 5, seed=1)
    assert all(abs(item.depth - k / 4) < 0.1 for k, item in enumerate(items))  # nearest sentence boundary
    for item in items:
        assert len(item.choices) == 4 and len(set(item.choices)) == 4
        assert f"is: {item.choices[item.label]}." in item.context
        assert all(f"is: {c}." not in item.context for k, c in enumerate(item.choices) if k != item.label)


@pytest.mark.parametrize("truncate", [None, 200])
def test_direct_scoring_picks_what_the_lm_eval_adapter_picks(truncate: int | None) -> None:
    lm = tiny_lm()
    items = make_items(tiny_tokenizer(), HAYSTACK, 400, 4, seed=2)
    ratio = None if truncate else 4
    direct = score_items(lm, items, ratio=ratio, truncate=truncate, answer_budget=32)
    harness = SelfctxLM(lm=lm, ratio=ratio, truncate=truncate, answer_budget=32)
    for item, row in zip(items, direct["per_item"], strict=True):
        prompt = PROMPT.format(context=item.context, question=item.question)
        requests = [
            Instance(request_type="loglikelihood", doc={}, arguments=(prompt, " " + c), idx=k)
            for k, c in enumerate(item.choices)
        ]
        scores = [s for s, _ in harness.loglikelihood(requests, disable_tqdm=True)]
        assert row["correct"] == (max(range(4), key=lambda k: scores[k]) == item.label)
    assert direct["items"] == 4 and 0.0 <= direct["acc"] <= 1.0
