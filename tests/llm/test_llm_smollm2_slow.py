"""The real embedded SmolLM2-135M-Instruct through llama.cpp and transformers (marked slow)."""

from __future__ import annotations

import pytest

from selfctx.llm import ChatRequest, SamplingParams, make_llm

pytestmark = pytest.mark.slow

PROMPTS = ["Name one fruit.", "Write one sentence about the sea.", "What colour is the sky?"]


def _reqs(temperature: float, seed: int = 0, max_tokens: int = 16) -> list[ChatRequest]:
    return [
        ChatRequest.user(p, SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed + i))
        for i, p in enumerate(PROMPTS)
    ]


def test_llamacpp_generates_and_is_reproducible_with_the_same_seed() -> None:
    # one thread: llama.cpp's spinning worker threads crawl when other processes share the cores
    with make_llm("llamacpp", n_ctx=1024, n_threads=1) as llm:
        first = llm.generate(_reqs(0.8, seed=11))
        # other work in between (a shared prompt prefix, too) must not change what a seeded request writes
        llm.generate(
            [ChatRequest.user("Write one sentence about whales.", SamplingParams(max_tokens=4, seed=5))]
        )
        again = llm.generate(_reqs(0.8, seed=11)[::-1])[::-1]
        other_seed = llm.generate(_reqs(0.8, seed=99)[:2])
    assert all(c.ok and c.text.strip() for c in first)
    assert all(0 < c.completion_tokens <= 16 and c.prompt_tokens > 5 for c in first)
    assert [c.text for c in again] == [c.text for c in first]
    assert [c.text for c in other_seed] != [c.text for c in first[:2]]
    assert llm.stats.calls == 9 and llm.stats.errors == 0


def test_llamacpp_prompt_longer_than_context_is_an_errored_completion() -> None:
    with make_llm("llamacpp", n_ctx=256, n_threads=1) as llm:
        out = llm.generate(
            [ChatRequest.user("word " * 600), ChatRequest.user("Hi", SamplingParams(max_tokens=4))]
        )
    assert not out[0].ok and out[0].finish_reason == "error"
    assert out[1].ok


def test_hf_greedy_generation_batched_and_reproducible() -> None:
    with make_llm("hf", dtype="float32", device="cpu") as llm:
        first = llm.generate(_reqs(0.0, max_tokens=8)[:2])
        again = llm.generate(_reqs(0.0, max_tokens=8)[:1])
    assert all(c.ok and c.text.strip() for c in first)
    assert again[0].text == first[0].text
    assert all(c.completion_tokens > 0 for c in first)
