"""Test support: an OpenAI-compatible HTTP server in front of any `LLM` backend, with fault injection.

    with serve_in_thread(EchoLLM(), faults=[Fault(match="boom", attempts=2)]) as server:
        llm = make_llm("openai", "echo", base_url=server.base_url)

Endpoints: POST /v1/chat/completions (non-streaming; honours seed, max_tokens, temperature, top_p, stop;
returns usage), GET /v1/models, GET /health. Concurrent requests are gathered into batches (up to the
backend's preferred batch size, waiting a few milliseconds for company) so a batching backend stays busy.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from selfctx.background_server import RunningServer
from selfctx.llm.base import LLM, ChatRequest, Completion, Message, SamplingParams


@dataclass(frozen=True)
class Fault:
    """Misbehave on matching requests, to show a client's retries and timeouts.

    match: substring of the last message ("" = every request); every: only requests whose content hash is
    divisible by it (a deterministic subset); attempts: how many attempts of each matching request misbehave
    (-1 = all of them, i.e. a permanent failure). kind "error" answers HTTP `status`; kind "delay" sleeps
    `delay_s` before answering normally (past a client's timeout, the client has given up by then).
    `retry_after_s` adds a Retry-After header to error answers.
    """

    match: str = ""
    kind: Literal["error", "delay"] = "error"
    attempts: int = 1
    status: int = 500
    delay_s: float = 0.0
    every: int = 1
    retry_after_s: float | None = None  # sent as a Retry-After header with error answers (e.g. for 429)


@dataclass
class ServerStats:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    batches: int = 0
    max_batch: int = 0
    faults_injected: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    attempts_by_request: Counter[str] = field(default_factory=Counter)


class _Batcher:
    """One worker thread that serves queued requests in batches through the (synchronous) backend."""

    def __init__(self, llm: LLM, stats: ServerStats, max_batch: int, window_s: float) -> None:
        self.llm, self.stats, self.max_batch, self.window_s = llm, stats, max_batch, window_s
        self._queue: queue.Queue[tuple[ChatRequest, Future[Completion]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="selfctx-llm-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: ChatRequest) -> Future[Completion]:
        future: Future[Completion] = Future()
        self._queue.put((request, future))
        return future

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self.stats.batches += 1
            self.stats.max_batch = max(self.stats.max_batch, len(batch))
            try:
                results = self.llm.generate([r for r, _ in batch])
            except Exception as exc:  # a backend crash fails this batch's requests, not the server
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                fut.set_result(result)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)


def _parse_request(body: dict[str, Any]) -> ChatRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of {role, content}")
    parsed = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ValueError("each message needs a role of system, user or assistant")
        content = m.get("content")
        if not isinstance(content, str):
            raise ValueError("message content must be a string")
        parsed.append(Message(m["role"], content))
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    defaults = SamplingParams()
    sampling = SamplingParams(
        max_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or defaults.max_tokens),
        temperature=float(body.get("temperature", defaults.temperature)),
        top_p=float(body.get("top_p", defaults.top_p)),
        seed=int(body.get("seed") or 0),
        stop=stop,
    )
    return ChatRequest(messages=tuple(parsed), sampling=sampling)


def create_app(
    llm: LLM,
    *,
    model_name: str | None = None,
    faults: tuple[Fault, ...] | list[Fault] = (),
    max_batch: int | None = None,
    batch_window_s: float = 0.005,
) -> FastAPI:
    """A FastAPI app serving `llm`; `app.state.stats` counts requests, in-flight peaks, statuses, faults."""
    name = model_name or llm.model_id
    stats = ServerStats()
    batcher = _Batcher(llm, stats, max_batch or llm.preferred_batch_size, batch_window_s)
    lock = threading.Lock()
    app = FastAPI(title="selfctx LLM server")
    app.state.stats = stats
    app.state.batcher = batcher

    def error(
        status: int, message: str, kind: str = "server_error", headers: dict[str, str] | None = None
    ) -> JSONResponse:
        with lock:
            stats.statuses[status] += 1
        return JSONResponse(
            {"error": {"message": message, "type": kind}}, status_code=status, headers=headers
        )

    def pick_fault(request: ChatRequest, content_key: str, attempt: int) -> Fault | None:
        last = request.messages[-1].content
        for fault in faults:
            if fault.match not in last or int(content_key[:8], 16) % max(1, fault.every):
                continue
            if fault.attempts < 0 or attempt <= fault.attempts:
                return fault
        return None

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "selfctx"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(raw: Request) -> Any:
        with lock:
            stats.requests += 1
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            try:
                body = await raw.json()
                if body.get("stream"):
                    return error(
                        400, "streaming is not supported: send stream=false", "invalid_request_error"
                    )
                request = _parse_request(body)
            except (ValueError, TypeError, AttributeError) as exc:
                return error(400, f"bad request: {exc}", "invalid_request_error")
            content_key = hashlib.sha256(request.cache_key(name).encode()).hexdigest()
            with lock:
                stats.attempts_by_request[content_key] += 1
                attempt = stats.attempts_by_request[content_key]
            fault = pick_fault(request, content_key, attempt)
            if fault is not None:
                with lock:
                    stats.faults_injected += 1
                if fault.kind == "error":
                    retry_after = (
                        None if fault.retry_after_s is None else {"Retry-After": f"{fault.retry_after_s:g}"}
                    )
                    return error(fault.status, f"injected fault (attempt {attempt})", headers=retry_after)
                await asyncio.sleep(fault.delay_s)
            try:
                completion = await asyncio.wrap_future(batcher.submit(request))
            except Exception as exc:
                return error(500, f"backend failed: {type(exc).__name__}: {exc}")
            if not completion.ok:
                return error(500, f"backend error: {completion.error}")
            with lock:
                stats.statuses[200] += 1
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": completion.text},
                        "finish_reason": completion.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens,
                    "total_tokens": completion.prompt_tokens + completion.completion_tokens,
                },
            }
        finally:
            with lock:
                stats.in_flight -= 1

    return app


def serve_in_thread(
    llm: LLM,
    *,
    model_name: str | None = None,
    faults: tuple[Fault, ...] | list[Fault] = (),
    host: str = "127.0.0.1",
    port: int = 0,
    max_batch: int | None = None,
    batch_window_s: float = 0.005,
) -> RunningServer:
    """Start serving `llm` on host:port (0 = a free port) in a background thread; returns once it listens."""
    app = create_app(
        llm, model_name=model_name, faults=faults, max_batch=max_batch, batch_window_s=batch_window_s
    )
    return RunningServer(app, host, port, on_stop=app.state.batcher.stop)
