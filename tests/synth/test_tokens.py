from __future__ import annotations

import pytest

from selfctx.errors import SelfctxError
from selfctx.synth.tokens import HFTokenCounter, RegexTokenCounter, TokenCounter, chat_overhead


def test_regex_counter_counts_words_punctuation_and_newlines() -> None:
    counter = RegexTokenCounter()
    assert counter.count("Hello, world!\n\nBye") == 7
    assert counter.count_batch(["a b", "", "c."]) == [2, 0, 2]
    messages = [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c"}]
    assert counter.count_chat(messages) == 3 + 6
    assert chat_overhead(counter) == 6
    assert isinstance(counter, TokenCounter)


def test_hf_counter_on_a_byte_level_tokenizer_counts_without_special_tokens() -> None:
    from selfctx.tiny import tiny_tokenizer

    counter = HFTokenCounter(tiny_tokenizer(), name="tiny")
    assert counter.count("héllo") == len("héllo".encode())  # one token per byte, no BOS added
    assert counter.count_batch(["ab", "abc", ""]) == [2, 3, 0]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo!"}]
    rendered = counter.render_chat(messages)
    assert "<|im_start|>" in rendered
    # Special-token strings in the template count as one token each.
    assert counter.count_chat(messages) == chat_overhead(counter) + 5
    assert isinstance(counter, TokenCounter) and counter.name == "tiny"


def test_hf_counter_rejects_slow_tokenizers() -> None:
    with pytest.raises(SelfctxError, match="fast"):
        HFTokenCounter(object())  # type: ignore[arg-type]


@pytest.mark.slow
def test_embedded_tokenizer_loads_and_counts() -> None:
    import time

    from selfctx.synth.tokens import load_token_counter, timed_load_token_counter

    counter, seconds = timed_load_token_counter("smollm2-135m")
    assert seconds < 120
    assert counter.name == "smollm2-135m"
    assert counter.count("Passage 12:\nThe cat") == 9  # Pass age Ġ 1 2 : Ċ The Ġcat
    assert load_token_counter("smollm2-135m") is counter  # cached
    text = "The quick brown fox.\n" * 20_000  # ~100k tokens
    start = time.perf_counter()
    whole = counter.count(text)
    assert time.perf_counter() - start < 30
    cut = text.index("\n", len(text) // 2)  # a piece that starts with a newline does not merge with its left
    assert whole == sum(counter.count_batch([text[:cut], text[cut:]]))
    # ...whereas cutting after a space does: " quick" is one token, " " + "quick" are two.
    cut = text.index(" ", len(text) // 2) + 1
    assert whole == sum(counter.count_batch([text[:cut], text[cut:]])) - 1
