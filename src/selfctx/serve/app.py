"""The FastAPI app: OpenAI's /v1/chat/completions (incl. SSE streaming), /v1/completions, /v1/models, /health,
plus the extension POST /v1/contexts (register a long context once, refer to it by `context_id`).

Every answer carries `usage` and a `selfctx` object: the expert, requested/achieved ratio, memory bytes and
entries, whether the memory was reused (and from where), and the batch it was decoded in. The HTTP layer is
async and only hands jobs to the model's worker thread (`selfctx.serve.worker`); it refuses, with 4xx and an
OpenAI-style error body naming the parameter at fault: malformed JSON (400), OpenAI parameters it cannot
honour (400 unsupported_parameter, see `selfctx.serve.protocol`), another model than it serves (404
model_not_found), unknown context ids (404), unknown routes and methods (404, 405), bodies over the byte limit
(413), inputs over the token limits (400, code context_length_exceeded) and work over the in-flight limit
(429). A request whose client hangs up is cancelled: its compression stops once no one else waits for it.
`usage.prompt_tokens_details.cached_tokens` counts the context tokens whose memory was reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from selfctx.compress import CompressedLM
from selfctx.fsutil import write_json_atomic
from selfctx.serve.config import ServeConfig
from selfctx.serve.context import ChatMessage, Fits, Mode, Split, split_chat, split_text
from selfctx.serve.protocol import ChatBody, CompletionBody, ContextBody, _Body
from selfctx.serve.worker import Job, JobResult, MemoryReport, RequestError, Worker

BodyT = TypeVar("BodyT", bound=BaseModel)
_CONTEXT_ID = re.compile(r"^[0-9a-f]{64}$")
_ROUTES = "/v1/chat/completions, /v1/completions, /v1/models, /v1/contexts, /health and /stats"


@dataclass
class ServeStats:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    refused_busy: int = 0
    client_errors: int = 0
    server_errors: int = 0


class _Events:
    """Carries a job's events from the worker thread into this request's asyncio queue, and cancels the job
    when its client hangs up (until `close`)."""

    def __init__(self, raw: Request, job: Job) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._watch = asyncio.create_task(_cancel_on_disconnect(raw, job))

    def emit(self, kind: str, payload: Any) -> None:
        # RuntimeError: the event loop is gone (server shut down), nobody is listening any more
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))

    def close(self) -> None:
        self._watch.cancel()


async def _cancel_on_disconnect(raw: Request, job: Job) -> None:
    # The body is already read, so the next message the server receives is the client's disconnect.
    while (await raw.receive())["type"] != "http.disconnect":
        pass
    job.cancelled.set()


class _Contexts:
    """Registered context texts by id (in RAM, and under <memory_dir>/contexts when persisting)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder / "contexts" if folder is not None else None
        self._texts: dict[str, str] = {}

    def add(self, context_id: str, text: str) -> None:
        self._texts[context_id] = text
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.folder / f"{context_id}.json", {"text": text})

    def get(self, context_id: str) -> str:
        if context_id in self._texts:
            return self._texts[context_id]
        path = self.folder / f"{context_id}.json" if self.folder is not None else None
        if _CONTEXT_ID.match(context_id) and path is not None and path.is_file():
            text = str(json.loads(path.read_text(encoding="utf-8"))["text"])
            self._texts[context_id] = text
            return text
        raise RequestError(
            404,
            f"unknown context_id {context_id!r}: register the text with POST /v1/contexts "
            "first (ids are per server unless --memory-dir is shared)",
            code="context_not_found",
        )


def _error_body(exc: RequestError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}}


def _error_response(exc: RequestError, headers: dict[str, str] | None = None) -> JSONResponse:
    if exc.status == 429:
        headers = {**(headers or {}), "Retry-After": "1"}
    return JSONResponse(_error_body(exc), status_code=exc.status, headers=headers)


def _first_problem(errors: list[Any]) -> str | None:
    """The dotted location of a validation error (`messages.0.role`): OpenAI's `param`."""
    location = ".".join(map(str, errors[0]["loc"])) if errors else ""
    return location or None


def create_app(lm: CompressedLM, config: ServeConfig | None = None) -> FastAPI:
    """The app; its worker thread starts now and stops with `app.state.worker.stop()` (after the server)."""
    config = config or ServeConfig()
    worker = Worker(lm, config)
    contexts = _Contexts(config.memory_dir)
    stats = ServeStats()
    app = FastAPI(title="selfctx compressed-inference server")
    app.state.worker = app.state.batcher = worker  # `batcher` for selfctx.llm.http_server.RunningServer
    app.state.stats = stats
    app.state.config = config

    @app.exception_handler(RequestError)
    async def _refused(_: Request, exc: RequestError) -> JSONResponse:
        if exc.status >= 500:
            stats.server_errors += 1
        else:
            stats.client_errors += 1
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        stats.client_errors += 1
        errors = list(exc.errors())
        return _error_response(
            RequestError(400, f"malformed request: {errors[:3]}", param=_first_problem(errors))
        )

    @app.exception_handler(HTTPException)
    async def _no_route(raw: Request, exc: HTTPException) -> JSONResponse:
        stats.client_errors += 1
        what = f"{raw.method} {raw.url.path}"
        if exc.status_code == 404:
            message, code = f"no route {what}: this server serves {_ROUTES}", "not_found"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "another method")
            message, code = f"{what} is not allowed: use {allowed}", "method_not_allowed"
        else:
            message, code = f"{what}: {exc.detail}", None
        headers = dict(exc.headers) if exc.headers else None
        return _error_response(RequestError(exc.status_code, message, code=code), headers=headers)

    async def read_body(raw: Request, model: type[BodyT]) -> BodyT:
        stats.requests += 1
        declared = raw.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > config.max_body_bytes:
            raise RequestError(
                413,
                f"the body has {declared} bytes, more than this server's limit of "
                f"{config.max_body_bytes}: send a shorter input",
                code="request_too_large",
            )
        received = bytearray()
        async for chunk in raw.stream():
            received += chunk
            if len(received) > config.max_body_bytes:
                raise RequestError(
                    413,
                    f"the body exceeds this server's limit of {config.max_body_bytes} "
                    "bytes: send a shorter input",
                    code="request_too_large",
                )
        try:
            body = model.model_validate_json(bytes(received))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:3]
            )
            raise RequestError(
                400,
                f"malformed request ({problems}): send a JSON body as in the OpenAI API",
                param=_first_problem(exc.errors()),
            ) from None
        if isinstance(body, _Body):
            check_openai_parameters(body)
        return body

    def check_openai_parameters(body: _Body) -> None:
        if not config.serves(body.model):
            raise RequestError(
                404,
                f"the model {body.model!r} does not exist here: this server serves {config.model_name!r} "
                "(see /v1/models)",
                code="model_not_found",
                param="model",
            )
        refusal = body.refused()
        if refusal is not None:
            raise RequestError(
                400,
                f"{refusal.param} is not supported by this server: {refusal.instead}",
                code="unsupported_parameter",
                param=refusal.param,
            )

    def admit() -> None:
        if stats.in_flight >= config.max_inflight:
            stats.refused_busy += 1
            raise RequestError(
                429,
                f"the server already has {stats.in_flight} requests in flight (limit "
                f"{config.max_inflight}): retry after a moment",
                "rate_limit_error",
                code="server_busy",
            )
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)

    def release(events: _Events) -> None:
        stats.in_flight -= 1
        events.close()

    def make_job(mode: Mode, split: Callable[[Fits], Split], body: _Body) -> Job:
        """A job the worker splits into context and question (it can measure questions in tokens)."""
        max_tokens = next(
            (v for v in (body.max_completion_tokens, body.max_tokens) if v is not None),
            config.default_max_tokens,
        )
        return Job(
            mode=mode,
            context="",
            question="",
            split=split,
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stops(),
        )

    async def start(raw: Request, job: Job) -> tuple[_Events, MemoryReport]:
        """Queue the job and wait until the worker accepts it (memory ready) or refuses it."""
        admit()
        events = _Events(raw, job)
        job.emit = events.emit
        try:
            worker.submit(job)
            kind, payload = await events.queue.get()
        except BaseException:
            job.cancelled.set()
            release(events)
            raise
        if kind == "error":
            release(events)
            raise payload
        return events, payload

    async def finish(job: Job, events: _Events) -> JobResult:
        try:
            while True:
                kind, payload = await events.queue.get()
                if kind == "done":
                    return payload
                if kind == "error":
                    raise payload
        finally:
            job.cancelled.set()  # a client that went away stops its row's decoding
            release(events)

    def extension(result: JobResult) -> dict[str, Any]:
        return {
            **result.memory.to_json(),
            "batch_size": result.batch_size,
            "queue_seconds": round(result.queue_seconds, 4),
            "decode_seconds": round(result.decode_seconds, 4),
        }

    def usage(result: JobResult) -> dict[str, Any]:
        return {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": result.memory.cached_tokens},
        }

    def stream(job: Job, events: _Events, body: _Body, chunk: Any) -> StreamingResponse:
        """SSE in OpenAI's chunk format; the last content chunk carries finish_reason and the extension."""

        async def lines() -> AsyncIterator[str]:
            try:
                yield _sse(chunk({"role": "assistant", "content": ""}, None))
                while True:
                    kind, payload = await events.queue.get()
                    if kind == "text":
                        yield _sse(chunk({"content": payload}, None))
                    elif kind == "error":
                        yield _sse(_error_body(payload))
                        break
                    elif kind == "done":
                        last = chunk({}, payload.finish_reason)
                        last["selfctx"] = extension(payload)
                        yield _sse(last)
                        if body.include_usage():
                            yield _sse({**chunk({}, None), "choices": [], "usage": usage(payload)})
                        break
                yield "data: [DONE]\n\n"
            finally:
                job.cancelled.set()
                release(events)

        return StreamingResponse(
            lines(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "in_flight": stats.in_flight, "queued": worker.pending()}

    @app.get("/stats")
    async def server_stats() -> dict[str, Any]:
        return {"server": asdict(stats), "worker": asdict(worker.stats), "memory": asdict(worker.store.stats)}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": config.model_name, "object": "model", "created": 0, "owned_by": "selfctx"}],
        }

    @app.post("/v1/contexts")
    async def register_context(raw: Request) -> dict[str, Any]:
        body = await read_body(raw, ContextBody)
        job = Job(mode=body.mode, context=body.text, question=None)
        context_id = worker.key_for(body.mode, body.text)
        events, report = await start(raw, job)
        release(events)
        contexts.add(context_id, body.text)  # only once it compressed: a refused text gets no id
        return {"id": context_id, "object": "context", "mode": body.mode, "selfctx": report.to_json()}

    @app.post("/v1/chat/completions")
    async def chat_completions(raw: Request) -> Any:
        body = await read_body(raw, ChatBody)
        messages = [
            ChatMessage("system" if m.role == "developer" else m.role, m.text()) for m in body.messages
        ]
        split: Callable[[Fits], Split] = functools.partial(split_chat, messages)
        if body.context_id is not None:
            registered = Split(contexts.get(body.context_id), "\n\n".join(m.content for m in messages))
            split = _given(registered)
        job = make_job("chat", split, body)
        events, _ = await start(raw, job)
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        base = {"id": ident, "created": created, "model": config.model_name}
        if body.stream:

            def chunk(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
                return {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                }

            return stream(job, events, body, chunk)
        result = await finish(job, events)
        return {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": usage(result),
            "selfctx": extension(result),
        }

    @app.post("/v1/completions")
    async def completions(raw: Request) -> Any:
        body = await read_body(raw, CompletionBody)
        split: Callable[[Fits], Split] = functools.partial(split_text, body.prompt_text())
        if body.context_id is not None:
            registered = Split(contexts.get(body.context_id), body.prompt_text())
            split = _given(registered)
        job = make_job("text", split, body)
        events, _ = await start(raw, job)
        ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        base = {"id": ident, "created": created, "model": config.model_name}
        if body.stream:

            def chunk(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
                return {
                    **base,
                    "object": "text_completion",
                    "choices": [
                        {
                            "index": 0,
                            "text": delta.get("content", ""),
                            "finish_reason": finish,
                            "logprobs": None,
                        }
                    ],
                }

            return stream(job, events, body, chunk)
        result = await finish(job, events)
        return {
            **base,
            "object": "text_completion",
            "choices": [
                {"index": 0, "text": result.text, "finish_reason": result.finish_reason, "logprobs": None}
            ],
            "usage": usage(result),
            "selfctx": extension(result),
        }

    return app


def _given(split: Split) -> Callable[[Fits], Split]:
    """A split the caller chose (a registered context): nothing to measure."""
    return lambda _fits: split


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def serve_in_thread(
    lm: CompressedLM, config: ServeConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> Any:
    """Serve on host:port (0 = a free port) from a background thread.

    Returns a RunningServer (a context manager; `base_url` ends in /v1). Stopping it lets in-flight requests
    finish, then drains the worker."""
    from selfctx.llm.http_server import RunningServer

    return RunningServer(create_app(lm, config), host, port)
