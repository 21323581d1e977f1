"""The server against the official `openai` client (and raw httpx for what the client will not send)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from selfctx.compress import CompressedLM
from selfctx.llm import ChatRequest, SamplingParams, make_llm
from selfctx.serve import ServeConfig, serve_in_thread

from .conftest import TINY_CONFIG, document


def _client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)


def _ask(client: openai.OpenAI, doc: str, question: str, **kw: Any) -> Any:
    return client.chat.completions.create(
        model="tiny",
        messages=[{"role": "system", "content": doc}, {"role": "user", "content": question}],
        **kw,
    )


def _reference(lm: CompressedLM, doc: str, question: str, max_tokens: int) -> str:
    """The same answer computed directly (no server), with the ratio the server's router picks."""
    assert lm.tokenizer is not None
    n = len(lm.tokenizer(lm.split_chat(doc, "")[0], add_special_tokens=False)["input_ids"])
    ratio = lm.route_for(n, TINY_CONFIG["answer_budget"]).ratio
    return lm.generate(context=doc, prompt=question, ratio=ratio, max_new_tokens=max_tokens).text


def test_plain_chat_reports_usage_expert_and_memory_reuse(server: Any, lm: CompressedLM) -> None:
    client, doc = _client(server), document("plain")
    first = _ask(client, doc, "Which word comes first?", max_tokens=6)
    second = _ask(client, doc, "Which word comes first?", max_tokens=6)
    ext1, ext2 = first.model_extra["selfctx"], second.model_extra["selfctx"]
    assert ext1["memory_reused"] is False and ext1["memory_source"] == "compressed"
    assert ext2["memory_reused"] is True and ext2["memory_source"] == "ram" and ext2["compress_seconds"] == 0
    assert ext1["context_id"] == ext2["context_id"]
    assert ext1["ratio"] in (2, 4, 8) and ext1["expert"] == f"lora-r{ext1['ratio']}"
    assert (
        1 < ext1["requested_ratio"] <= ext1["ratio"]
        and ext1["achieved_ratio"] > 2
        and ext1["memory_bytes"] > 0
    )
    assert first.usage.completion_tokens == 6 and first.choices[0].finish_reason == "length"
    assert first.usage.prompt_tokens > ext1["context_tokens"] > 600
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.choices[0].message.content == _reference(lm, doc, "Which word comes first?", 6)
    assert client.models.list().data[0].id == "tiny"
    assert httpx.get(server.base_url.removesuffix("/v1") + "/health").json()["status"] == "ok"


def test_streaming_chat_and_text_completion(server: Any) -> None:
    client, doc = _client(server), document("stream")
    plain = _ask(client, doc, "Summarise.", max_tokens=10, temperature=0.7, seed=5)
    chunks = list(
        _ask(
            client,
            doc,
            "Summarise.",
            max_tokens=10,
            temperature=0.7,
            seed=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].model_extra["selfctx"]["memory_reused"] is True
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    )

    prompt = f"{doc}\n\nThe last word is"
    done = client.completions.create(model="tiny", prompt=prompt, max_tokens=7)
    streamed = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=7, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text
    assert done.model_extra["selfctx"]["ratio"] > 1 and done.usage.completion_tokens == 7


def test_over_long_and_oversized_inputs_are_4xx(server: Any) -> None:
    client = _client(server)
    with pytest.raises(openai.BadRequestError) as too_many_tokens:  # over max_input_tokens (4000)
        _ask(client, document("long", 700), "Q?", max_tokens=4)
    assert "4000" in str(too_many_tokens.value) and too_many_tokens.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as no_expert:  # within the limit but no expert can fit it
        _ask(client, "word " * 660, "Q?", max_tokens=4)  # 3300 tokens
    assert "does not fit" in str(no_expert.value)
    with pytest.raises(openai.BadRequestError, match="answer budget"):
        _ask(client, document("ok"), "Q?", max_tokens=500)
    with pytest.raises(openai.APIStatusError) as too_big:  # over max_body_bytes (64 kB)
        _ask(client, "y" * 70_000, "Q?", max_tokens=4)
    assert too_big.value.status_code == 413
    assert _ask(client, document("ok"), "Q?", max_tokens=3).usage.completion_tokens == 3  # still serving


def test_malformed_requests_are_4xx_and_the_server_survives(server: Any) -> None:
    url = server.base_url + "/chat/completions"
    bad_bodies: list[Any] = [
        b"{not json",
        b"[]",
        {"model": "tiny"},
        {"messages": []},
        {"messages": [{"role": "wizard", "content": "hi"}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1},
        {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
        {"messages": [{"role": "user", "content": "hi"}], "n": 3},
        {"messages": [{"role": "user", "content": "hi"}], "context_id": "nope"},
    ]
    for body in bad_bodies:
        response = (
            httpx.post(url, content=body, headers={"content-type": "application/json"})
            if isinstance(body, bytes)
            else httpx.post(url, json=body)
        )
        assert 400 <= response.status_code < 500, (body, response.status_code)
        assert response.json()["error"]["message"]
    assert httpx.post(server.base_url + "/completions", json={"prompt": ["a", "b"]}).status_code == 400
    with pytest.raises(openai.BadRequestError):
        _client(server).chat.completions.create(model="tiny", messages=[{"role": "user"}])  # type: ignore[typeddict-item]
    assert _ask(_client(server), "short doc", "Q?", max_tokens=2).usage.completion_tokens == 2


def test_32_concurrent_requests_are_batched_per_memory_and_all_correct(server: Any, lm: CompressedLM) -> None:
    docs = [document("alpha"), document("beta")]
    jobs = [(docs[i % 2], f"Question number {i}?", 4 + i % 5) for i in range(32)]
    client = _client(server)
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda job: _ask(client, job[0], job[1], max_tokens=job[2]), jobs))
    stats = httpx.get(server.base_url.removesuffix("/v1") + "/stats").json()
    assert stats["worker"]["compressions"] == 2  # each document compressed once
    assert stats["worker"]["max_batch"] > 1 and stats["worker"]["batches"] < 32
    assert stats["server"]["max_in_flight"] > 1
    for (doc, question, max_tokens), answer in zip(jobs, answers, strict=True):
        assert answer.usage.completion_tokens == max_tokens
        assert answer.choices[0].message.content == _reference(lm, doc, question, max_tokens)
    sources = [a.model_extra["selfctx"]["memory_source"] for a in answers]
    assert sources.count("compressed") == 2 and set(sources) <= {"compressed", "batch", "ram"}
    assert sum(a.model_extra["selfctx"]["memory_reused"] for a in answers) == 30


def test_registered_context_id_is_reused(server: Any, lm: CompressedLM) -> None:
    doc = document("registered")
    registered = httpx.post(server.base_url + "/contexts", json={"text": doc}, timeout=60).json()
    assert registered["selfctx"]["memory_source"] == "compressed" and registered["selfctx"]["ratio"] > 1
    answer = _client(server).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Name one word."}],
        max_tokens=5,
        extra_body={"context_id": registered["id"]},
    )
    assert answer.model_extra["selfctx"]["memory_reused"] is True
    assert answer.model_extra["selfctx"]["context_id"] == registered["id"]
    assert answer.choices[0].message.content == _reference(lm, doc, "Name one word.", 5)


def test_memories_persist_across_server_processes(lm: CompressedLM, tmp_path: Path) -> None:
    config = ServeConfig(**{**TINY_CONFIG, "memory_dir": tmp_path})
    doc = document("disk")
    with serve_in_thread(lm, config) as first:
        made = _ask(_client(first), doc, "Q?", max_tokens=4)
    with serve_in_thread(lm, config) as second:  # a fresh app: empty RAM cache, same folder
        loaded = _ask(_client(second), doc, "Q?", max_tokens=4)
    assert made.model_extra["selfctx"]["memory_source"] == "compressed"
    assert loaded.model_extra["selfctx"]["memory_source"] == "disk"
    assert loaded.choices[0].message.content == made.choices[0].message.content


def test_inflight_limit_answers_429(lm: CompressedLM) -> None:
    with serve_in_thread(lm, ServeConfig(**{**TINY_CONFIG, "max_inflight": 1})) as server:
        client = _client(server)
        answers: list[Any] = []
        slow = threading.Thread(
            target=lambda: answers.append(_ask(client, document("busy", 300), "Q?", max_tokens=60))
        )
        slow.start()
        health = server.base_url.removesuffix("/v1") + "/health"
        deadline = time.monotonic() + 30
        while httpx.get(health).json()["in_flight"] < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        with pytest.raises(openai.RateLimitError):
            _ask(client, "short", "Q?", max_tokens=2)
        slow.join()
        assert answers[0].usage.completion_tokens == 60
        assert _ask(client, "short", "Q?", max_tokens=2).usage.completion_tokens == 2


def test_shutdown_lets_in_flight_requests_finish(lm: CompressedLM) -> None:
    server = serve_in_thread(lm, ServeConfig(**TINY_CONFIG))
    client = _client(server)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_ask, client, document(f"bye{i}", 300), "Q?", max_tokens=30) for i in range(4)]
        health = server.base_url.removesuffix("/v1") + "/health"
        while httpx.get(health).json()["in_flight"] < 4:
            time.sleep(0.005)
        server.stop()
        answers = [f.result() for f in futures]
    assert all(a.usage.completion_tokens == 30 for a in answers)
    with pytest.raises(httpx.ConnectError):
        httpx.get(health)


def test_synth_openai_backend_writes_through_the_server(server: Any, lm: CompressedLM) -> None:
    requests = [
        ChatRequest.user(f"Write a line about item {i}.", SamplingParams(max_tokens=6, temperature=0.0))
        for i in range(5)
    ]
    requests.append(
        ChatRequest.user(
            f"{document('syn')}\n\nSummarise that.", SamplingParams(max_tokens=6, temperature=0.9, seed=3)
        )
    )
    with make_llm("openai", "tiny", base_url=server.base_url, concurrency=4, max_retries=0) as llm:
        completions = llm.generate(requests)
    assert all(c.ok and c.completion_tokens == 6 for c in completions), [c.error for c in completions]
    for request, completion in zip(requests[:5], completions[:5], strict=True):
        question = request.messages[-1].content
        assert completion.text == lm.generate(context="", prompt=question, ratio=1, max_new_tokens=6).text
    assert completions[5].prompt_tokens > 600  # the document was compressed and counted
