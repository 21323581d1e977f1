"""What the OpenAI surface refuses (parameters it cannot honour, other models, unknown routes), what it
accepts (one user message holding document and question), what it reports (cached tokens) and how it lets
go of abandoned work -- all through the official `openai` client."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest
import torch

from selfctx.compress import CompressedLM, ExpertBattery
from selfctx.serve import ServeConfig, serve_in_thread
from selfctx.serve.compressing import compress_unless_abandoned
from selfctx.tiny import TINY_TOKENIZER_VOCAB, tiny_llama, tiny_tokenizer

from .conftest import TINY_CONFIG, document


def _client(server: Any, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, **{"timeout": 60, **kw})


def _chat(client: openai.OpenAI, content: str, **kw: Any) -> Any:
    return client.chat.completions.create(
        model=kw.pop("model", "tiny"), messages=[{"role": "user", "content": content}], **kw
    )


def _reference(lm: CompressedLM, context: str, question: str, max_tokens: int) -> str:
    """The answer computed directly: `context` compressed with the server's expert, `question` read raw."""
    assert lm.tokenizer is not None
    n = len(lm.tokenizer(lm.split_chat(context, "")[0], add_special_tokens=False)["input_ids"])
    ratio = lm.route_for(n, TINY_CONFIG["answer_budget"]).ratio
    return lm.generate(context=context, prompt=question, ratio=ratio, max_new_tokens=max_tokens).text


_TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("endpoint", "sent", "param"),
    [
        ("chat", {"tools": [_TOOL]}, "tools"),
        ("chat", {"tool_choice": "required"}, "tool_choice"),
        ("chat", {"functions": [_TOOL["function"]], "function_call": "auto"}, "functions"),
        ("chat", {"parallel_tool_calls": True}, "parallel_tool_calls"),
        ("chat", {"response_format": {"type": "json_object"}}, "response_format"),
        ("chat", {"logprobs": True, "top_logprobs": 2}, "logprobs"),
        ("chat", {"top_logprobs": 2}, "top_logprobs"),
        ("chat", {"n": 2}, "n"),
        ("chat", {"presence_penalty": 0.5}, "presence_penalty"),
        ("chat", {"frequency_penalty": -1.0}, "frequency_penalty"),
        ("chat", {"logit_bias": {"42": 5}}, "logit_bias"),
        ("text", {"logprobs": 0}, "logprobs"),
        ("text", {"echo": True}, "echo"),
        ("text", {"best_of": 3}, "best_of"),
        ("text", {"suffix": "and so on."}, "suffix"),
    ],
)
def test_parameters_it_cannot_honour_are_refused_by_name(
    server: Any, endpoint: str, sent: dict[str, Any], param: str
) -> None:
    client = _client(server)
    with pytest.raises(openai.BadRequestError) as refused:
        if endpoint == "chat":
            _chat(client, "Hello?", max_tokens=2, **sent)
        else:
            client.completions.create(model="tiny", prompt="Hello", max_tokens=2, **sent)
    assert refused.value.param == param and refused.value.code == "unsupported_parameter"
    assert refused.value.type == "invalid_request_error" and param in refused.value.message


def test_values_that_ask_for_nothing_are_accepted(server: Any) -> None:
    client = _client(server)
    off: dict[str, Any] = dict(
        n=1,
        logprobs=False,
        presence_penalty=0,
        frequency_penalty=0.0,
        logit_bias={},
        tool_choice="none",
        response_format={"type": "text"},
        user="someone",  # honoured by ignoring it: it only labels the request
    )
    assert _chat(client, "Hello?", max_tokens=2, **off).usage.completion_tokens == 2
    text = client.completions.create(
        model="tiny", prompt="Hello", max_tokens=2, echo=False, best_of=1, n=1, suffix=None
    )
    assert text.usage.completion_tokens == 2


def test_another_model_is_404_model_not_found(server: Any) -> None:
    client = _client(server)
    for ask in (
        lambda: _chat(client, "Hello?", model="gpt-4o", max_tokens=2),
        lambda: client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hello", max_tokens=2),
    ):
        with pytest.raises(openai.NotFoundError) as missing:
            ask()
        assert missing.value.code == "model_not_found" and missing.value.param == "model"
        assert "'tiny'" in missing.value.message  # says which model it does serve
    assert _chat(client, "Hello?", model="selfctx", max_tokens=2).model == "tiny"  # the documented alias


def test_unknown_routes_and_methods_answer_in_openai_shape(server: Any) -> None:
    client = _client(server)
    with pytest.raises(openai.NotFoundError) as no_route:
        client.get("/embeddings", cast_to=object)
    assert no_route.value.code == "not_found" and no_route.value.type == "invalid_request_error"
    assert "/v1/chat/completions" in no_route.value.message
    with pytest.raises(openai.APIStatusError) as wrong_method:
        client.get("/chat/completions", cast_to=object)
    assert wrong_method.value.status_code == 405 and wrong_method.value.code == "method_not_allowed"
    assert wrong_method.value.response.headers["allow"] == "POST" and "POST" in wrong_method.value.message


def test_cached_tokens_count_the_reused_context(server: Any) -> None:
    client, doc = _client(server), document("cached")
    messages: list[Any] = [{"role": "system", "content": doc}, {"role": "user", "content": "First word?"}]
    fresh = client.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    again = client.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    streamed = list(
        client.chat.completions.create(
            model="tiny",
            messages=messages,
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    context_tokens = fresh.model_extra["selfctx"]["context_tokens"]
    assert fresh.usage.prompt_tokens_details.cached_tokens == 0
    assert again.usage.prompt_tokens_details.cached_tokens == context_tokens > 600
    assert streamed[-1].usage.prompt_tokens_details.cached_tokens == context_tokens


@pytest.mark.parametrize("separator", ["\n", " "], ids=["line", "sentence"])
def test_one_message_with_document_and_question_is_answered_and_reused(
    server: Any, lm: CompressedLM, separator: str
) -> None:
    client, doc = _client(server), f"{document('single')}."  # ~1000 tokens on one line
    first = _chat(client, f"{doc}{separator}Which word comes first?", max_tokens=5)
    second = _chat(client, f"{doc}{separator}Which word comes last of all?", max_tokens=5)
    ext1, ext2 = first.model_extra["selfctx"], second.model_extra["selfctx"]
    assert ext1["memory_source"] == "compressed" and ext1["ratio"] > 1 and ext1["context_tokens"] > 600
    assert ext2["memory_source"] == "ram" and ext2["context_id"] == ext1["context_id"]
    assert second.usage.prompt_tokens_details.cached_tokens == ext1["context_tokens"]
    assert first.choices[0].message.content == _reference(lm, doc, "Which word comes first?", 5)


def test_a_message_without_any_boundary_keeps_its_last_words_raw(server: Any) -> None:
    words = document("nobreak", 200)  # no paragraph, line or sentence end: ~2000 tokens of words
    answer = _chat(_client(server), words, max_tokens=4)
    assert answer.usage.completion_tokens == 4 and answer.model_extra["selfctx"]["ratio"] > 1
    question_tokens = answer.usage.prompt_tokens - answer.model_extra["selfctx"]["context_tokens"]
    assert TINY_CONFIG["answer_budget"] - 16 < question_tokens + 4 <= TINY_CONFIG["answer_budget"]


def test_abandonable_compression_makes_the_memory_compress_makes(lm: CompressedLM) -> None:
    ids = list(range(10, 250)) * 4
    made = compress_unless_abandoned(lm, ids, 4, lambda: False)
    expected = lm.compress(ids, ratio=4)
    assert made.info == expected.info and torch.equal(made.tail_ids, expected.tail_ids)
    for ours, theirs in zip(made.layers, expected.layers, strict=True):
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)


def test_shutdown_does_not_wait_for_a_compression_whose_client_left() -> None:
    # A wider tiny model and a long document: compressing it all takes well over ten seconds on one thread,
    # in groups of ~0.1 s (group_tokens=256), so a client that leaves after 1 s frees the worker at once.
    base = tiny_llama(
        seed=1,
        vocab_size=TINY_TOKENIZER_VOCAB,
        hidden_size=512,
        intermediate_size=1024,
        layers=4,
        max_position_embeddings=8192,
    )
    lm = CompressedLM(
        base,
        tiny_tokenizer(),
        ExpertBattery.create(base, (2, 4, 8)),
        window=16,
        native_context=8192,
        group_tokens=256,
        name="wide",
    )
    config = ServeConfig(model_name="wide", answer_budget=128, max_input_tokens=60_000, max_body_bytes=2**20)
    doc = "abcdefghij " * 4000  # 44k tokens
    server = serve_in_thread(lm, config)
    try:
        with pytest.raises(openai.APITimeoutError):
            _chat(_client(server, timeout=1.0), f"{doc}\n\nWhat comes after j?", model="wide", max_tokens=2)
    finally:
        stopping = time.perf_counter()
        server.stop()
        stopped_in = time.perf_counter() - stopping
    stats = server.app.state.worker.stats
    assert stats.abandoned == 1 and stats.compressions == 0  # stopped before the memory was complete
    assert stopped_in < 5.0
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.base_url.removesuffix("/v1") + "/health")
