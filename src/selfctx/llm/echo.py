"""A deterministic, model-free backend for tests and dry runs: it answers with a function of the request.

`EchoLLM` needs no weights, so pipelines, caches and servers can be exercised in milliseconds. Its answers
depend only on (messages, sampling), never on batching or timing, which is what reproducibility tests need.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from selfctx.llm.base import LLM, ChatRequest, Completion

Responder = Callable[[ChatRequest], str]


def echo_text(request: ChatRequest) -> str:
    """`echo <seed> <digest>: <last user message>`: differs for every distinct call, equal for equal calls."""
    digest = hashlib.sha256(request.cache_key("echo").encode()).hexdigest()[:8]
    last = request.messages[-1].content if request.messages else ""
    return f"echo {request.sampling.seed} {digest}: {last}"


class EchoLLM(LLM):
    """Answers `responder(request)` (default `echo_text`), cut at stops and to `max_tokens` words.

    `delay_s` sleeps per request (to simulate a slow model); `calls` lists every request it actually served,
    so tests can check what a cache or a retry layer let through.
    """

    def __init__(
        self, responder: Responder | None = None, *, model_id: str = "echo", delay_s: float = 0.0
    ) -> None:
        super().__init__()
        self.responder = responder or echo_text
        self.model_id = model_id
        self.delay_s = delay_s
        self.calls: list[ChatRequest] = []
        self._lock = threading.Lock()

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        return [c for _, c in self.generate_iter(requests)]

    def generate_iter(self, requests: Sequence[ChatRequest]) -> Iterator[tuple[int, Completion]]:
        for i, request in enumerate(requests):
            yield i, self._one(request)

    def _one(self, request: ChatRequest) -> Completion:
        started = time.perf_counter()
        if self.delay_s:
            time.sleep(self.delay_s)
        completion = self._answer(request)
        with self._lock:
            self.calls.append(request)
            self.stats.calls += 1
            self.stats.prompt_tokens += completion.prompt_tokens
            self.stats.completion_tokens += completion.completion_tokens
            self.stats.seconds += time.perf_counter() - started
        return completion

    def _answer(self, request: ChatRequest) -> Completion:
        text = self.responder(request)
        finish = "stop"
        for stop in request.sampling.stop:
            if stop and stop in text:
                text = text[: text.index(stop)]
        words = text.split(" ")
        if len(words) > request.sampling.max_tokens:
            text, finish = " ".join(words[: request.sampling.max_tokens]), "length"
        prompt_tokens = sum(len(m.content.split()) for m in request.messages)
        return Completion(text, prompt_tokens, len(text.split()), finish_reason=finish)
