"""GGUF models in-process through llama.cpp (`llama-cpp-python`): the fast CPU backend for writing data.

A llama.cpp context decodes one stream at a time, so parallelism comes from several instances (each with its
own threads) serving requests from a shared queue. Each call passes its own seed, so a request's output does
not depend on which instance served it or on what ran before.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from selfctx.errors import SelfctxError
from selfctx.llm.base import LLM, ChatRequest, Completion
from selfctx.models import ModelSpec, resolve_model

# Measured on the 2-core dev machine with the embedded SmolLM2-135M (llm section of benchmarks/BENCHMARKS.md):
# idle, one 2-thread instance wrote 68 tok/s and two 1-thread instances 49 tok/s; with other processes on the
# cores, the 2-thread instance collapsed to ~1 tok/s (llama.cpp's threads spin at every barrier) while two
# 1-thread instances kept 15 tok/s. A synth run shares the cores with its own tokenizing, so two instances
# (each with half the cores) is the default: it gives up a quarter at best and avoids the collapse.
MAX_DEFAULT_INSTANCES = 2
DEFAULT_N_CTX = 4096


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class LlamaCppLLM(LLM):
    def __init__(
        self,
        model: ModelSpec | str,
        *,
        instances: int | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
    ) -> None:
        super().__init__()
        from selfctx.models import llama_class

        Llama = llama_class()  # noqa: N806 (llama.cpp's class)

        spec = resolve_model(model) if isinstance(model, str) else model
        path = spec.gguf_path  # raises a SelfctxError for non-GGUF models
        self.model_id = f"llamacpp:{spec.name}"
        self.instances = instances or min(MAX_DEFAULT_INSTANCES, available_cores())
        self.n_threads = n_threads or max(1, available_cores() // self.instances)
        self.n_ctx = n_ctx
        self._idle: queue.Queue[Any] = queue.Queue()
        for _ in range(self.instances):
            try:
                llama = Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_threads=self.n_threads,
                    n_gpu_layers=n_gpu_layers,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                raise SelfctxError(
                    f"llama.cpp cannot load {path}: {exc}: check the file is a valid GGUF"
                ) from None
            self._idle.put(llama)
        self._pool = ThreadPoolExecutor(max_workers=self.instances, thread_name_prefix="selfctx-llamacpp")
        self._lock = threading.Lock()

    @property
    def preferred_batch_size(self) -> int:
        return max(4, 2 * self.instances)

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        return list(self._pool.map(self._one, requests))

    def generate_iter(self, requests: Sequence[ChatRequest]) -> Iterator[tuple[int, Completion]]:
        futures = {self._pool.submit(self._one, r): i for i, r in enumerate(requests)}
        for future in as_completed(futures):
            yield futures[future], future.result()

    def _one(self, request: ChatRequest) -> Completion:
        started = time.perf_counter()
        llama = self._idle.get()
        try:
            completion = self._complete(llama, request)
        finally:
            self._idle.put(llama)
        with self._lock:
            self.stats.count_call(completion, time.perf_counter() - started)
        return completion

    def _complete(self, llama: Any, request: ChatRequest) -> Completion:
        s = request.sampling
        # Forget the previous prompt: llama.cpp would reuse a shared prefix's KV cache, whose float rounding
        # differs from a fresh evaluation, and the same seed must give the same text whatever ran before.
        llama.reset()
        try:
            out = llama.create_chat_completion(
                messages=request.as_openai_messages(),
                max_tokens=s.max_tokens,
                temperature=s.temperature,
                top_p=s.top_p,
                seed=s.seed,
                stop=list(s.stop) or None,
            )
        except (ValueError, RuntimeError) as exc:  # e.g. the prompt does not fit n_ctx
            return Completion("", finish_reason="error", error=f"llama.cpp: {exc}")
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Completion(
            text=choice["message"]["content"] or "",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason=choice.get("finish_reason") or "stop",
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        while not self._idle.empty():
            self._idle.get().close()
