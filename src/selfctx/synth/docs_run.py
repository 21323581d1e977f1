"""Run (or resume) `selfctx synth --from-docs`: documents -> per-chunk notes -> stitched samples -> dataset.

Resume works as in pipeline.py: each task's rows are one shard `state/<task>.samples.jsonl` followed by its
done-marker `state/<task>.json`, and every model call goes through the persistent call cache (`cache/`), so a
run killed midway replays its finished calls and writes the same dataset. `state/docs.json` records the
documents' fingerprint: a rerun on changed documents stops instead of mixing two corpora.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from selfctx.errors import SelfctxError
from selfctx.fsutil import write_json_atomic, write_jsonl_atomic
from selfctx.llm.base import LLM
from selfctx.progress import progress_bar
from selfctx.synth.docs import (
    DOCS_TASKS,
    DocCorpus,
    ItemPlan,
    Steps,
    build_item,
    check_corpus_length,
    load_corpus,
    plan_item,
)
from selfctx.synth.filters import Dropped, FilterCounts, normalized_hash
from selfctx.synth.run_support import Throughput, finished_tasks, make_counter, open_llm, shortfalls
from selfctx.synth.scheduler import run_builders
from selfctx.synth.seeds import derive_rng, derive_seed
from selfctx.synth.stitch import DocDraft, stitch_sample


@dataclass
class DocsTaskRun:
    """Book-keeping for one task: launched, kept, dropped item indices."""

    name: str
    wanted: int
    max_items: int
    launched: int = 0
    in_flight: int = 0
    drafts: dict[int, tuple[ItemPlan, DocDraft]] = field(default_factory=dict)
    dropped: FilterCounts = field(default_factory=FilterCounts)
    duplicates: set[int] = field(default_factory=set)

    def kept(self) -> list[int]:
        return sorted(i for i in self.drafts if i not in self.duplicates)

    def needs_more(self) -> bool:
        return len(self.kept()) + self.in_flight < self.wanted and self.launched < self.max_items


def build_doc_drafts(llm: LLM, tasks: Sequence[str], cfg: Any, corpus: DocCorpus, counter: Any, *,
                     on_batch: Any = None, progress: Any = None) -> dict[str, DocsTaskRun]:  # fmt: skip
    """Run the items of every task (interleaved, to keep the backend busy) until each has its drafts."""
    spec = cfg.length_spec()
    runs = {t: DocsTaskRun(t, cfg.per_task, cfg.per_task * cfg.max_attempts_per_sample) for t in tasks}
    plans: dict[tuple[str, int], ItemPlan] = {}

    def next_builder() -> tuple[tuple[str, int], Steps] | None:
        for run in runs.values():
            while run.needs_more():
                i = run.launched
                run.launched += 1
                plan = plan_item(run.name, i, corpus, spec, cfg.seed, counter, cfg.gen.answer_max_tokens)
                if plan is None:
                    run.dropped["too_short"] += 1  # this item's target is too short for any chunk choice
                    continue
                run.in_flight += 1
                plans[(run.name, i)] = plan
                return (run.name, i), build_item(run.name, plan, corpus, cfg.seed, cfg.gen)
        return None

    def on_done(key: Any, outcome: DocDraft | Dropped) -> None:
        run = runs[key[0]]
        run.in_flight -= 1
        if isinstance(outcome, Dropped):
            run.dropped[outcome.reason] += 1
        else:
            run.drafts[key[1]] = (plans[key], outcome)
            if progress is not None:
                progress.update(1)

    while True:
        run_builders(llm, next_builder, on_done, on_batch=on_batch, max_in_flight=cfg.max_in_flight)
        again = False
        for run in runs.values():  # duplicates judged in index order: a stable choice
            seen: set[str] = set()
            for i in sorted(run.drafts):
                d = run.drafts[i][1]
                key = normalized_hash(f"{d.doc_id} {d.gold} {d.instruction} {d.question} {d.answer}")
                if key in seen and i not in run.duplicates:
                    run.duplicates.add(i)
                    run.dropped["duplicate"] += 1
                seen.add(key)
            again |= run.needs_more()
        if not again:
            return runs


def stitch_task(
    run: DocsTaskRun, cfg: Any, corpus: DocCorpus, counter: Any, model: str
) -> list[dict[str, Any]]:
    spec = cfg.length_spec()
    rows = []
    for i in run.kept()[: cfg.per_task]:
        plan, draft = run.drafts[i]
        sample = stitch_sample(
            draft,
            corpus.docs[plan.doc_id],
            corpus.others(plan.doc_id),
            plan.target,
            counter,
            derive_rng(cfg.seed, run.name, i, "stitch"),
            bucket=spec.bucket_for(plan.target),
            model=model,
            seed=derive_seed(cfg.seed, run.name, i),
        )
        row = sample.to_json()
        row["extra"] = {**row["extra"], "item_index": i}
        rows.append(row)
    return rows


def _check_same_documents(state_dir: Path, corpus: DocCorpus) -> None:
    """A rerun into the same output must read the same documents (else the resumed data would mix)."""
    marker = state_dir / "docs.json"
    if marker.is_file():
        before = json.loads(marker.read_text())
        if before.get("fingerprint") != corpus.fingerprint:
            raise SelfctxError(
                f"the documents in {corpus.folder} (or the chunk size) changed since {state_dir.parent} was "
                f"started: write to a new --out, or delete {state_dir} to rebuild the samples"
            )
    write_json_atomic(marker, corpus.describe())


def run_from_docs(cfg: Any, out_dir: str | Path, llm: LLM | None = None, *,
                  command: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Run (or resume) --from-docs into `out_dir`; returns the run summary (also in summary.json)."""
    from selfctx.synth.tasks import TASKS

    if tuple(cfg.tasks) == tuple(TASKS):  # the six-task default means "all" here
        cfg = replace(cfg, tasks=DOCS_TASKS)
    cfg.validate()
    if cfg.executor != "local":
        raise SelfctxError("--from-docs runs on the local executor: drop --executor ray")
    if cfg.chunk_tokens < 32:
        raise SelfctxError(f"chunk_tokens {cfg.chunk_tokens} is too small: use at least 32 (default 384)")
    started = time.perf_counter()
    out = Path(out_dir)
    spec = cfg.length_spec()
    counter = make_counter(cfg)
    corpus = load_corpus(cfg.from_docs, counter, cfg.chunk_tokens)  # bad input fails before any model load
    check_corpus_length(corpus, spec)
    for task in cfg.tasks:
        if plan_item(task, 0, corpus, spec, cfg.seed, counter, cfg.gen.answer_max_tokens) is None:
            raise SelfctxError(
                f"no {task} item fits a {spec.describe()} sample with chunks of up to {cfg.chunk_tokens} "
                "tokens (docs_crossqa needs a document of 3+ chunks): choose a longer length, a smaller "
                "chunk size (--set chunk_tokens=...) or drop that task"
            )
    out.mkdir(parents=True, exist_ok=True)
    state_dir = out / "state"
    state_dir.mkdir(exist_ok=True)
    _check_same_documents(state_dir, corpus)
    own_llm = llm is None
    if llm is None:
        llm = open_llm(cfg, out)
    throughput = Throughput()
    try:
        summaries, todo = finished_tasks(state_dir, cfg.tasks)
        if todo:
            with progress_bar(desc="docs drafts", total=cfg.per_task * len(todo), unit="draft") as bar:
                runs = build_doc_drafts(llm, todo, cfg, corpus, counter, on_batch=throughput, progress=bar)
            for task in todo:
                rows = stitch_task(runs[task], cfg, corpus, counter, llm.model_id)
                write_jsonl_atomic(state_dir / f"{task}.samples.jsonl", rows)
                summaries[task] = task_summary(runs[task], rows, cfg.per_task)
                write_json_atomic(state_dir / f"{task}.json", summaries[task])  # done-marker, after the data
        gen_seconds = time.perf_counter() - started
        summary = docs_summary(cfg, corpus, llm, summaries, throughput, started, gen_seconds)
        write_json_atomic(out / "summary.json", summary)
        write_docs_dataset(out, cfg, summary, command)
    finally:
        if own_llm:
            llm.close()
    return summary


def task_summary(run: DocsTaskRun, rows: list[dict[str, Any]], wanted: int) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for r in rows:
        kind = r["extra"].get("question_kind")
        if kind:
            kinds[kind] = kinds.get(kind, 0) + 1
    buckets: dict[str, int] = {}
    for r in rows:
        buckets[r["bucket"]] = buckets.get(r["bucket"], 0) + 1
    return {
        "kept": len(rows),
        "wanted": wanted,
        "attempted": run.launched,
        "dropped": run.dropped.as_dict(),
        "buckets": buckets,
        "token_counts": [r["token_count"] for r in rows],
        **({"question_kinds": kinds} if kinds else {}),
    }


def docs_summary(cfg: Any, corpus: DocCorpus, llm: LLM, tasks: dict[str, dict[str, Any]], throughput: Any,
                 started: float, gen_seconds: float) -> dict[str, Any]:  # fmt: skip
    dropped = FilterCounts()
    for t in tasks.values():
        dropped.update(t["dropped"])
    return {
        "model": llm.model_id,
        "seed": cfg.seed,
        "source": "documents",
        "length": cfg.length_spec().describe(),
        "documents": {**corpus.describe(), "chunk_tokens": cfg.chunk_tokens},
        "stages": {"tasks": tasks},
        "samples": sum(t["kept"] for t in tasks.values()),
        "shortfalls": shortfalls(tasks),
        "dropped_by_filter": dropped.as_dict(),
        "backend": llm.stats.to_json(),
        "calls_this_run": throughput.calls,
        "cached_calls_this_run": throughput.cached,
        "generated_tokens_this_run": throughput.tokens,
        "generated_tokens_per_s": round(throughput.tokens / gen_seconds, 2) if gen_seconds > 0 else 0.0,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "python": platform.python_version(),
    }


def write_docs_dataset(out: Path, cfg: Any, summary: dict[str, Any], command: str | None) -> None:
    """Task shards -> data/train-*.jsonl, card, histogram, config, manifest (the six-task format)."""
    from selfctx.config import to_dict
    from selfctx.synth.writer import DatasetWriter

    writer = DatasetWriter(out)
    for task in cfg.tasks:
        with (out / "state" / f"{task}.samples.jsonl").open(encoding="utf-8") as f:
            writer.add_many(json.loads(line) for line in f if line.strip())
    docs = summary["documents"]
    card = {
        "model": summary["model"],
        "seed": summary["seed"],
        "filters": summary["dropped_by_filter"],
        "backend_stats": summary["backend"],
        "source": f"{docs['documents']} documents in {docs['path']} ({docs['chunks']} chunks, "
        f"{docs['tokens']:,} tokens)",
        **{k: summary[k] for k in ("length", "samples", "generated_tokens_per_s", "wall_seconds")},
    }
    if summary["shortfalls"]:
        card["shortfalls"] = "; ".join(summary["shortfalls"].values())
    if command:
        card["command"] = command
    writer.finalize(to_dict(cfg), card)
