"""The one thread that owns the model: drains a queue, compresses each new context once, and decodes the
requests that share a memory as one batch.

The HTTP layer never touches the model (nor its tokenizer); it submits `Job`s and reads their events (start,
text deltas, done or an error with an HTTP status) from a thread-safe callback. A job whose client went away
(`cancelled`) stops its decoding row, and a compression stops between groups of windows once every job
waiting for it is cancelled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from selfctx.compress import CompressedLM, Memory
from selfctx.compress.decode import DecodeRow, decode_rows
from selfctx.errors import SelfctxError
from selfctx.serve.compressing import Abandoned, compress_unless_abandoned
from selfctx.serve.config import ServeConfig
from selfctx.serve.context import Fits, Mode, Split
from selfctx.serve.memory_store import MemoryStore, memory_footprint, memory_key


class RequestError(Exception):
    """A request the server refuses: HTTP status + a message saying what is wrong and what to do, and the
    request parameter at fault when there is one (OpenAI's error `param`)."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param


@dataclass
class MemoryReport:
    """What the response's `selfctx` extension says about the memory a request read."""

    context_id: str
    expert: str | None
    ratio: int
    requested_ratio: float
    achieved_ratio: float
    memory_bytes: int
    memory_entries: int
    context_tokens: int
    memory_reused: bool
    # "compressed" (for this request), "batch" (compressed for another request decoded in the same batch),
    # "ram" (LRU hit) or "disk" (saved by this or another process)
    memory_source: str
    compress_seconds: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def cached_tokens(self) -> int:
        """Context tokens read from a memory made before this request (OpenAI's usage.cached_tokens)."""
        return self.context_tokens if self.memory_reused else 0


@dataclass
class Job:
    """One request. `question` None = only make sure the context is compressed (POST /v1/contexts).

    `split`, when given, divides the request into context and question on the worker thread (where questions
    can be measured in tokens against the answer budget); it replaces `context` and `question`."""

    mode: Mode
    context: str
    question: str | None
    split: Callable[[Fits], Split] | None = None
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    emit: Callable[[str, Any], None] = lambda kind, payload: None  # ("start"|"text"|"done"|"error", payload)
    cancelled: threading.Event = field(default_factory=threading.Event)
    key: str = ""
    enqueued_at: float = field(default_factory=time.perf_counter)


@dataclass
class JobResult:
    text: str
    finish_reason: str
    prompt_tokens: int  # context + question tokens the model read
    completion_tokens: int
    memory: MemoryReport
    batch_size: int
    queue_seconds: float
    decode_seconds: float


@dataclass
class WorkerStats:
    jobs: int = 0
    batches: int = 0
    max_batch: int = 0
    compressions: int = 0
    abandoned: int = 0  # compressions stopped because every request waiting for them went away
    errors: int = 0


def model_fingerprint(lm: CompressedLM, config: ServeConfig) -> str:
    """Identity of (base model, expert weights, window/routing settings): part of every memory key."""
    digest = hashlib.sha256()
    meta = {
        "name": lm.name,
        "config": lm.model.config.to_dict(),
        "window": lm.window,
        "native_context": lm.native_context,
        "pattern": lm.pattern,
        "sink": lm.sink,
        "budget": config.answer_budget,
        "ratios": list(lm.battery.ratios),
        "kind": lm.battery.kind,
        "memory_inputs": [a.config.memory_input for a in lm.battery.adapters],
        "dtype": str(lm.parts.embed_tokens.weight.dtype),
    }
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, tensor in sorted(lm.battery.state_dict().items()):  # the experts' actual weights (small)
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


class Worker:
    def __init__(self, lm: CompressedLM, config: ServeConfig) -> None:
        if lm.tokenizer is None:
            raise SelfctxError("the served model has no tokenizer: load it with one")
        self.lm, self.config = lm, config
        self.tokenizer = lm.tokenizer
        self.fingerprint = model_fingerprint(lm, config)
        self.store = MemoryStore(config.memory_budget_bytes, config.memory_dir, device=lm.device)
        self.stats = WorkerStats()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="selfctx-serve-worker", daemon=True)
        self._thread.start()

    def key_for(self, mode: Mode, context: str) -> str:
        return memory_key(context, mode, self.fingerprint)

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def _prepare(self, job: Job) -> None:
        """Split the request (if it asks to be) and compute its memory key."""
        if job.split is not None:
            split = job.split(lambda question: self._fits(job, question))
            job.context, job.question = split.context, split.question
        job.key = self.key_for(job.mode, job.context)
        if not self.config.reuse:  # baseline: every request gets its own memory
            job.key = f"{job.key}-{uuid.uuid4().hex}"

    def _fits(self, job: Job, question: str) -> bool:
        return len(self._question_ids(job.mode, question)) + job.max_tokens <= self.config.answer_budget

    def pending(self) -> int:
        return self._queue.qsize()

    def stop(self, timeout: float = 60.0) -> None:
        """Finish every queued job, then end the thread."""
        self._queue.put(None)
        self._thread.join(timeout=timeout)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            while True:  # take everything already waiting: requests that share a memory go in one batch
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                jobs.append(nxt)
            groups: dict[str, list[Job]] = {}
            for job in jobs:
                try:
                    self._prepare(job)
                except Exception as exc:  # a tokenizer failure fails this request, never the server
                    failure = RequestError(500, f"splitting the request failed: {exc}", "server_error")
                    job.emit("error", failure)
                    continue
                groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                for start in range(0, len(group), self.config.max_batch):
                    self._run_group(key, group[start : start + self.config.max_batch])

    def _run_group(self, key: str, jobs: list[Job]) -> None:
        try:
            self._serve_group(key, jobs)
        except Abandoned:
            self.stats.abandoned += 1
            gone = RequestError(
                499, "the client closed the request before its context was compressed", code="client_closed"
            )
            for job in jobs:
                job.emit("error", gone)
        except RequestError as exc:
            for job in jobs:
                job.emit("error", exc)
        except Exception as exc:  # a model failure fails this batch, never the server
            self.stats.errors += 1
            failure = RequestError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error")
            for job in jobs:
                job.emit("error", failure)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _question_ids(self, mode: Mode, question: str) -> list[int]:
        """The tokens a question is read as (in chat mode with the chat template's turn ending)."""
        return self._encode(self.lm.split_chat("", question)[1] if mode == "chat" else question)

    def _memory_for(self, key: str, jobs: list[Job]) -> tuple[Memory, str, float]:
        found = self.store.get(key)
        if found is not None:
            self.lm.check_memory(found[0])
            return found[0], found[1], 0.0
        started = time.perf_counter()
        job = jobs[0]
        head = self.lm.split_chat(job.context, "")[0] if job.mode == "chat" else job.context
        ids = self._encode(head)
        if len(ids) > self.config.max_input_tokens:
            raise RequestError(
                400,
                f"the context has {len(ids)} tokens, more than this server's limit of "
                f"{self.config.max_input_tokens}: shorten it",
                code="context_length_exceeded",
            )
        try:
            route = self.lm.route_for(len(ids), self.config.answer_budget)
        except SelfctxError as exc:
            raise RequestError(400, str(exc), code="context_length_exceeded") from None
        memory = compress_unless_abandoned(
            self.lm, ids, route.ratio, lambda: all(j.cancelled.is_set() for j in jobs)
        )
        self.stats.compressions += 1
        if self.config.reuse:
            self.store.put(key, memory)
        return memory, "compressed", time.perf_counter() - started

    def _report(self, key: str, memory: Memory, source: str, seconds: float) -> MemoryReport:
        info = memory.info
        requested = (
            self.lm.route_for(info.n_context_tokens, self.config.answer_budget).requested_ratio
            if info.ratio > 1
            else 1.0
        )
        return MemoryReport(
            context_id=key,
            expert=info.adapter,
            ratio=info.ratio,
            requested_ratio=round(requested, 4),
            achieved_ratio=round(memory.achieved_ratio, 4),
            memory_bytes=memory_footprint(memory),
            memory_entries=memory.num_entries,
            context_tokens=info.n_context_tokens,
            memory_reused=source != "compressed",
            memory_source=source,
            compress_seconds=round(seconds, 4),
        )

    def _serve_group(self, key: str, jobs: list[Job]) -> None:
        started = time.perf_counter()
        memory, source, compress_s = self._memory_for(key, jobs)
        report = self._report(key, memory, source, compress_s)
        rows: list[tuple[Job, DecodeRow, MemoryReport]] = []
        for position, job in enumerate(jobs):
            if position == 1 and source == "compressed":  # the rest of the group shares that compression
                report = dataclasses.replace(
                    report, memory_reused=True, memory_source="batch", compress_seconds=0.0
                )
            if job.question is None:  # registration only
                job.emit("done", report)
                continue
            try:
                row = self._row_for(job, memory)
            except RequestError as exc:
                job.emit("error", exc)
                continue
            rows.append((job, row, report))
            job.emit("start", report)
        if not rows:
            return
        self.stats.jobs += len(rows)
        self.stats.batches += 1
        self.stats.max_batch = max(self.stats.max_batch, len(rows))
        decode_started = time.perf_counter()
        decode_rows(self.lm, memory, [row for _, row, _ in rows])
        decode_s = time.perf_counter() - decode_started
        for job, row, job_report in rows:
            job.emit(
                "done",
                JobResult(
                    text=row.text,
                    finish_reason="stop" if row.finish_reason == "cancelled" else row.finish_reason,
                    prompt_tokens=memory.info.n_context_tokens + len(row.prompt_ids),
                    completion_tokens=len(row.token_ids),
                    memory=job_report,
                    batch_size=len(rows),
                    queue_seconds=started - job.enqueued_at,
                    decode_seconds=decode_s,
                ),
            )

    def _row_for(self, job: Job, memory: Memory) -> DecodeRow:
        assert job.question is not None
        prompt_ids = self._question_ids(job.mode, job.question)
        n_context = memory.info.n_context_tokens
        if n_context + len(prompt_ids) > self.config.max_input_tokens:
            raise RequestError(
                400,
                f"context + question are {n_context + len(prompt_ids)} tokens, more than "
                f"this server's limit of {self.config.max_input_tokens}: shorten them",
                code="context_length_exceeded",
            )
        if len(prompt_ids) + job.max_tokens > self.config.answer_budget:
            raise RequestError(
                400,
                f"the question ({len(prompt_ids)} tokens) + max_tokens ({job.max_tokens}) "
                f"exceed this server's answer budget of {self.config.answer_budget} tokens: ask "
                "a shorter question, lower max_tokens, or move text into the context",
                code="context_length_exceeded",
            )
        if memory.kv_entries + len(prompt_ids) == 0:
            raise RequestError(400, "the prompt is empty: send some text")
        needed = memory.num_entries + int(memory.tail_ids.numel()) + len(prompt_ids) + job.max_tokens
        if needed > self.lm.native_context:
            raise RequestError(
                400,
                f"memory + tail + question + max_tokens need {needed} positions, more than "
                f"the native context {self.lm.native_context}: lower max_tokens",
                code="context_length_exceeded",
            )
        return DecodeRow(
            prompt_ids=prompt_ids,
            max_tokens=job.max_tokens,
            temperature=job.temperature,
            top_p=job.top_p,
            seed=job.seed,
            stop=job.stop,
            on_text=lambda delta: job.emit("text", delta),
            cancelled=job.cancelled.is_set,
        )


__all__ = ["Job", "JobResult", "MemoryReport", "RequestError", "Worker"]
