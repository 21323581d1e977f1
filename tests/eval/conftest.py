"""Shared fixtures: the tiny byte-level model/tokenizer (fast) and the embedded SmolLM2 (slow, loaded once)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def write_longbench(folder: Path, dataset: str, rows: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{dataset}.jsonl").open("w", encoding="utf-8") as handle:
        for i, row in enumerate(rows):
            full = {"input": "", "context": "", "answers": [], "all_classes": None, "length": 0,
                    "dataset": dataset, "language": "en", "_id": f"{dataset}-{i}"}
            full.update(row)
            handle.write(json.dumps(full) + "\n")


@pytest.fixture(scope="session")
def tiny_lm():  # type: ignore[no-untyped-def]
    from selfctx.tiny import TINY_TOKENIZER_VOCAB, tiny_llama, tiny_tokenizer

    return tiny_llama(seed=0, vocab_size=TINY_TOKENIZER_VOCAB), tiny_tokenizer()


@pytest.fixture(scope="session")
def smollm():  # type: ignore[no-untyped-def]
    from selfctx.models import load_causal_lm

    return load_causal_lm("smollm2-135m", dtype="float32")
