"""`selfctx synth --from-docs DIR`: long samples from the user's own documents (chunk-and-stitch).

    documents -> chunks that fit the window (chunking.py) -> per-chunk notes written by the model
    (a summary, QA pairs) -> items of three tasks -> each stitched into a long sample (stitch.py)

Tasks: `docs_qa` (one chunk's QA pair), `docs_summary` (summaries of 1-3 consecutive chunks, in order) and
`docs_crossqa` (a question that needs two chunks of one document placed far apart: the model links the two
chunks' QA facts; when that link fails the checks, the two questions are asked together). Every model call
goes through the same backends, call cache, refusal and grounding filters as the six-task pipeline; notes
are seeded per (chunk, purpose, variant), so tasks that use the same chunk share its cached calls.

Item i of task t depends only on (seed, t, i) and the documents; docs_run.py runs and resumes the stage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfctx.errors import SelfctxError
from selfctx.llm.base import ChatRequest, Completion, SamplingParams
from selfctx.progress import progress_bar
from selfctx.synth.chunking import chunk_text, read_documents
from selfctx.synth.filters import (
    Dropped,
    check_answer,
    check_text,
    content_words,
    grounding,
)
from selfctx.synth.lengths import LengthSpec, format_length
from selfctx.synth.seeds import derive_rng, derive_seed
from selfctx.synth.stitch import DocDraft
from selfctx.synth.tasks.base import ANSWER_INSTRUCTION, failed
from selfctx.synth.tasks.multiqa import ANSWER_PROMPT as PAIR_ANSWER_PROMPT
from selfctx.synth.tasks.qa import (
    ANSWER_PROMPT,
    MIN_QUESTION_GROUNDING,
    QUESTION_PROMPT,
    clean_answer,
    clean_question,
)
from selfctx.synth.tasks.summarization import SUMMARY_PROMPT
from selfctx.synth.tokens import chat_overhead
from selfctx.synth.types import Passage

DOCS_TASKS = ("docs_qa", "docs_summary", "docs_crossqa")
LINK_PROMPT = (
    "Fact 1: {a}\nFact 2: {b}\n\nWrite one question that needs both facts to answer. Write only the question."
)
# Share of a sample's target the gold chunks may take: the rest is room for the document around them,
# the prompt, the answer and the +-1% fit.
GOLD_SHARE = 0.7

Steps = Generator[list[ChatRequest], list[Completion], Any]


@dataclass(frozen=True)
class DocCorpus:
    """Documents as chunk Passages (id `<doc>#<i>`; noun = document id, so a document never pads itself)."""

    folder: str
    docs: dict[str, list[Passage]]
    fingerprint: str

    @property
    def tokens(self) -> int:
        return sum(p.n_tokens for chunks in self.docs.values() for p in chunks)

    @property
    def n_chunks(self) -> int:
        return sum(len(chunks) for chunks in self.docs.values())

    def others(self, doc_id: str) -> list[Passage]:
        return [p for d, chunks in self.docs.items() if d != doc_id for p in chunks]

    def describe(self) -> dict[str, Any]:
        return {"path": self.folder, "documents": len(self.docs), "chunks": self.n_chunks,
                "tokens": self.tokens, "fingerprint": self.fingerprint}  # fmt: skip


def load_corpus(folder: str | Path, counter: Any, chunk_tokens: int) -> DocCorpus:
    """Read and chunk every document under `folder` (progress bar per document)."""
    docs: dict[str, list[Passage]] = {}
    digest = hashlib.sha256(f"chunk_tokens={chunk_tokens}".encode())
    with progress_bar(desc="document chunks", total=None, unit="doc") as bar:
        for doc in read_documents(folder):
            if doc.id in docs:
                raise SelfctxError(
                    f"two documents share the id {doc.id!r} (from {doc.source}): "
                    "give each jsonl line a unique id"
                )
            pieces = chunk_text(doc.text, counter, chunk_tokens)
            docs[doc.id] = [
                Passage(id=f"{doc.id}#{i}", noun=doc.id, genre="document", text=text, n_tokens=n)
                for i, (text, n) in enumerate(pieces)
            ]
            for text, _ in pieces:
                digest.update(text.encode())
            bar.update(1)
    if not docs:
        raise SelfctxError(f"the documents under {folder} are all empty: add some text to them")
    return DocCorpus(str(folder), docs, digest.hexdigest()[:16])


def check_corpus_length(corpus: DocCorpus, spec: LengthSpec) -> None:
    """Fail at once, with the numbers, when the documents cannot fill the longest sample."""
    if corpus.tokens >= spec.hi:
        return
    room = corpus.tokens * 9 // 10  # leave room for the prompt and the answer
    shorter = format_length(room // 1024 * 1024 if room >= 1024 else max(room // 100 * 100, 100))
    raise SelfctxError(
        f"the documents in {corpus.folder} hold {corpus.tokens:,} tokens ({len(corpus.docs)} documents, "
        f"{corpus.n_chunks} chunks), fewer than the {spec.hi:,} a sample of {spec.describe()} needs: add "
        f"documents or choose a shorter length (e.g. --length {shorter})"
    )


@dataclass(frozen=True)
class ItemPlan:
    """Where item i of a task reads: target length, the document, its gold chunks and the notes variant."""

    target: int
    doc_id: str
    gold: tuple[int, ...]
    variant: int


def plan_item(task: str, index: int, corpus: DocCorpus, spec: LengthSpec, seed: int, counter: Any,
              answer_tokens: int) -> ItemPlan | None:  # fmt: skip
    """Deterministic choice for (seed, task, index); None when no chunk choice fits this item's target."""
    rng = derive_rng(seed, task, index, "plan")
    target = spec.sample_target(derive_rng(seed, task, index, "target"))
    n_answers = 3 if task == "docs_summary" else 2
    budget = int(GOLD_SHARE * target) - chat_overhead(counter) - n_answers * answer_tokens - 64
    candidates: list[tuple[str, tuple[int, ...]]] = []
    for doc_id, chunks in corpus.docs.items():
        costs = [p.n_tokens for p in chunks]
        if task == "docs_qa":
            candidates += [(doc_id, (i,)) for i, c in enumerate(costs) if c <= budget]
        elif task == "docs_summary":
            k = rng.randint(2, 3)
            for size in range(k, 0, -1):  # the longest run of consecutive chunks that fits somewhere
                runs = [tuple(range(s, s + size)) for s in range(len(costs) - size + 1)
                        if sum(costs[s : s + size]) <= budget]  # fmt: skip
                if runs:
                    candidates += [(doc_id, r) for r in runs]
                    break
        else:  # docs_crossqa: for each first chunk, the farthest second chunk (>= 1 chunk between) that fits
            for a in range(len(costs)):
                fits = [b for b in range(a + 2, len(costs)) if sum(costs[a : b + 1]) <= budget]
                if fits:
                    candidates.append((doc_id, (a, max(fits))))
    if task == "docs_crossqa" and candidates:  # far apart: keep pairs spanning >= 3/4 of the widest span
        span = {c: sum(p.n_tokens for p in corpus.docs[c[0]][c[1][0] : c[1][1] + 1]) for c in candidates}
        widest = max(span.values())
        candidates = [c for c in candidates if span[c] >= 0.75 * widest]
    if not candidates:
        return None
    order = list(range(len(candidates)))
    derive_rng(seed, task, "order").shuffle(order)  # items walk one permutation: distinct chunks first
    doc_id, gold = candidates[order[index % len(order)]]
    return ItemPlan(target, doc_id, gold, index // len(order))


def note_request(seed: int, chunk: Passage, purpose: str, variant: int, prompt: str, max_tokens: int,
                 knobs: Any) -> ChatRequest:  # fmt: skip
    """A call about one chunk, seeded by (chunk, purpose, variant) so that tasks share cached notes."""
    sampling = SamplingParams(
        max_tokens=max_tokens,
        temperature=knobs.temperature,
        top_p=knobs.top_p,
        seed=derive_seed(seed, "docs", chunk.id, purpose, variant) % (2**31 - 1),
    )
    return ChatRequest.user(prompt, sampling)


def qa_pair(seed: int, chunk: Passage, variant: int, knobs: Any) -> Steps:
    """One chunk's QA pair (question call, then answer call, as the qa task does): (q, a) or Dropped."""
    prompt = QUESTION_PROMPT.format(text=chunk.text)
    (reply,) = yield [note_request(seed, chunk, "question", variant, prompt, 48, knobs)]
    if drop := failed(reply):
        return drop
    question = clean_question(reply.text)
    if not question.endswith("?"):
        return Dropped("malformed", "not a question")
    if reason := check_text(question, min_words=3):
        return Dropped(reason, "question")
    if grounding(question, chunk.text) < MIN_QUESTION_GROUNDING:
        return Dropped("ungrounded", "question")
    prompt = ANSWER_PROMPT.format(text=chunk.text, question=question)
    (reply,) = yield [note_request(seed, chunk, "answer", variant, prompt, knobs.answer_max_tokens, knobs)]
    if drop := failed(reply):
        return drop
    answer = clean_answer(reply.text)
    if reason := check_answer(answer, chunk.text, min_grounding=knobs.min_grounding):
        return Dropped(reason, "answer")
    return question, answer


def needs_both(text: str, a: str, b: str) -> bool:
    """Whether `text` names something only chunk a has AND something only chunk b has."""
    words, in_a, in_b = set(content_words(text)), set(content_words(a)), set(content_words(b))
    return bool(words & (in_a - in_b)) and bool(words & (in_b - in_a))


def build_item(task: str, plan: ItemPlan, corpus: DocCorpus, seed: int, knobs: Any) -> Steps:
    chunks = [corpus.docs[plan.doc_id][g] for g in plan.gold]
    if task == "docs_qa":
        pair = yield from qa_pair(seed, chunks[0], plan.variant, knobs)
        if isinstance(pair, Dropped):
            return pair
        return DocDraft(task, plan.doc_id, plan.gold, ANSWER_INSTRUCTION, pair[0], pair[1])
    if task == "docs_summary":
        replies = yield [
            note_request(
                seed,
                c,
                "summary",
                plan.variant,
                SUMMARY_PROMPT.format(text=c.text),
                knobs.answer_max_tokens,
                knobs,
            )  # fmt: skip
            for c in chunks
        ]
        summaries = []
        for chunk, reply in zip(chunks, replies, strict=True):
            if drop := failed(reply):
                return drop
            summary = reply.text.strip().strip("`").strip().removeprefix("Summary:").strip()
            if reason := check_answer(summary, chunk.text, min_grounding=knobs.min_grounding, min_words=5):
                return Dropped(reason, "summary")
            summaries.append(" ".join(summary.split()))
        k = len(chunks)
        which = "passage {gold[0]}" if k == 1 else f"passages {{gold[0]}} to {{gold[{k - 1}]}}"
        instruction = (
            f"Summarize {which} (consecutive parts of one document), one passage at a time, in order."
        )
        answer = "\n\n".join(f"Passage {{gold[{i}]}}: {s}" for i, s in enumerate(summaries))
        return DocDraft(task, plan.doc_id, plan.gold, instruction, "", answer)
    # docs_crossqa
    first, second = chunks
    pair_a = yield from qa_pair(seed, first, plan.variant, knobs)
    if isinstance(pair_a, Dropped):
        return pair_a
    pair_b = yield from qa_pair(seed, second, plan.variant, knobs)
    if isinstance(pair_b, Dropped):
        return pair_b
    linked = yield from link_question(seed, first, second, pair_a[1], pair_b[1], plan.variant, knobs)
    if isinstance(linked, Dropped):  # the model's link failed a check: ask the two questions together
        question = f"Answer both questions. 1. {pair_a[0]} 2. {pair_b[0]}"
        answer = f"1. {pair_a[1]} 2. {pair_b[1]}"
        extra = {"question_kind": "two_part", "link_dropped": linked.reason}
    else:
        question, answer = linked
        extra = {"question_kind": "linked"}
    return DocDraft(task, plan.doc_id, plan.gold, ANSWER_INSTRUCTION, question, answer, extra)


def link_question(seed: int, a: Passage, b: Passage, fact_a: str, fact_b: str, variant: int,
                  knobs: Any) -> Steps:  # fmt: skip
    """A model-written question over two chunks' facts, answered from both chunks; it must need both."""
    prompt = LINK_PROMPT.format(a=fact_a, b=fact_b)
    (reply,) = yield [note_request(seed, a, f"link:{b.id}", variant, prompt, 48, knobs)]
    if drop := failed(reply):
        return drop
    question = clean_question(reply.text)
    if not question.endswith("?") or check_text(question, min_words=3):
        return Dropped("malformed", "link question")
    prompt = PAIR_ANSWER_PROMPT.format(a=a.text, b=b.text, question=question)
    (reply,) = yield [note_request(seed, a, f"link-answer:{b.id}", variant, prompt, knobs.answer_max_tokens,
                                   knobs)]  # fmt: skip
    if drop := failed(reply):
        return drop
    answer = clean_answer(reply.text)
    if reason := check_answer(answer, a.text + "\n" + b.text, min_grounding=knobs.min_grounding):
        return Dropped(reason, "link answer")
    if not needs_both(question + " " + answer, a.text, b.text):
        return Dropped("ungrounded", "link does not need both chunks")
    return question, answer
