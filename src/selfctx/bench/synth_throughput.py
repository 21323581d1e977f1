"""`selfctx bench synth-throughput`: the pipeline's generated tokens/s against the backend's own raw batched
throughput on the same prompts, in the same run and process.

1. `selfctx synth` stages (pool + task builders + assembly) run on the backend (no call cache), through a
   recorder that keeps every request. Pipeline rate = generated tokens / wall time of the whole run.
2. The same requests go straight to `llm.generate` in batches of the backend's preferred size (the best a
   caller can do). Raw rate = generated tokens / wall time.
The ratio says how busy the pipeline keeps the backend (target >= 90%).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from selfctx.llm.base import LLM, ChatRequest, Completion


class RecordingLLM(LLM):
    """Passes calls to `inner` and keeps the requests, so they can be replayed raw."""

    def __init__(self, inner: LLM) -> None:
        super().__init__()
        self.inner, self.model_id = inner, inner.model_id
        self.requests: list[ChatRequest] = []

    @property
    def preferred_batch_size(self) -> int:
        return self.inner.preferred_batch_size

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        self.requests.extend(requests)
        return self.inner.generate(requests)

    @property
    def stats(self):
        return self.inner.stats

    @stats.setter
    def stats(self, value: object) -> None:
        pass


def raw_throughput(llm: LLM, requests: Sequence[ChatRequest]) -> tuple[int, float]:
    """(generated tokens, seconds) for `requests` handed over in batches of the preferred size."""
    step = max(1, llm.preferred_batch_size)
    tokens, started = 0, time.perf_counter()
    for i in range(0, len(requests), step):
        tokens += sum(c.completion_tokens for c in llm.generate(requests[i : i + step]))
    return tokens, time.perf_counter() - started


def command(
    backend: Annotated[str, typer.Option(help="llamacpp | hf | openai")] = "llamacpp",
    model: Annotated[str, typer.Option(help="Model spec or served name.")] = "smollm2-135m",
    base_url: Annotated[str | None, typer.Option(help="Server URL for --backend openai.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Token counter (default: --model's).")] = None,
    tasks: Annotated[str, typer.Option(help="Tasks to run.")] = "qa,summarization,code",
    per_task: Annotated[int, typer.Option(help="Samples per task.")] = 2,
    length: Annotated[str, typer.Option(help="Sample length.")] = "2k",
    concurrency: Annotated[int | None, typer.Option(help="Backend concurrency.")] = None,
    threads: Annotated[int | None, typer.Option(help="llama.cpp threads.")] = None,
    seed: Annotated[int, typer.Option(help="Run seed.")] = 0,
) -> None:
    """Pipeline generated tokens/s vs the backend's raw batched tokens/s on the same prompts."""
    from selfctx.llm.factory import make_llm
    from selfctx.synth.pipeline import SynthConfig, parse_tasks, run_synth
    from selfctx.synth.tasks.base import Knobs

    kw: dict[str, Any] = {"n_threads": threads} if threads and backend == "llamacpp" else {}
    inner = make_llm(backend, model, base_url=base_url, concurrency=concurrency, **kw)
    recorder = RecordingLLM(inner)
    cfg = SynthConfig(
        model=model, backend=backend, tokenizer=tokenizer, tasks=parse_tasks(tasks), per_task=per_task,
        length=length, seed=seed, pool_shard_size=16, gen=Knobs(passage_words=80, passage_max_tokens=160),
    )  # fmt: skip
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="selfctx-bench-synth-") as out:
        started = time.perf_counter()
        summary = run_synth(cfg, out, llm=recorder)
        pipeline_s = time.perf_counter() - started
    pipeline_tokens = int(summary["generated_tokens_this_run"])
    raw_tokens, raw_s = raw_throughput(inner, recorder.requests)
    inner.close()
    pipe_rate, raw_rate = pipeline_tokens / pipeline_s, raw_tokens / raw_s
    typer.echo(
        f"backend {inner.model_id}, preferred batch {inner.preferred_batch_size}; {len(recorder.requests)} "
        f"calls; load average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f}"
    )
    typer.echo(f"{'':<28}{'tokens':>10}{'seconds':>10}{'tok/s':>10}")
    typer.echo(f"{'pipeline (selfctx synth)':<28}{pipeline_tokens:>10}{pipeline_s:>10.1f}{pipe_rate:>10.2f}")
    typer.echo(f"{'raw batched generate':<28}{raw_tokens:>10}{raw_s:>10.1f}{raw_rate:>10.2f}")
    typer.echo(f"pipeline / raw: {pipe_rate / raw_rate:.1%} (samples written: {summary['samples']})")
