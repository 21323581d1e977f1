"""The passage pool: the model writes passages about WordNet nouns in varied genres.

On disk: `pool.json` (model, tokenizer, seed) and shards `passages-00000.jsonl`, each followed by its
done-marker `passages-00000.done.json` (kept/dropped counts), all written atomically. A rerun (or `--pool
DIR`) loads finished shards and only writes what is missing; the pool grows shard by shard until it holds
the tokens the requested lengths need. Passage i's noun, genre and sampling seed derive from (seed, i), so
the pool is the same whatever the batching, and a shard's passages are filtered in index order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from selfctx.errors import SelfctxError
from selfctx.fsutil import write_json_atomic, write_jsonl_atomic
from selfctx.llm.base import LLM, ChatRequest, Completion
from selfctx.synth.filters import Dropped, FilterCounts, check_text, normalized_hash
from selfctx.synth.nouns import draw_nouns
from selfctx.synth.parsing import clean_passage
from selfctx.synth.scheduler import run_builders
from selfctx.synth.seeds import derive_seed
from selfctx.synth.tasks.base import CountsTokens, Knobs, TaskContext, failed
from selfctx.synth.types import Passage

POOL_META = "pool.json"


@dataclass
class PoolReport:
    passages: int = 0
    tokens: int = 0
    shards_reused: int = 0
    shards_written: int = 0
    attempted: int = 0
    dropped: FilterCounts = field(default_factory=FilterCounts)

    def to_json(self) -> dict[str, Any]:
        return {
            "passages": self.passages,
            "tokens": self.tokens,
            "shards_reused": self.shards_reused,
            "shards_written": self.shards_written,
            "attempted": self.attempted,
            "dropped": self.dropped.as_dict(),
        }


def passage_builder(ctx: TaskContext) -> Generator[list[ChatRequest], list[Completion], Passage | Dropped]:
    (noun,) = draw_nouns(ctx.rng, 1)
    genre = ctx.genre()
    prompt = ctx.passage_prompt(noun, genre)
    (reply,) = yield [ctx.request(prompt, max_tokens=ctx.knobs.passage_max_tokens)]
    if drop := failed(reply):
        return drop
    text = clean_passage(reply.text)
    if reason := check_text(text, min_words=ctx.knobs.min_passage_words):
        return Dropped(reason)
    return Passage(
        id=f"p{ctx.index:07d}", noun=noun, genre=genre.name, text=text, n_tokens=ctx.counter.count(text)
    )


def _shard_path(pool_dir: Path, shard: int) -> Path:
    return pool_dir / f"passages-{shard:05d}.jsonl"


def _marker_path(pool_dir: Path, shard: int) -> Path:
    return pool_dir / f"passages-{shard:05d}.done.json"


def load_pool(pool_dir: str | Path) -> list[Passage]:
    """All passages of the finished shards of a pool directory, in shard order."""
    pool_dir = Path(pool_dir)
    passages: list[Passage] = []
    shard = 0
    while _marker_path(pool_dir, shard).is_file():
        with _shard_path(pool_dir, shard).open(encoding="utf-8") as f:
            passages.extend(Passage.from_json(json.loads(line)) for line in f if line.strip())
        shard += 1
    return passages


def _check_meta(pool_dir: Path, meta: dict[str, Any]) -> None:
    path = pool_dir / POOL_META
    if not path.is_file():
        write_json_atomic(path, meta)
        return
    old = json.loads(path.read_text())
    if old.get("seed") != meta["seed"] or old.get("model") != meta["model"]:
        raise SelfctxError(
            f"pool {pool_dir} was written with model {old.get('model')!r}, seed {old.get('seed')}, not "
            f"{meta['model']!r}, seed {meta['seed']}: pass the same --model/--seed, or another --pool DIR"
        )


def ensure_pool(
    llm: LLM | None,
    pool_dir: str | Path,
    *,
    seed: int,
    model: str,
    counter: CountsTokens,
    counter_name: str,
    knobs: Knobs,
    min_tokens: int,
    min_passages: int = 12,
    shard_size: int = 32,
    grow: bool = True,
    max_in_flight: int | None = None,
    on_batch: Callable[[list[Completion]], None] | None = None,
    progress: Any = None,
) -> tuple[list[Passage], PoolReport]:
    """Load the pool at `pool_dir` and write shards until it holds >= min_tokens and >= min_passages."""
    pool_dir = Path(pool_dir)
    pool_dir.mkdir(parents=True, exist_ok=True)
    _check_meta(pool_dir, {"model": model, "seed": seed, "tokenizer": counter_name, "shard_size": shard_size})
    shard_size = int(_read_meta(pool_dir).get("shard_size", shard_size))  # an existing pool keeps its own
    report = PoolReport()
    passages: list[Passage] = []
    seen: set[str] = set()
    shard = 0
    while True:
        total = sum(p.n_tokens for p in passages)
        if total >= min_tokens and len(passages) >= min_passages:
            break
        marker = _marker_path(pool_dir, shard)
        if marker.is_file():
            with _shard_path(pool_dir, shard).open(encoding="utf-8") as f:
                kept = [Passage.from_json(json.loads(line)) for line in f if line.strip()]
            done = json.loads(marker.read_text())
            report.dropped.update(done["dropped"])
            report.attempted += done["attempted"]
            report.shards_reused += 1
        else:
            if llm is None or not grow:
                break
            kept, dropped = _write_shard(
                llm, pool_dir, shard, seed, counter, knobs, shard_size, seen, on_batch, max_in_flight
            )
            report.dropped.update(dropped)
            report.attempted += shard_size
            report.shards_written += 1
            if not kept:
                raise SelfctxError(
                    f"the model wrote no usable passage in pool shard {shard} (dropped: {dict(dropped)}): "
                    "check the backend (--backend/--model/--base-url) and its answers"
                )
        for p in kept:
            seen.add(normalized_hash(p.text))
        passages.extend(kept)
        if progress is not None:
            progress.update(len(kept))
        shard += 1
    # Token counts are under the target tokenizer; a pool written under another one is recounted.
    if _read_meta(pool_dir).get("tokenizer") != counter_name:
        passages = [replace(p, n_tokens=counter.count(p.text)) for p in passages]
    report.passages = len(passages)
    report.tokens = sum(p.n_tokens for p in passages)
    return passages, report


def _read_meta(pool_dir: Path) -> dict[str, Any]:
    return json.loads((pool_dir / POOL_META).read_text())


def _write_shard(
    llm: LLM,
    pool_dir: Path,
    shard: int,
    seed: int,
    counter: CountsTokens,
    knobs: Knobs,
    shard_size: int,
    seen: set[str],
    on_batch: Callable[[list[Completion]], None] | None,
    max_in_flight: int | None,
) -> tuple[list[Passage], FilterCounts]:
    indices = iter(range(shard * shard_size, (shard + 1) * shard_size))
    outcomes: dict[int, Passage | Dropped] = {}

    def next_builder() -> tuple[int, Any] | None:
        i = next(indices, None)
        if i is None:
            return None
        ctx = TaskContext("pool", i, derive_seed(seed, "pool", i), (), counter, knobs)
        return i, passage_builder(ctx)

    def on_done(key: Hashable, outcome: Passage | Dropped) -> None:
        outcomes[int(key)] = outcome  # type: ignore[call-overload]

    run_builders(llm, next_builder, on_done, on_batch=on_batch, max_in_flight=max_in_flight)
    kept: list[Passage] = []
    dropped = FilterCounts()
    for i in sorted(outcomes):  # filter in index order: independent of completion order
        outcome = outcomes[i]
        if isinstance(outcome, Dropped):
            dropped[outcome.reason] += 1
            continue
        digest = normalized_hash(outcome.text)
        if digest in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(digest)
        kept.append(outcome)
    write_jsonl_atomic(_shard_path(pool_dir, shard), [p.to_json() for p in kept])
    write_json_atomic(
        _marker_path(pool_dir, shard), {"kept": len(kept), "attempted": shard_size, "dropped": dict(dropped)}
    )
    return kept, dropped
