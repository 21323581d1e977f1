"""The user's documents as the source of `selfctx synth --from-docs`: per-chunk notes -> stitched samples.

The task stage, its resume (a shard and a done-marker per task, every call through the call cache), the
summary and the dataset are the pipeline's (synth.pipeline); this module is what differs: each item is
planned over the documents' chunks (synth.docs) and its draft is stitched, in document order, among other
documents' chunks (synth.stitch). `state/docs.json` records the documents' fingerprint: a rerun on changed
documents stops instead of mixing two corpora.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfctx.errors import SelfctxError
from selfctx.fsutil import write_json_atomic
from selfctx.synth.docs import (
    DocCorpus,
    ItemPlan,
    Steps,
    build_item,
    check_corpus_length,
    load_corpus,
    plan_item,
)
from selfctx.synth.filters import normalized_hash
from selfctx.synth.seeds import derive_rng, derive_seed
from selfctx.synth.stitch import DocDraft, stitch_sample


class DocsSource:
    """Items planned over the documents' chunks, stitched among the other documents."""

    label = "docs drafts"

    def __init__(self, cfg: Any, corpus: DocCorpus, counter: Any, model: str) -> None:
        self.cfg, self.corpus, self.counter, self.model = cfg, corpus, counter, model
        self.plans: dict[tuple[str, int], ItemPlan] = {}

    def builder(self, task: str, index: int) -> Steps | None:
        cfg = self.cfg
        plan = plan_item(
            task, index, self.corpus, cfg.length_spec(), cfg.seed, self.counter, cfg.gen.answer_max_tokens
        )
        if plan is None:  # this item's target is too short for any chunk choice
            return None
        self.plans[(task, index)] = plan
        return build_item(task, plan, self.corpus, cfg.seed, cfg.gen)

    def dedup_key(self, draft: DocDraft) -> str:
        d = draft
        return normalized_hash(f"{d.doc_id} {d.gold} {d.instruction} {d.question} {d.answer}")

    def place(self, task: str, index: int, draft: DocDraft) -> dict[str, Any]:
        plan = self.plans[(task, index)]
        spec = self.cfg.length_spec()
        sample = stitch_sample(
            draft,
            self.corpus.docs[plan.doc_id],
            self.corpus.others(plan.doc_id),
            plan.target,
            self.counter,
            derive_rng(self.cfg.seed, task, index, "stitch"),
            bucket=spec.bucket_for(plan.target),
            model=self.model,
            seed=derive_seed(self.cfg.seed, task, index),
        )
        return sample.to_json()

    def describe(self) -> dict[str, Any]:
        return {
            "source": "documents",
            "documents": {**self.corpus.describe(), "chunk_tokens": self.cfg.chunk_tokens},
        }

    def card(self, summary: dict[str, Any]) -> dict[str, Any]:
        docs = summary["documents"]
        return {
            "source": f"{docs['documents']} documents in {docs['path']} ({docs['chunks']} chunks, "
            f"{docs['tokens']:,} tokens)"
        }


def check_docs(cfg: Any, counter: Any) -> DocCorpus:
    """The documents read, and every task able to fit an item at the requested lengths (before any model
    loads or anything is written)."""
    if cfg.chunk_tokens < 32:
        raise SelfctxError(f"chunk_tokens {cfg.chunk_tokens} is too small: use at least 32 (default 384)")
    spec = cfg.length_spec()
    corpus = load_corpus(cfg.from_docs, counter, cfg.chunk_tokens)
    check_corpus_length(corpus, spec)
    for task in cfg.tasks:
        if plan_item(task, 0, corpus, spec, cfg.seed, counter, cfg.gen.answer_max_tokens) is None:
            raise SelfctxError(
                f"no {task} item fits a {spec.describe()} sample with chunks of up to {cfg.chunk_tokens} "
                "tokens (docs_crossqa needs a document of 3+ chunks): choose a longer length, a smaller "
                "chunk size (--set chunk_tokens=...) or drop that task"
            )
    return corpus


def open_docs(cfg: Any, out: Path, counter: Any, model: str, corpus: DocCorpus | None = None) -> DocsSource:
    """The documents (`corpus`, or read now) as a source for `out`, which must have been started on the same
    documents."""
    corpus = corpus or load_corpus(cfg.from_docs, counter, cfg.chunk_tokens)
    state_dir = out / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    marker = state_dir / "docs.json"
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") != corpus.fingerprint:
        raise SelfctxError(
            f"the documents in {corpus.folder} (or the chunk size) changed since {out} was started: write to "
            f"a new --out, or delete {state_dir} to rebuild the samples"
        )
    write_json_atomic(marker, corpus.describe())
    return DocsSource(cfg, corpus, counter, model)
