"""`--executor ray`: the same stages as the local run, as Ray tasks (a local Ray, or the cluster RAY_ADDRESS
names), for either source. The pool stage is one task (its shards depend on each other: growth stops at the
token target and duplicates are judged across shards); the documents are read by the driver. Each task's
sample shard is one Ray task, all running in parallel. Each worker opens its own backend on the run's shared
call cache, so a rerun resumes the same way and the output equals a local run's (every item's outcome depends
only on its seed)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from selfctx.synth.pipeline import (
    PoolSource,
    SynthConfig,
    build_summary,
    open_source,
    pool_stage,
    resolve_tasks,
    run_tasks,
    write_dataset,
)
from selfctx.synth.run_support import Throughput, make_counter, open_llm


def _pool_job(cfg: SynthConfig, out: str) -> dict[str, Any]:
    llm, throughput = open_llm(cfg, Path(out)), Throughput()
    try:
        _, report = pool_stage(cfg, Path(out), llm, make_counter(cfg), throughput)
        return {"report": report.to_json(), **_worker_result(llm, throughput)}
    finally:
        llm.close()


def _task_job(cfg: SynthConfig, out: str, task: str) -> dict[str, Any]:
    one = replace(cfg, tasks=(task,))
    llm, throughput = open_llm(one, Path(out)), Throughput()
    try:
        source = open_source(
            one, Path(out), make_counter(one), llm.model_id
        )  # the finished pool, or the docs
        summaries = run_tasks(llm, one, Path(out), source, throughput)
        return {"summary": summaries[task], **_worker_result(llm, throughput)}
    finally:
        llm.close()


def _worker_result(llm: Any, throughput: Throughput) -> dict[str, Any]:
    return {
        "model": llm.model_id,
        "stats": llm.stats.to_json(),
        "throughput": [throughput.tokens, throughput.calls, throughput.cached],
    }


def run_synth_ray(
    cfg: SynthConfig, out_dir: str | Path, *, command: str | None = None, num_cpus: int | None = None
) -> dict[str, Any]:
    """Run the pipeline with Ray tasks; same outputs and summary as `run_synth`."""
    import ray

    cfg = resolve_tasks(cfg)
    cfg.validate()
    counter = make_counter(cfg)
    documents = None
    if cfg.from_docs:
        from selfctx.synth.docs_run import check_docs

        documents = check_docs(cfg, counter)  # bad documents fail before any worker starts
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    grown = None if cfg.from_docs else ray.get(ray.remote(_pool_job).remote(cfg, str(out)))
    task_job = ray.remote(_task_job)
    task_results = ray.get([task_job.remote(cfg, str(out), t) for t in cfg.tasks])
    gen_seconds = time.perf_counter() - started

    stats: dict[str, Any] = {}
    throughput = Throughput()
    for result in [*([grown] if grown else []), *task_results]:
        for key, value in result["stats"].items():
            stats[key] = stats.get(key, 0) + value
        tokens, calls, cached = result["throughput"]
        throughput.tokens += tokens
        throughput.calls += calls
        throughput.cached += cached
    model = task_results[0]["model"]
    if grown:  # the pool as the job that grew it reported it (shards written this run)
        part, card = {"stages": {"pool": grown["report"]}}, PoolSource.card
    else:
        source = open_source(cfg, out, counter, model, documents=documents)
        part, card = source.describe(), source.card
    summaries = {t: r["summary"] for t, r in zip(cfg.tasks, task_results, strict=True)}
    summary = build_summary(cfg, out, model, stats, part, summaries, throughput, started, gen_seconds)
    summary["executor"] = "ray"
    write_dataset(out, cfg, summary, command, card(summary))
    return summary
