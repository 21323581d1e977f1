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

import functools
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from selfctx.compress import CompressedLM
from selfctx.serve.config import ServeConfig
from selfctx.serve.context import ChatMessage, Fits, Split, split_chat, split_text
from selfctx.serve.gateway import CHAT, TEXT, Gateway, error_body, first_problem
from selfctx.serve.protocol import ChatBody, CompletionBody, ContextBody
from selfctx.serve.worker import RequestError, Worker

_ROUTES = "/v1/chat/completions, /v1/completions, /v1/models, /v1/contexts, /health and /stats"


def _error_response(exc: RequestError, headers: dict[str, str] | None = None) -> JSONResponse:
    if exc.status == 429:
        headers = {**(headers or {}), "Retry-After": "1"}
    return JSONResponse(error_body(exc), status_code=exc.status, headers=headers)


def create_app(lm: CompressedLM, config: ServeConfig | None = None) -> FastAPI:
    """The app; its worker thread starts now and stops with `app.state.worker.stop()` (after the server)."""
    config = config or ServeConfig()
    worker = Worker(lm, config)
    gateway = Gateway(worker, config)
    app = FastAPI(title="selfctx compressed-inference server")
    app.state.worker = worker
    app.state.stats = gateway.stats
    app.state.config = config

    @app.exception_handler(RequestError)
    async def _refused(_: Request, exc: RequestError) -> JSONResponse:
        gateway.count_error(exc.status)
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        gateway.count_error(400)
        errors = list(exc.errors())
        return _error_response(
            RequestError(400, f"malformed request: {errors[:3]}", param=first_problem(errors))
        )

    @app.exception_handler(HTTPException)
    async def _no_route(raw: Request, exc: HTTPException) -> JSONResponse:
        gateway.count_error(exc.status_code)
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

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "in_flight": gateway.stats.in_flight, "queued": worker.pending()}

    @app.get("/stats")
    async def server_stats() -> dict[str, Any]:
        return {
            "server": asdict(gateway.stats),
            "worker": asdict(worker.stats),
            "memory": asdict(worker.store.stats),
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": config.model_name, "object": "model", "created": 0, "owned_by": "selfctx"}],
        }

    @app.post("/v1/contexts")
    async def register_context(raw: Request) -> dict[str, Any]:
        body = await gateway.read_body(raw, ContextBody)
        context_id, report = await gateway.register(raw, body.mode, body.text)
        return {"id": context_id, "object": "context", "mode": body.mode, "selfctx": report.to_json()}

    @app.post("/v1/chat/completions")
    async def chat_completions(raw: Request) -> Any:
        body = await gateway.read_body(raw, ChatBody)
        messages = [
            ChatMessage("system" if m.role == "developer" else m.role, m.text()) for m in body.messages
        ]
        split: Callable[[Fits], Split] = functools.partial(split_chat, messages)
        if body.context_id is not None:
            question = "\n\n".join(m.content for m in messages)
            split = _given(Split(gateway.contexts.get(body.context_id), question))
        return await gateway.complete(raw, body, "chat", split, CHAT)

    @app.post("/v1/completions")
    async def completions(raw: Request) -> Any:
        body = await gateway.read_body(raw, CompletionBody)
        split: Callable[[Fits], Split] = functools.partial(split_text, body.prompt_text())
        if body.context_id is not None:
            split = _given(Split(gateway.contexts.get(body.context_id), body.prompt_text()))
        return await gateway.complete(raw, body, "text", split, TEXT)

    return app


def _given(split: Split) -> Callable[[Fits], Split]:
    """A split the caller chose (a registered context): nothing to measure."""
    return lambda _fits: split


def serve_in_thread(
    lm: CompressedLM, config: ServeConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> Any:
    """Serve on host:port (0 = a free port) from a background thread.

    Returns a RunningServer (a context manager; `base_url` ends in /v1). Stopping it lets in-flight requests
    finish, then drains the worker."""
    from selfctx.background_server import RunningServer

    app = create_app(lm, config)
    return RunningServer(app, host, port, on_stop=app.state.worker.stop)
