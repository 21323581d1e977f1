"""The training data mix: synthetic long-context samples, plain text and chat data, mixed by weight.

Every source becomes a list of tokenized `Example`s (input ids + labels, -100 where no loss is taken):
chat-style rows get labels only on assistant tokens (found through the tokenizer's chat template), text is
concatenated with EOS separators and packed into sequences of `max_tokens`. `DataMix.example(i)` is a pure
function of (seed, i): which source sample i comes from is drawn by weight, and each source is walked in a
fresh seeded permutation per epoch. So a run's data position is just a sample counter, resuming is exact, and
data-parallel ranks can split a global batch without talking to each other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from selfctx.errors import SelfctxError
from selfctx.progress import progress
from selfctx.train.config import DataConfig, DataSource
from selfctx.train.examples import IGNORE_INDEX, Example, pack_text, tokenize_chat
from selfctx.train.recall import DEFAULT_SAMPLES, recall_examples, repeat_examples

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- reading rows


def _jsonl_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(path.glob("*.jsonl"))
    return []


def _read_jsonl(files: Sequence[Path], limit: int | None) -> Iterator[dict[str, Any]]:
    count = 0
    for file in files:
        with file.open(encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SelfctxError(
                        f"{file}:{line_no} is not valid JSON ({exc.msg}): fix or remove that line"
                    ) from None
                yield row
                count += 1
                if limit is not None and count >= limit:
                    return


def _source_files(source: DataSource) -> list[Path]:
    path = Path(source.path).expanduser()
    if source.kind == "synth":
        files = sorted((path / "data").glob("*.jsonl")) if path.is_dir() else []
        if not files:
            raise SelfctxError(
                f"synth data {path} has no data/*.jsonl shards: pass the output folder of `selfctx synth` "
                "in data.sources"
            )
        return files
    if source.kind == "chat":
        files = _jsonl_files(path)
        if not files:
            raise SelfctxError(f"chat data {path} is not a .jsonl file or a folder of them: fix data.sources")
        return files
    files = [path] if path.is_file() else sorted([*path.glob("*.txt"), *path.glob("*.jsonl")])
    if not files:
        raise SelfctxError(
            f"text data {path} is not a .txt/.jsonl file or a folder of them: fix data.sources"
        )
    return files


def check_sources(cfg: DataConfig) -> None:
    """Every source's files are there (they are read after the model loads): a bad data.sources path fails
    before anything heavy is loaded or written."""
    if not cfg.sources:
        raise SelfctxError(
            "no training data: set data.sources (kind synth|chat|text|recall|repeat, path, weight)"
        )
    for source in cfg.sources:
        if source.kind in ("recall", "repeat"):
            if source.path:  # facts hidden among / stretches cut from the passages of a text source
                _source_files(DataSource(kind="text", path=source.path))
            continue
        _source_files(source)


# ------------------------------------------------------------------------------------------------ tokenizing


def text_documents(path: str | Path) -> list[str]:
    """The documents of a text source (a .txt/.jsonl file or a folder of them, e.g. a passage pool)."""
    return _texts(_source_files(DataSource(kind="text", path=str(path))))


def _texts(files: Sequence[Path]) -> list[str]:
    """The documents of text files: a .txt file is one, each `text` row of a .jsonl file is one."""
    docs: list[str] = []
    for file in files:
        if file.suffix == ".jsonl":
            docs.extend(str(row["text"]) for row in _read_jsonl([file], None) if row.get("text"))
        else:
            docs.append(file.read_text(encoding="utf-8"))
    return docs


def load_source(source: DataSource, tokenizer: PreTrainedTokenizerBase, cfg: DataConfig) -> list[Example]:
    """Tokenize one source with length filtering (chat) or packing (text)."""
    if source.kind == "recall":
        n = cfg.max_samples_per_source or DEFAULT_SAMPLES
        passages = text_documents(source.path) if source.path else None
        examples = recall_examples(
            tokenizer, n, cfg.min_tokens, cfg.max_tokens, seed=0, passages=passages,
            facts_per_1k=source.facts_per_1k, values=source.fact_values, length_unit=source.length_unit,
        )  # fmt: skip
        if not examples:
            raise SelfctxError(
                f"the recall task cannot make samples of {cfg.min_tokens}-{cfg.max_tokens} tokens: "
                "widen the range"
            )
        return examples
    if source.kind == "repeat":
        n = cfg.max_samples_per_source or DEFAULT_SAMPLES
        passages = text_documents(source.path)
        examples = repeat_examples(tokenizer, n, cfg.min_tokens, cfg.max_tokens, 0, passages)
        if not examples:
            raise SelfctxError(
                f"the repeat task cannot make samples of {cfg.min_tokens}-{cfg.max_tokens} tokens from "
                f"{source.path}: widen the range or give longer passages"
            )
        return examples
    files = _source_files(source)
    name = f"{source.kind}:{Path(source.path).name}"
    if source.kind == "text":
        eos = tokenizer.eos_token_id
        stream: list[int] = []
        docs = _texts(files)
        if cfg.max_samples_per_source is not None:
            docs = docs[: cfg.max_samples_per_source]
        for doc in progress(docs, desc=f"tokenizing {name}", unit="doc"):
            stream.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
            if eos is not None:
                stream.append(int(eos))
        examples = pack_text(stream, cfg.max_tokens, cfg.min_tokens, name)
    else:
        examples = []
        dropped = 0
        rows = list(_read_jsonl(files, cfg.max_samples_per_source))
        for row in progress(rows, desc=f"tokenizing {name}", unit="sample"):
            if not isinstance(row.get("messages"), list):
                raise SelfctxError(
                    f"a row of {source.path} has no `messages` list: chat data needs one per row"
                )
            example = tokenize_chat(tokenizer, row["messages"])
            if example is None or not cfg.min_tokens <= len(example.input_ids) <= cfg.max_tokens:
                dropped += 1
                continue
            examples.append(Example(example.input_ids, example.labels, name))
        if dropped:
            log.warning(
                "%s: dropped %d of %d samples outside [%d, %d] tokens or without an answer",
                name,
                dropped,
                len(rows),
                cfg.min_tokens,
                cfg.max_tokens,
            )
    if not examples:
        raise SelfctxError(
            f"data source {source.path} yields no sample of {cfg.min_tokens}-{cfg.max_tokens} tokens: "
            "raise data.max_tokens or check the files"
        )
    return examples


# ------------------------------------------------------------------------------------------------------ mix

_BLOCK = 4096  # source draws are made in seeded blocks so the stream can grow without changing its prefix
_RAMP_SEARCH = 64  # examples looked at for one that fits the curriculum's length limit


class DataMix:
    """A deterministic, endless stream of examples drawn from several sources by weight.

    With a length ramp (`ramp_samples` > 0) the stream is a curriculum: sample i is no longer than a limit
    that grows linearly from `ramp_start` tokens at i = 0 to unlimited at i = ramp_samples — each source's
    permutation is walked on to the next example that fits (or, if none of the next few does, the shortest
    of them: cut to the limit when every token is labelled, as plain text is, else served whole so an
    answer is never cut off)."""

    def __init__(
        self,
        sources: Sequence[Sequence[Example]],
        weights: Sequence[float],
        seed: int,
        ramp_samples: int = 0,
        ramp_start: int = 0,
    ) -> None:
        if not sources or any(len(s) == 0 for s in sources):
            raise SelfctxError("the data mix is empty: configure at least one data source with samples")
        self.ramp_samples = ramp_samples
        self.ramp_start = ramp_start
        self.longest = max(len(e.input_ids) for s in sources for e in s)
        self.sources = [list(s) for s in sources]
        probs = np.asarray(weights, dtype=np.float64)
        self.probs = probs / probs.sum()
        self.seed = seed
        self._choice = np.zeros(0, dtype=np.int64)
        self._ordinal = np.zeros(0, dtype=np.int64)
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _grow(self, n: int) -> None:
        while len(self._choice) < n:
            block = len(self._choice) // _BLOCK
            rng = np.random.default_rng([self.seed, 0, block])
            draws = rng.choice(len(self.sources), size=_BLOCK, p=self.probs)
            counts = np.zeros(len(self.sources), dtype=np.int64)
            if len(self._choice):
                counts = np.bincount(self._choice, minlength=len(self.sources))
            ordinals = np.empty(_BLOCK, dtype=np.int64)
            for k, s in enumerate(draws):
                ordinals[k] = counts[s]
                counts[s] += 1
            self._choice = np.concatenate([self._choice, draws])
            self._ordinal = np.concatenate([self._ordinal, ordinals])

    def _perm(self, source: int, epoch: int) -> np.ndarray:
        key = (source, epoch)
        if key not in self._perms:
            rng = np.random.default_rng([self.seed, 1, source, epoch])
            self._perms[key] = rng.permutation(len(self.sources[source]))
        return self._perms[key]

    def length_limit(self, index: int) -> int:
        """The longest sample the curriculum allows at stream position `index`."""
        if index >= self.ramp_samples:
            return self.longest
        start = min(self.ramp_start, self.longest)
        return start + (self.longest - start) * index // self.ramp_samples

    def _at(self, source: int, ordinal: int) -> Example:
        size = len(self.sources[source])
        return self.sources[source][int(self._perm(source, ordinal // size)[ordinal % size])]

    def example(self, index: int) -> Example:
        self._grow(index + 1)
        source = int(self._choice[index])
        ordinal = int(self._ordinal[index])
        limit = self.length_limit(index)
        shortest = self._at(source, ordinal)
        for step in range(_RAMP_SEARCH):
            candidate = self._at(source, ordinal + step)
            if len(candidate.input_ids) <= limit:
                return candidate
            if len(candidate.input_ids) < len(shortest.input_ids):
                shortest = candidate
        if IGNORE_INDEX in shortest.labels:  # answer-only labels: cutting would drop the answer, so no cut
            return shortest
        return Example(shortest.input_ids[:limit], shortest.labels[:limit], shortest.source)


def build_mix(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> DataMix:
    if not cfg.sources:
        raise SelfctxError(
            "no training data: set data.sources (kind synth|chat|text|recall|repeat, path, weight)"
        )
    loaded = [load_source(source, tokenizer, cfg) for source in cfg.sources]
    start = cfg.ramp_start_tokens or cfg.min_tokens
    return DataMix(loaded, [s.weight for s in cfg.sources], seed, cfg.ramp_samples, start)


# ---------------------------------------------------------------------------------------------- batching


def collate(examples: Sequence[Example], pad_id: int, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Right-pad a list of examples into input_ids / attention_mask / labels tensors."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


class MixBatches:
    """Micro-batches of a DataMix for one optimizer step on one rank.

    A step consumes `micro * accum * world` consecutive samples; rank r's micro-batch m holds samples
    [(m * world + r) * micro, ...) of that step, so any (accum, world) split of the same global batch sees
    the same samples.
    """

    def __init__(self, mix: DataMix, micro_batch_size: int, grad_accum_steps: int, pad_id: int) -> None:
        self.mix = mix
        self.micro = micro_batch_size
        self.accum = grad_accum_steps
        self.pad_id = pad_id

    def samples_per_step(self, world: int) -> int:
        return self.micro * self.accum * world

    def micro_batches(self, step: int, rank: int, world: int, device: Any) -> list[dict[str, Any]]:
        base = step * self.samples_per_step(world)
        out = []
        for m in range(self.accum):
            first = base + (m * world + rank) * self.micro
            examples = [self.mix.example(first + j) for j in range(self.micro)]
            out.append(collate(examples, self.pad_id, device))
        return out
