"""The openai backend against a real OpenAI-compatible HTTP server on localhost (fake_openai_server)."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from fake_openai_server import Fault, serve_in_thread
from selfctx.llm import ChatRequest, EchoLLM, SamplingParams, make_llm
from selfctx.llm.echo import echo_text
from selfctx.llm.openai_backend import OpenAICompatLLM


def _reqs(n: int, tag: str = "") -> list[ChatRequest]:
    return [ChatRequest.user(f"q{i}{tag}", SamplingParams(max_tokens=50, seed=i)) for i in range(n)]


def _client(url: str, **kw: float) -> OpenAICompatLLM:
    opts = {"concurrency": 4, "timeout": 5.0, "max_retries": 3, "backoff_s": 0.01, **kw}
    llm = make_llm(
        "openai",
        "echo",
        base_url=url,
        concurrency=int(opts.pop("concurrency")),
        timeout=opts.pop("timeout"),
        max_retries=int(opts.pop("max_retries")),
        **opts,
    )
    assert isinstance(llm, OpenAICompatLLM)
    return llm


def test_order_content_and_usage_preserved() -> None:
    reqs = _reqs(25)
    with serve_in_thread(EchoLLM()) as server, _client(server.base_url, concurrency=6) as llm:
        out = llm.generate(reqs)
    assert [c.text for c in out] == [echo_text(r) for r in reqs]
    assert all(c.ok and c.finish_reason == "stop" for c in out)
    assert all(c.prompt_tokens == 1 and c.completion_tokens == 4 for c in out)
    assert llm.stats.calls == 25 and llm.stats.errors == 0 and llm.stats.retries == 0
    assert llm.stats.completion_tokens == 100


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_limit_is_respected_and_reached(concurrency: int) -> None:
    with (
        serve_in_thread(EchoLLM(delay_s=0.03)) as server,
        _client(server.base_url, concurrency=concurrency) as llm,
    ):
        llm.generate(_reqs(12))
        assert server.stats.max_in_flight == concurrency
        assert server.stats.requests == 12


def test_server_batches_concurrent_requests() -> None:
    with (
        serve_in_thread(EchoLLM(delay_s=0.02), max_batch=4) as server,
        _client(server.base_url, concurrency=8) as llm,
    ):
        llm.generate(_reqs(16))
        assert 1 < server.stats.max_batch <= 4
        assert server.stats.batches < 16


def test_retries_500_then_succeeds() -> None:
    reqs = _reqs(6)
    reqs[2] = ChatRequest.user("flaky one", SamplingParams(seed=2))
    with (
        serve_in_thread(EchoLLM(), faults=[Fault(match="flaky", attempts=2)]) as server,
        _client(server.base_url) as llm,
    ):
        out = llm.generate(reqs)
        assert server.stats.statuses[500] == 2
    assert all(c.ok for c in out)
    assert out[2].text == echo_text(reqs[2])
    assert llm.stats.retries == 2 and llm.stats.errors == 0


def test_429_backs_off_at_least_retry_after() -> None:
    with (
        serve_in_thread(
            EchoLLM(), faults=[Fault(match="busy", attempts=1, status=429, retry_after_s=0.4)]
        ) as server,
        _client(server.base_url) as llm,
    ):
        started = time.perf_counter()
        out = llm.generate([ChatRequest.user("busy")])
        elapsed = time.perf_counter() - started
    assert out[0].ok and llm.stats.retries == 1
    assert elapsed >= 0.4


def test_backoff_grows_exponentially_with_cap_and_jitter() -> None:
    llm = OpenAICompatLLM("http://127.0.0.1:9/v1", "m", backoff_s=0.1, max_backoff_s=1.0)
    waits = {attempt: [llm._backoff(attempt, None) for _ in range(300)] for attempt in range(6)}
    for attempt, values in waits.items():
        ceiling = min(1.0, 0.1 * 2**attempt)
        assert all(0 <= v <= ceiling for v in values)
        assert max(values) > 0.7 * ceiling  # jitter spans the range...
        assert len(set(values)) > 250  # ...and is random
    llm.close()


def test_timeouts_are_counted_and_retried() -> None:
    with (
        serve_in_thread(
            EchoLLM(), faults=[Fault(match="slow", kind="delay", delay_s=1.5, attempts=1)]
        ) as server,
        _client(server.base_url, timeout=0.3) as llm,
    ):
        out = llm.generate([ChatRequest.user("slow one"), ChatRequest.user("quick one")])
    assert all(c.ok for c in out)
    assert llm.stats.timeouts == 1 and llm.stats.retries == 1


def test_permanent_failure_becomes_errored_completion_and_batch_completes() -> None:
    reqs = _reqs(8)
    reqs[4] = ChatRequest.user("dead call")
    with (
        serve_in_thread(EchoLLM(), faults=[Fault(match="dead", attempts=-1)]) as server,
        _client(server.base_url, max_retries=2) as llm,
    ):
        out = llm.generate(reqs)
        assert server.stats.statuses[500] == 3  # first try + 2 retries
    assert not out[4].ok and out[4].finish_reason == "error" and "500" in (out[4].error or "")
    assert [c.text for i, c in enumerate(out) if i != 4] == [
        echo_text(r) for i, r in enumerate(reqs) if i != 4
    ]
    assert llm.stats.errors == 1 and llm.stats.retries == 2


def test_client_errors_are_not_retried() -> None:
    with (
        serve_in_thread(EchoLLM(), faults=[Fault(match="wrong", status=400, attempts=-1)]) as server,
        _client(server.base_url) as llm,
    ):
        out = llm.generate([ChatRequest.user("wrong request")])
        assert server.stats.requests == 1
    assert not out[0].ok and "400" in (out[0].error or "")
    assert llm.stats.retries == 0 and llm.stats.errors == 1


def test_connection_refused_is_retried_then_errors() -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with _client(f"http://127.0.0.1:{port}/v1", max_retries=2) as llm:
        out = llm.generate(_reqs(2))
    assert all(not c.ok and "connection" in (c.error or "") for c in out)
    assert llm.stats.retries == 4 and llm.stats.errors == 2


def test_server_honours_sampling_fields_and_rejects_bad_bodies() -> None:
    with serve_in_thread(EchoLLM(), model_name="my-model") as server:
        base = server.base_url
        assert httpx.get(base.removesuffix("/v1") + "/health").json() == {"status": "ok"}
        assert httpx.get(f"{base}/models").json()["data"][0]["id"] == "my-model"
        body = {
            "model": "my-model",
            "messages": [{"role": "user", "content": "a b c STOP d"}],
            "seed": 42,
            "max_tokens": 9,
            "stop": "STOP",
        }
        data = httpx.post(f"{base}/chat/completions", json=body).json()
        text = data["choices"][0]["message"]["content"]
        assert text.startswith("echo 42 ") and text.endswith("a b c ")  # seed and stop reached the backend
        assert (
            data["usage"]["total_tokens"]
            == data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]
        )
        body["max_tokens"] = 2
        assert (
            httpx.post(f"{base}/chat/completions", json=body).json()["choices"][0]["finish_reason"]
            == "length"
        )
        assert httpx.post(f"{base}/chat/completions", json={"messages": []}).status_code == 400
        assert httpx.post(f"{base}/chat/completions", content=b"not json").status_code == 400
        assert httpx.post(f"{base}/chat/completions", json={**body, "stream": True}).status_code == 400


def test_official_openai_client_talks_to_the_server() -> None:
    from openai import OpenAI

    with serve_in_thread(EchoLLM()) as server:
        client = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "hello"}], seed=3, max_tokens=10
        )
    assert reply.choices[0].message.content is not None
    assert reply.choices[0].message.content.startswith("echo 3 ")
    assert reply.usage is not None and reply.usage.completion_tokens == 4


def test_generate_iter_yields_every_index_once_as_calls_finish() -> None:
    reqs = _reqs(10)
    with serve_in_thread(EchoLLM(delay_s=0.01)) as server, _client(server.base_url, concurrency=3) as llm:
        got = dict(llm.generate_iter(reqs))
    assert sorted(got) == list(range(10))
    assert [got[i].text for i in range(10)] == [echo_text(r) for r in reqs]


def test_api_key_from_argument_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with OpenAICompatLLM("http://127.0.0.1:9/v1", "m") as llm:
        assert "authorization" not in llm._client.headers
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    with OpenAICompatLLM("http://127.0.0.1:9/v1", "m") as llm:
        assert llm._client.headers["authorization"] == "Bearer from-env"
    with OpenAICompatLLM("http://127.0.0.1:9/v1", "m", api_key="explicit") as llm:
        assert llm._client.headers["authorization"] == "Bearer explicit"
