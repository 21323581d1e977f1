"""hf backend on a tiny random Llama with a byte-level ChatML tokenizer built in code (no download)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from selfctx.llm import ChatRequest, SamplingParams  # noqa: E402
from selfctx.llm.hf_backend import HFLLM  # noqa: E402
from selfctx.tiny import TINY_TOKENIZER_VOCAB, tiny_llama, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def llm() -> HFLLM:
    model = tiny_llama(seed=0, vocab_size=TINY_TOKENIZER_VOCAB)
    with torch.no_grad():  # sharper logits than the default init, so greedy text varies with the prompt
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return HFLLM(model, tiny_tokenizer(), model_id="hf:tiny", batch_size=4)


def _greedy(text: str, max_tokens: int = 12, stop: tuple[str, ...] = ()) -> ChatRequest:
    return ChatRequest.user(text, SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=stop))


def test_batched_left_padded_greedy_equals_one_by_one(llm: HFLLM) -> None:
    reqs = [_greedy("hello world " * k, max_tokens=4 + k) for k in range(1, 6)]  # lengths differ: padding
    batched = llm.generate(reqs)
    single = [llm.generate([r])[0] for r in reqs]
    assert [c.text for c in batched] == [c.text for c in single]
    assert len({c.text for c in batched}) >= 3  # not a degenerate constant output
    assert [c.completion_tokens for c in batched] == [4 + k for k in range(1, 6)]  # per-row max_tokens
    assert all(c.finish_reason == "length" for c in batched)


def test_prompt_is_the_chat_template_and_tokens_are_counted(llm: HFLLM) -> None:
    req = ChatRequest.user("count me", SamplingParams(max_tokens=3, temperature=0.0), system="sys")
    out = llm.generate([req, _greedy("a much longer prompt than the other one")])
    ids = llm.tokenizer.apply_chat_template(
        req.as_openai_messages(), tokenize=False, add_generation_prompt=True
    )
    expected = len(llm.tokenizer(ids, add_special_tokens=False)["input_ids"])
    assert out[0].prompt_tokens == expected  # padding is not counted
    assert out[0].completion_tokens == 3


def test_seeded_sampling_is_reproducible_and_independent_of_batching(llm: HFLLM) -> None:
    reqs = [
        ChatRequest.user("sample", SamplingParams(max_tokens=8, temperature=1.0, seed=s)) for s in range(3)
    ]
    batched = [c.text for c in llm.generate(reqs)]
    alone = [llm.generate([r])[0].text for r in reqs]
    assert batched == alone
    assert len(set(batched)) == 3  # different seeds, different samples
    mixed = llm.generate([_greedy("other prompt"), reqs[2], _greedy("x" * 30)])
    assert mixed[1].text == batched[2]


def test_stop_strings_end_their_row_only(llm: HFLLM) -> None:
    free = llm.generate([_greedy("stop test", max_tokens=12)])[0].text
    stop = next(ch for ch in free[3:] if ch != "\ufffd")
    reqs = [_greedy("stop test", max_tokens=12, stop=(stop,)), _greedy("stop test", max_tokens=12)]
    stopped, unstopped = llm.generate(reqs)
    assert stopped.text == free[: free.index(stop)]
    assert stopped.finish_reason == "stop" and stopped.completion_tokens < 12
    assert unstopped.text == free and unstopped.finish_reason == "length"


def test_eos_ends_a_row_with_finish_stop(llm: HFLLM) -> None:
    eos = llm.eos_ids[0]
    done = llm._finish(_greedy("x"), [ord("a") + 5, ord("b") + 5, eos, 0, 0], prompt_tokens=4)
    assert done.finish_reason == "stop" and done.completion_tokens == 2


def test_top_p_samples_only_the_nucleus_in_proportion() -> None:
    from collections import Counter

    from selfctx.llm.hf_backend import _RowSampler

    request = ChatRequest.user("x", SamplingParams(seed=0, temperature=1.0, top_p=0.5))
    sampler = _RowSampler([request], torch.device("cpu"))
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))  # nucleus at top_p 0.5: tokens 0 and 1
    counts = Counter(int(sampler(None, logits).argmax()) for _ in range(400))  # type: ignore[arg-type]
    assert set(counts) == {0, 1}
    assert 1.0 < counts[0] / counts[1] < 1.8  # 4:3 in expectation
