"""`selfctx synth`: nouns -> passage pool -> task drafts -> samples at the requested lengths -> dataset.

Every stage writes atomically to the output directory and a rerun skips what is finished: pool shards have
done-markers, each task's samples are one shard `state/<task>.samples.jsonl` followed by its done-marker
`state/<task>.json`, and every model call goes through the persistent call cache (`cache/`), so a run killed
midway replays its finished calls and writes the same dataset as an uninterrupted run. The dataset itself
(`data/train-*.jsonl`, card, histogram, config, manifest) is rewritten from the task shards by the length
helper's DatasetWriter at the end. All randomness of item i of task t derives from (seed, t, i).

Each task tries up to `per_task * max_attempts_per_sample` items; when that leaves it short, it gets one more
round of `retry_per_missing` items (new seeds, nouns and passages) per missing sample. A task still short
after that is named on stderr at the end of the run, with its kept count and main drop reasons, and listed
under `shortfalls` in summary.json and the dataset card.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, get_args

from selfctx.checks import Executor
from selfctx.errors import SelfctxError
from selfctx.fsutil import write_json_atomic, write_jsonl_atomic
from selfctx.llm.base import LLM
from selfctx.progress import progress_bar
from selfctx.synth.corpus import PoolReport, ensure_pool
from selfctx.synth.filters import Dropped, FilterCounts, normalized_hash
from selfctx.synth.lengths import LengthSpec
from selfctx.synth.run_support import (
    Throughput,
    counter_name,
    finished_tasks,
    make_counter,
    open_llm,
    shortfalls,
)
from selfctx.synth.scheduler import run_builders
from selfctx.synth.seeds import derive_rng, derive_seed
from selfctx.synth.tasks import TASKS
from selfctx.synth.tasks.base import BuildGen, Knobs, TaskContext
from selfctx.synth.types import Passage, SampleDraft

DEFAULT_LENGTH = "16k"


@dataclass(frozen=True)
class SynthConfig:
    """Everything a run depends on (written to the output as config.yaml)."""

    model: str = "smollm2-135m"
    backend: str = "llamacpp"
    base_url: str | None = None
    tokenizer: str | None = None  # token counter: a model spec, or "regex" (tests); default: the model's
    concurrency: int | None = None
    timeout: float | None = None  # seconds per call (openai backend)
    max_retries: int | None = None  # retries per call (openai backend)
    threads: int | None = None  # llama.cpp threads per instance (default: all cores)
    tasks: tuple[str, ...] = tuple(TASKS)
    per_task: int = 2
    length: str | None = None
    bucket: str | None = None
    uniform: str | None = None
    seed: int = 0
    pool: str | None = None  # default: <out>/pool
    grow_pool: bool = True
    allow_repeat: bool = False
    depths: tuple[float, ...] | None = None
    executor: str = "local"
    pool_shard_size: int = 16
    max_attempts_per_sample: int = 4
    retry_per_missing: int = 6  # a task short after its attempts: one more round of this many per missing
    max_in_flight: int | None = None  # builders in flight (default: 4x the backend's preferred batch)
    from_docs: str | None = None  # a folder of txt/md/jsonl documents: chunk-and-stitch (synth.docs)
    chunk_tokens: int = 384  # --from-docs: most tokens per chunk (each fits one model call)
    gen: Knobs = field(default_factory=Knobs)

    def length_spec(self) -> LengthSpec:
        if not (self.length or self.bucket or self.uniform):
            return LengthSpec.parse(length=DEFAULT_LENGTH)
        return LengthSpec.parse(length=self.length, bucket=self.bucket, uniform=self.uniform)

    def validate(self) -> None:
        from selfctx.synth.docs import DOCS_TASKS

        known = DOCS_TASKS if self.from_docs else tuple(TASKS)
        unknown = [t for t in self.tasks if t not in known]
        if unknown or not self.tasks:
            with_docs = " with --from-docs" if self.from_docs else ""
            raise SelfctxError(
                f"unknown task(s){with_docs} {', '.join(unknown) or '(none)'}: use all or some of "
                f"{', '.join(known)}"
            )
        if self.per_task < 1:
            raise SelfctxError(f"--per-task must be at least 1 (got {self.per_task})")
        if self.max_attempts_per_sample < 1 or self.retry_per_missing < 0:
            raise SelfctxError(
                f"max_attempts_per_sample must be at least 1 and retry_per_missing at least 0 (got "
                f"{self.max_attempts_per_sample} and {self.retry_per_missing})"
            )
        if self.executor not in get_args(Executor):
            raise SelfctxError(f"unknown executor {self.executor!r}: use local or ray")
        self.length_spec()


def parse_tasks(text: str, *, from_docs: bool = False) -> tuple[str, ...]:
    if text.strip().lower() == "all":
        if from_docs:
            from selfctx.synth.docs import DOCS_TASKS

            return DOCS_TASKS
        return tuple(TASKS)
    return tuple(t.strip() for t in text.split(",") if t.strip())


def min_pool_tokens(spec: LengthSpec) -> int:
    """Distractor tokens the longest sample needs, with headroom for the excluded nouns and headers."""
    return int(spec.hi * 1.15) + 256


class Source(Protocol):
    """Where a run's samples come from: the model's passage pool (`PoolSource`) or the user's documents
    (`synth.docs_run.DocsSource`). The task stage, its resume, the summary and the dataset are shared."""

    label: str  # the progress bar's unit of work

    def builder(self, task: str, index: int) -> BuildGen | None:
        """Item `index` of `task` (its outcome depends only on seed, task and index); None: no item fits."""
        ...

    def dedup_key(self, draft: Any) -> str: ...

    def place(self, task: str, index: int, draft: Any) -> dict[str, Any]:
        """The kept draft as a dataset row at its target length."""
        ...

    def describe(self) -> dict[str, Any]:
        """Summary keys of its own (merged into summary.json)."""
        ...

    def card(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Dataset card lines of its own."""
        ...


@dataclass
class TaskRun:
    """Book-keeping for one task: which item indices are launched, kept, dropped (and at which step)."""

    name: str
    wanted: int
    max_items: int
    launched: int = 0
    in_flight: int = 0
    drafts: dict[int, Any] = field(default_factory=dict)
    dropped: FilterCounts = field(default_factory=FilterCounts)
    duplicates: set[int] = field(default_factory=set)
    drop_details: Counter[str] = field(default_factory=Counter)  # "reason (step)" -> items
    retries: int = 0  # items added by the retry round

    def kept(self) -> list[int]:
        return sorted(i for i in self.drafts if i not in self.duplicates)

    def needs_more(self) -> bool:
        return len(self.kept()) + self.in_flight < self.wanted and self.launched < self.max_items

    def add_retries(self, per_missing: int) -> bool:
        """Once all first-round items are done and the task is short: one more round of `per_missing` items
        per missing sample. Decided on finished items only, so the choice does not depend on batching."""
        missing = self.wanted - len(self.kept())
        if self.retries or missing <= 0 or self.in_flight or self.launched < self.max_items:
            return False
        self.retries = missing * per_missing
        self.max_items += self.retries
        return self.retries > 0

    def count_drop(self, drop: Dropped) -> None:
        self.dropped[drop.reason] += 1
        detail = drop.detail if len(drop.detail) <= 60 else drop.detail[:57] + "..."
        self.drop_details[f"{drop.reason} ({detail})" if detail else drop.reason] += 1

    def summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        kinds = _count(r["extra"]["question_kind"] for r in rows if r["extra"].get("question_kind"))
        return {
            "kept": len(rows),
            "wanted": self.wanted,
            "attempted": self.launched,
            "retries": self.retries,
            "dropped": self.dropped.as_dict(),
            "drop_details": dict(self.drop_details.most_common()),
            "buckets": _count(r["bucket"] for r in rows),
            "token_counts": [r["token_count"] for r in rows],
            **({"question_kinds": kinds} if kinds else {}),
        }


def build_drafts(
    llm: LLM,
    tasks: Sequence[str],
    cfg: SynthConfig,
    source: Source,
    *,
    on_batch: Any = None,
    progress: Any = None,
) -> dict[str, TaskRun]:
    """Run the task builders (all tasks interleaved, to keep the backend busy) until each has its drafts.

    The kept drafts are the first `per_task` non-dropped, non-duplicate items in index order, so the result
    does not depend on batching: an item's outcome depends only on (seed, task, index). A task still short
    once its `per_task * max_attempts_per_sample` items are done gets its retry round (TaskRun.add_retries).
    """
    runs = {t: TaskRun(t, cfg.per_task, cfg.per_task * cfg.max_attempts_per_sample) for t in tasks}

    def next_builder() -> tuple[tuple[str, int], BuildGen] | None:
        for run in runs.values():
            while run.needs_more():
                i = run.launched
                run.launched += 1
                builder = source.builder(run.name, i)
                if builder is None:
                    run.count_drop(Dropped("too_short"))  # no item of this target length fits
                    continue
                run.in_flight += 1
                return (run.name, i), builder
        return None

    def on_done(key: Any, outcome: Any) -> None:
        name, i = key
        run = runs[name]
        run.in_flight -= 1
        if isinstance(outcome, Dropped):
            run.count_drop(outcome)
        else:
            run.drafts[i] = outcome
            if progress is not None:
                progress.update(1)

    while True:
        run_builders(llm, next_builder, on_done, on_batch=on_batch, max_in_flight=cfg.max_in_flight)
        # Duplicates are judged in index order once all launched items are in, so the choice is stable.
        again = False
        for run in runs.values():
            seen: set[str] = set()
            for i in sorted(run.drafts):
                key = source.dedup_key(run.drafts[i])
                if key in seen and i not in run.duplicates:
                    run.duplicates.add(i)
                    run.count_drop(Dropped("duplicate"))
                seen.add(key)
            again |= run.add_retries(cfg.retry_per_missing) or run.needs_more()
        if not again:
            return runs


def draft_key(draft: SampleDraft) -> str:
    return normalized_hash("\n".join([*(p.text for p in draft.relevant), draft.question, draft.answer]))


class PoolSource:
    """The model's own passages: the six task builders, their drafts assembled among distractor passages."""

    label = "task drafts"

    def __init__(
        self, cfg: SynthConfig, pool: Sequence[Passage], report: PoolReport, counter: Any, model: str
    ) -> None:
        self.cfg, self.pool, self.report, self.counter, self.model = cfg, pool, report, counter, model

    def builder(self, task: str, index: int) -> BuildGen:
        seed = derive_seed(self.cfg.seed, task, index)
        return TASKS[task](TaskContext(task, index, seed, self.pool, self.counter, self.cfg.gen))

    def dedup_key(self, draft: SampleDraft) -> str:
        return draft_key(draft)

    def place(self, task: str, index: int, draft: SampleDraft) -> dict[str, Any]:
        from selfctx.synth.assemble import assemble_sample, minimum_tokens

        spec = self.cfg.length_spec()
        rng = derive_rng(self.cfg.seed, task, index, "assemble")
        target = spec.sample_target(rng, at_least=minimum_tokens(draft, len(self.pool), self.counter))
        sample = assemble_sample(
            draft,
            self.pool,
            target,
            self.counter,
            rng,
            depths=self.cfg.depths,
            allow_repeat=self.cfg.allow_repeat,
            model=self.model,
            seed=derive_seed(self.cfg.seed, task, index),
            bucket=spec.bucket_for(target),
        )
        return sample.to_json()

    def describe(self) -> dict[str, Any]:
        return {"stages": {"pool": self.report.to_json()}}

    @staticmethod
    def card(summary: dict[str, Any]) -> dict[str, Any]:
        pool = summary["stages"]["pool"]
        return {"pool_passages": pool["passages"], "pool_tokens": pool["tokens"]}


def open_source(
    cfg: SynthConfig,
    out: Path,
    counter: Any,
    model: str,
    *,
    grow: LLM | None = None,
    on_batch: Any = None,
    documents: Any = None,
) -> Source:
    """The run's source, ready, for samples written by `model`: the pool loaded (grown first through `grow`
    when given), or the documents (read now unless already given) checked against the ones this output was
    started with."""
    if cfg.from_docs:
        from selfctx.synth.docs_run import open_docs

        return open_docs(cfg, out, counter, model, documents)
    pool, report = pool_stage(cfg, out, grow, counter, on_batch or Throughput())
    return PoolSource(cfg, pool, report, counter, model)


def run_synth(
    cfg: SynthConfig, out_dir: str | Path, llm: LLM | None = None, *, command: str | None = None
) -> dict[str, Any]:
    """Run (or resume) the pipeline into `out_dir`; returns the run summary (also in summary.json)."""
    cfg = resolve_tasks(cfg)
    cfg.validate()
    out = Path(out_dir)
    started = time.perf_counter()
    cfg.length_spec()  # bad length options fail before any work
    counter = make_counter(cfg)
    documents = None
    if cfg.from_docs:
        from selfctx.synth.docs_run import check_docs

        documents = check_docs(cfg, counter)  # bad documents fail before any model load or file is written
    out.mkdir(parents=True, exist_ok=True)
    own_llm = llm is None
    if llm is None:
        llm = open_llm(cfg, out)
    throughput = Throughput()
    try:
        source = open_source(
            cfg, out, counter, llm.model_id, grow=llm, on_batch=throughput, documents=documents
        )
        task_summaries = run_tasks(llm, cfg, out, source, throughput)
        gen_seconds = time.perf_counter() - started
        summary = build_summary(
            cfg, out, llm.model_id, llm.stats.to_json(), source.describe(), task_summaries, throughput,
            started, gen_seconds,
        )  # fmt: skip
        write_dataset(out, cfg, summary, command, source.card(summary))
    finally:
        if own_llm:
            llm.close()
    return summary


def resolve_tasks(cfg: SynthConfig) -> SynthConfig:
    """With --from-docs the six-task default means the documents' own tasks."""
    from selfctx.synth.docs import DOCS_TASKS

    if cfg.from_docs and tuple(cfg.tasks) == tuple(TASKS):
        return replace(cfg, tasks=DOCS_TASKS)
    return cfg


def pool_stage(
    cfg: SynthConfig, out: Path, llm: LLM | None, counter: Any, throughput: Throughput
) -> tuple[list[Passage], PoolReport]:
    """Load or grow the passage pool (llm=None: load only)."""
    pool_dir = Path(cfg.pool) if cfg.pool else out / "pool"
    with progress_bar(desc="pool passages", total=None, unit="passage") as bar:
        return ensure_pool(
            llm,
            pool_dir,
            seed=cfg.seed,
            model=llm.model_id if llm is not None else _pool_model(pool_dir),
            counter=counter,
            counter_name=counter_name(counter),
            knobs=cfg.gen,
            min_tokens=min_pool_tokens(cfg.length_spec()),
            shard_size=cfg.pool_shard_size,
            grow=cfg.grow_pool and llm is not None,
            max_in_flight=cfg.max_in_flight,
            on_batch=throughput,
            progress=bar,
        )


def _pool_model(pool_dir: Path) -> str:
    return str(json.loads((pool_dir / "pool.json").read_text())["model"])


def run_tasks(
    llm: LLM, cfg: SynthConfig, out: Path, source: Source, throughput: Throughput
) -> dict[str, dict[str, Any]]:
    """Draft, place and write every task not yet done (its rows, then its done-marker)."""
    state_dir = out / "state"
    state_dir.mkdir(exist_ok=True)
    summaries, todo = finished_tasks(state_dir, cfg.tasks)
    if todo:
        with progress_bar(desc=source.label, total=cfg.per_task * len(todo), unit="draft") as bar:
            runs = build_drafts(llm, todo, cfg, source, on_batch=throughput, progress=bar)
        for task in todo:
            run = runs[task]
            rows = []
            for i in run.kept()[: cfg.per_task]:
                row = source.place(task, i, run.drafts[i])
                row["extra"] = {**row["extra"], "item_index": i}
                rows.append(row)
            write_jsonl_atomic(state_dir / f"{task}.samples.jsonl", rows)
            summaries[task] = run.summary(rows)
            write_json_atomic(state_dir / f"{task}.json", summaries[task])  # the done-marker, after the data
    return summaries


def report_shortfalls(summary: dict[str, Any]) -> None:
    """One line on stderr per task that fell short of its quota (the CLI's last words)."""
    for line in summary.get("shortfalls", {}).values():
        print(f"selfctx synth: {line}", file=sys.stderr, flush=True)


def _count(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def build_summary(
    cfg: SynthConfig,
    out: Path,
    model_id: str,
    backend_stats: dict[str, Any],
    source_part: dict[str, Any],
    tasks: dict[str, dict[str, Any]],
    throughput: Throughput,
    started: float,
    gen_seconds: float,
) -> dict[str, Any]:
    """summary.json: the source's own keys, the tasks, the filters' drops and throughput (written)."""
    dropped = FilterCounts()  # the pool stage's drops (a source's own stage) count with the tasks'
    for stage in source_part.get("stages", {}).values():
        dropped.update(stage.get("dropped", {}))
    for t in tasks.values():
        dropped.update(t["dropped"])
    wall = time.perf_counter() - started
    own = {k: v for k, v in source_part.items() if k != "stages"}
    summary = {
        "model": model_id,
        "seed": cfg.seed,
        "length": cfg.length_spec().describe(),
        **own,
        "stages": {**source_part.get("stages", {}), "tasks": tasks},
        "samples": sum(t["kept"] for t in tasks.values()),
        "shortfalls": shortfalls(tasks, out),
        "dropped_by_filter": dropped.as_dict(),
        "backend": backend_stats,
        "calls_this_run": throughput.calls,
        "cached_calls_this_run": throughput.cached,
        "generated_tokens_this_run": throughput.tokens,
        "generated_tokens_per_s": round(throughput.tokens / gen_seconds, 2) if gen_seconds > 0 else 0.0,
        "wall_seconds": round(wall, 2),
        "python": platform.python_version(),
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def write_dataset(
    out: Path, cfg: SynthConfig, summary: dict[str, Any], command: str | None, source_card: dict[str, Any]
) -> None:
    """Task shards (task order, then item order) -> data/train-*.jsonl, card, histogram, manifest."""
    from selfctx.config import to_dict
    from selfctx.synth.writer import DatasetWriter

    writer = DatasetWriter(out)
    for task in cfg.tasks:
        with (out / "state" / f"{task}.samples.jsonl").open(encoding="utf-8") as f:
            writer.add_many(json.loads(line) for line in f if line.strip())
    card = {
        "model": summary["model"],
        "seed": summary["seed"],
        "filters": summary["dropped_by_filter"],
        "backend_stats": summary["backend"],
        **{k: summary[k] for k in ("length", "samples", "generated_tokens_per_s", "wall_seconds")},
        **source_card,
    }
    if summary["shortfalls"]:
        card["shortfalls"] = "; ".join(summary["shortfalls"].values())
    if command:
        card["command"] = command
    writer.finalize(to_dict(cfg), card)
