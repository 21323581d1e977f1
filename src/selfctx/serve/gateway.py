"""What stands between HTTP and the model's worker thread: admission (in-flight limit), body limits and
validation, the registry of long contexts, and the job's life from submission to its last streamed chunk.

The routes in `selfctx.serve.app` are thin: they read a body through `Gateway.read_body`, build a split of the
input into context and question, and hand it to `Gateway.complete` with the shape of their API (`ApiShape`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError

from selfctx.fsutil import write_json_atomic
from selfctx.serve.config import ServeConfig
from selfctx.serve.context import Fits, Mode, Split
from selfctx.serve.protocol import _Body
from selfctx.serve.worker import Job, JobResult, MemoryReport, RequestError, Worker

BodyT = TypeVar("BodyT", bound=BaseModel)
_CONTEXT_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class ServeStats:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    refused_busy: int = 0
    client_errors: int = 0
    server_errors: int = 0


def error_body(exc: RequestError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}}


def first_problem(errors: list[Any]) -> str | None:
    """The dotted location of a validation error (`messages.0.role`): OpenAI's `param`."""
    location = ".".join(map(str, errors[0]["loc"])) if errors else ""
    return location or None


class ContextRegistry:
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


@dataclass(frozen=True)
class ApiShape:
    """How one OpenAI endpoint writes its answers: ids, object names, a streamed chunk, the final choice."""

    id_prefix: str
    object: str
    chunk_object: str
    chunk_choice: Callable[[dict[str, str], str | None], dict[str, Any]]
    final_choice: Callable[[JobResult], dict[str, Any]]


def _choice(finish: str | None, **content: Any) -> dict[str, Any]:
    """One OpenAI choice: its content fields, then finish_reason and logprobs (never sent here)."""
    return {"index": 0, **content, "finish_reason": finish, "logprobs": None}


CHAT = ApiShape(
    id_prefix="chatcmpl",
    object="chat.completion",
    chunk_object="chat.completion.chunk",
    chunk_choice=lambda delta, finish: _choice(finish, delta=delta),
    final_choice=lambda result: _choice(
        result.finish_reason, message={"role": "assistant", "content": result.text}
    ),
)
TEXT = ApiShape(
    id_prefix="cmpl",
    object="text_completion",
    chunk_object="text_completion",
    chunk_choice=lambda delta, finish: _choice(finish, text=delta.get("content", "")),
    final_choice=lambda result: _choice(result.finish_reason, text=result.text),
)


def _extension(result: JobResult) -> dict[str, Any]:
    return {
        **result.memory.to_json(),
        "batch_size": result.batch_size,
        "queue_seconds": round(result.queue_seconds, 4),
        "decode_seconds": round(result.decode_seconds, 4),
    }


def _usage(result: JobResult) -> dict[str, Any]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.memory.cached_tokens},
    }


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class Gateway:
    """Owns the server's state (config, worker, registered contexts, counters) and the request life cycle."""

    def __init__(self, worker: Worker, config: ServeConfig) -> None:
        self.worker = worker
        self.config = config
        self.contexts = ContextRegistry(config.memory_dir)
        self.stats = ServeStats()

    def count_error(self, status: int) -> None:
        if status >= 500:
            self.stats.server_errors += 1
        else:
            self.stats.client_errors += 1

    async def read_body(self, raw: Request, model: type[BodyT]) -> BodyT:
        """The body within the byte limit, validated; OpenAI bodies also checked for what we cannot honour."""
        self.stats.requests += 1
        limit = self.config.max_body_bytes
        declared = raw.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestError(
                413,
                f"the body has {declared} bytes, more than this server's limit of {limit}: "
                "send a shorter input",
                code="request_too_large",
            )
        received = bytearray()
        async for chunk in raw.stream():
            received += chunk
            if len(received) > limit:
                raise RequestError(
                    413,
                    f"the body exceeds this server's limit of {limit} bytes: send a shorter input",
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
                param=first_problem(exc.errors()),
            ) from None
        if isinstance(body, _Body):
            self._check_openai_parameters(body)
        return body

    def _check_openai_parameters(self, body: _Body) -> None:
        if not self.config.serves(body.model):
            raise RequestError(
                404,
                f"the model {body.model!r} does not exist here: this server serves "
                f"{self.config.model_name!r} (see /v1/models)",
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

    def _admit(self) -> None:
        stats = self.stats
        if stats.in_flight >= self.config.max_inflight:
            stats.refused_busy += 1
            raise RequestError(
                429,
                f"the server already has {stats.in_flight} requests in flight (limit "
                f"{self.config.max_inflight}): retry after a moment",
                "rate_limit_error",
                code="server_busy",
            )
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)

    def _release(self, events: _Events) -> None:
        self.stats.in_flight -= 1
        events.close()

    async def _start(self, raw: Request, job: Job) -> tuple[_Events, MemoryReport]:
        """Queue the job and wait until the worker accepts it (memory ready) or refuses it."""
        self._admit()
        events = _Events(raw, job)
        job.emit = events.emit
        try:
            self.worker.submit(job)
            kind, payload = await events.queue.get()
        except BaseException:
            job.cancelled.set()
            self._release(events)
            raise
        if kind == "error":
            self._release(events)
            raise payload
        return events, payload

    async def _finish(self, job: Job, events: _Events) -> JobResult:
        try:
            while True:
                kind, payload = await events.queue.get()
                if kind == "done":
                    return payload
                if kind == "error":
                    raise payload
        finally:
            job.cancelled.set()  # a client that went away stops its row's decoding
            self._release(events)

    async def register(self, raw: Request, mode: Mode, text: str) -> tuple[str, MemoryReport]:
        """Compress `text` once and give it an id (only once it compressed: a refused text gets none)."""
        job = Job(mode=mode, context=text, question=None)
        context_id = self.worker.key_for(mode, text)
        events, report = await self._start(raw, job)
        self._release(events)
        self.contexts.add(context_id, text)
        return context_id, report

    async def complete(
        self, raw: Request, body: _Body, mode: Mode, split: Callable[[Fits], Split], shape: ApiShape
    ) -> Any:
        """Run one completion request: a JSON answer, or an SSE stream when the body asks for one."""
        max_tokens = next(
            (v for v in (body.max_completion_tokens, body.max_tokens) if v is not None),
            self.config.default_max_tokens,
        )
        job = Job(
            mode=mode,
            context="",  # the worker splits the input (it can measure questions in tokens)
            question="",
            split=split,
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stops(),
        )
        events, _ = await self._start(raw, job)
        base = {
            "id": f"{shape.id_prefix}-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": self.config.model_name,
        }
        if body.stream:
            return self._stream(job, events, body, base, shape)
        result = await self._finish(job, events)
        return {
            **base,
            "object": shape.object,
            "choices": [shape.final_choice(result)],
            "usage": _usage(result),
            "selfctx": _extension(result),
        }

    def _stream(
        self, job: Job, events: _Events, body: _Body, base: dict[str, Any], shape: ApiShape
    ) -> StreamingResponse:
        """SSE in OpenAI's chunk format; the last content chunk carries finish_reason and the extension."""

        def chunk(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
            return {**base, "object": shape.chunk_object, "choices": [shape.chunk_choice(delta, finish)]}

        async def lines() -> AsyncIterator[str]:
            try:
                yield _sse(chunk({"role": "assistant", "content": ""}, None))
                while True:
                    kind, payload = await events.queue.get()
                    if kind == "text":
                        yield _sse(chunk({"content": payload}, None))
                    elif kind == "error":
                        yield _sse(error_body(payload))
                        break
                    elif kind == "done":
                        last = chunk({}, payload.finish_reason)
                        last["selfctx"] = _extension(payload)
                        yield _sse(last)
                        if body.include_usage():
                            yield _sse({**chunk({}, None), "choices": [], "usage": _usage(payload)})
                        break
                yield "data: [DONE]\n\n"
            finally:
                job.cancelled.set()
                self._release(events)

        return StreamingResponse(
            lines(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
