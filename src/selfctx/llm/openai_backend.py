"""Any OpenAI-compatible chat server (vLLM, SGLang, llama.cpp's server, `selfctx serve`, ...).

Requests go out on `concurrency` threads sharing one httpx connection pool, so the server always has that
many calls to batch. Each call has a timeout and bounded retries with exponential backoff and full jitter on
timeouts, connection errors, HTTP 5xx and 429 (other 4xx mean the request itself is wrong: no retry). A call
that still fails comes back as `Completion(error=..., finish_reason="error")`; the batch always completes.
Importing this module does not import torch.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import httpx

from selfctx.errors import SelfctxError
from selfctx.llm.base import LLM, ChatRequest, Completion

# 408 is the server saying "timed out", 429 "slow down": both retried like 5xx; other 4xx are final.
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


class _Retryable(Exception):
    def __init__(self, message: str, *, timeout: bool = False, wait_s: float | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.wait_s = wait_s


class OpenAICompatLLM(LLM):
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        model_id: str | None = None,
    ) -> None:
        super().__init__()
        if not base_url.startswith(("http://", "https://")):
            raise SelfctxError(
                f"--base-url {base_url!r} is not an http(s) URL: pass e.g. http://host:8000/v1"
            )
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise SelfctxError("concurrency must be >= 1, max_retries >= 0 and timeout > 0: fix the options")
        self.base_url = base_url.rstrip("/")
        self.model = model
        # The server URL is not part of the identity: the same model behind another port gives the same data.
        self.model_id = model_id or f"openai:{model}"
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        api_key = api_key or os.environ.get("OPENAI_API_KEY")  # the usual convention of OpenAI clients
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = httpx.Client(headers=headers, timeout=timeout, limits=limits)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="selfctx-openai")
        self._lock = threading.Lock()
        self._rng = random.Random()  # jitter only; never affects generated data

    @property
    def preferred_batch_size(self) -> int:
        return max(8, 2 * self.concurrency)

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        return list(self._pool.map(self._call_with_retries, requests))

    def generate_iter(self, requests: Sequence[ChatRequest]) -> Iterator[tuple[int, Completion]]:
        futures = {self._pool.submit(self._call_with_retries, r): i for i, r in enumerate(requests)}
        for future in as_completed(futures):
            yield futures[future], future.result()

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        s = request.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.as_openai_messages(),
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed,
        }
        if s.stop:
            body["stop"] = list(s.stop)
        return body

    def _call_with_retries(self, request: ChatRequest) -> Completion:
        started = time.perf_counter()
        body = self._body(request)
        last_error = "no attempt made"
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.stats.retries += 1
            try:
                completion = self._call_once(body)
                break
            except _Retryable as exc:
                last_error = str(exc)
                if exc.timeout:
                    with self._lock:
                        self.stats.timeouts += 1
                if attempt < self.max_retries:
                    time.sleep(self._backoff(attempt, exc.wait_s))
            except _Fatal as exc:
                last_error = str(exc)
                completion = None
                break
        else:
            completion = None
        if completion is None:
            completion = Completion("", finish_reason="error", error=last_error)
        with self._lock:
            self.stats.count_call(completion, time.perf_counter() - started)
        return completion

    def _backoff(self, attempt: int, server_hint: float | None) -> float:
        """Full jitter: uniform in [0, base * 2**attempt], capped; a Retry-After hint is a floor."""
        ceiling = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        wait = self._rng.uniform(0, ceiling)
        return max(wait, min(server_hint or 0.0, self.max_backoff_s))

    def _call_once(self, body: dict[str, Any]) -> Completion:
        try:
            response = self._client.post(f"{self.base_url}/chat/completions", json=body)
        except httpx.TimeoutException as exc:
            raise _Retryable(
                f"timed out after {self.timeout:g}s ({type(exc).__name__})", timeout=True
            ) from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection error: {type(exc).__name__}: {exc}") from None
        if response.status_code in RETRY_STATUSES:
            raise _Retryable(
                f"HTTP {response.status_code}: {response.text[:200]}", wait_s=_retry_after(response)
            )
        if response.status_code >= 400:
            raise _Fatal(f"HTTP {response.status_code}: {response.text[:300]}")
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Fatal(f"malformed response ({type(exc).__name__}): {response.text[:200]}") from None
        return Completion(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=choice.get("finish_reason") or "stop",
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()


class _Fatal(Exception):
    """A failure that retrying cannot fix (HTTP 4xx other than 408/429, malformed response)."""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
