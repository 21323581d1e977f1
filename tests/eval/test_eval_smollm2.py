"""End to end on the embedded SmolLM2 (slow): LongBench runner, the compressed method, a needle grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_files import write_longbench

from selfctx.eval import needle as nd
from selfctx.eval.longbench import run_longbench
from selfctx.eval.methods import build_method

pytestmark = pytest.mark.slow

SHORT_CONTEXT = (
    "Passage 1:\nMount Lira\nMount Lira is a mountain in Chile. It is 4,210 metres high.\n"
    "Passage 2:\nThe Rhine\nThe Rhine is a river in Europe."
)
FILLER = " ".join(
    f"Passage {i}:\nThe Rhine\nThe Rhine is a long river in Europe that flows north." for i in range(2, 5)
)
QUESTION = {"input": "In which country is Mount Lira?", "answers": ["Chile"]}
HOTPOT = {"context": SHORT_CONTEXT, **QUESTION}  # ~118 prompt tokens
HOTPOT_LONG = {"context": SHORT_CONTEXT.split("Passage 2")[0] + FILLER, **QUESTION}  # ~162 prompt tokens
SAMSUM = {
    "context": "Dialogue: Ann: Lunch at noon? Bob: Sure, see you then.\n"
    "Summary: Ann and Bob will have lunch at noon.\n\n",
    "input": "Dialogue: Tom: I lost my keys. Eva: Check the car.\nSummary:",
    "answers": ["Tom lost his keys and Eva tells him to check the car."],
}


def test_longbench_runs_end_to_end_on_smollm2(tmp_path: Path, smollm) -> None:
    model, tokenizer = smollm
    data = tmp_path / "data"
    write_longbench(data, "hotpotqa", [HOTPOT, HOTPOT_LONG])
    write_longbench(data, "samsum", [SAMSUM])
    method = build_method("truncate", model, tokenizer)
    # max_length 150: the short row fits, the long one (~162 tokens) loses the middle of its filler
    report = run_longbench(method, ["hotpotqa", "samsum"], tmp_path / "out", data_dir=data, max_length=150)
    short, long = [
        json.loads(line) for line in (tmp_path / "out" / "hotpotqa.jsonl").read_text().splitlines()
    ]
    assert not short["truncated"] and short["prompt_tokens"] == short["original_tokens"] < 150
    assert "chile" in short["pred"].lower()  # measured: "The answer is Mount Lira is a mountain in Chile."
    assert long["truncated"] and long["prompt_tokens"] == 150 and long["original_tokens"] > 150
    assert report["result"]["hotpotqa"] > 0
    samsum = json.loads((tmp_path / "out" / "samsum.jsonl").read_text())
    assert samsum["pred"].strip() and "\n" not in samsum["pred"]  # "\n" is a stop token for samsum
    assert 0 <= report["result"]["samsum"] <= 100
    assert json.loads((tmp_path / "out" / "result.json").read_text()) == report["result"]


def test_compressed_method_runs_through_the_same_runner(tmp_path: Path, smollm) -> None:
    model, tokenizer = smollm
    data = tmp_path / "data"
    write_longbench(data, "hotpotqa", [HOTPOT_LONG])
    compressed = build_method("compressed", model, tokenizer, window=64, ratio=2)  # untrained experts
    run_longbench(compressed, ["hotpotqa"], tmp_path / "c", data_dir=data)
    row = json.loads((tmp_path / "c" / "hotpotqa.jsonl").read_text())
    assert row["info"]["ratio"] == 2 and row["info"]["memory_entries"] > 0
    full = build_method("full", model, tokenizer)
    # compressed memory + raw tail/prompt holds less KV than the full prompt would
    assert row["memory_bytes"] < full.memory_bytes(row["input_tokens"])
    assert isinstance(row["pred"], str)


def test_needle_grid_on_smollm2(tmp_path: Path) -> None:
    # through llama.cpp (the same embedded GGUF): ~5x faster than transformers on this CPU
    from selfctx.eval.methods import LlamaCppMethod
    from selfctx.models import embedded_gguf_path, load_tokenizer

    haystack = " ".join(
        f"The village of {name} grew barley and kept {i} goats near the old mill."
        for i, name in enumerate(["Arden", "Belmont", "Corwin", "Dalby", "Elstow"] * 30)
    )
    method = LlamaCppMethod(
        str(embedded_gguf_path()), load_tokenizer("smollm2-135m"), name="truncate-llamacpp", n_threads=1
    )
    grid = nd.NeedleGrid(lengths=(200, 400), depths=(0.0, 1.0), variant="single")
    summary = nd.run_needle(method, haystack, grid, tmp_path / "needle")
    rows = [json.loads(line) for line in (tmp_path / "needle" / "needle.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(abs(r["context_tokens"] - r["length"]) <= 20 for r in rows)
    # measured on this model: it finds the number in every cell of this small grid (1.0); allow one miss
    assert summary["mean_score"] >= 0.75
    assert (tmp_path / "needle" / "heatmap.png").stat().st_size > 1000


def test_llamacpp_method_reads_the_same_tokens(tmp_path: Path) -> None:
    from selfctx.eval.methods import LlamaCppMethod
    from selfctx.models import embedded_gguf_path, load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    method = LlamaCppMethod(str(embedded_gguf_path()), tokenizer, name="truncate-llamacpp", n_threads=1)
    assert method.native == 8192 and method.input_limit(32) == 8192 - 32 - 64
    # 30 layers x 3 KV heads x 64 dims x K,V x 2 bytes (f16 cache)
    assert method.kv_bytes_per_token == 30 * 3 * 64 * 2 * 2
    data = tmp_path / "data"
    write_longbench(data, "hotpotqa", [HOTPOT])
    run_longbench(method, ["hotpotqa"], tmp_path / "out", data_dir=data)
    row = json.loads((tmp_path / "out" / "hotpotqa.jsonl").read_text())
    # llama.cpp parses the chat template's special tokens like the HF tokenizer does
    assert row["input_tokens"] == len(tokenizer(row_text(tokenizer), add_special_tokens=False)["input_ids"])
    assert row["pred"].strip()


def row_text(tokenizer) -> str:
    from selfctx.eval.longbench import build_request

    request = build_request("hotpotqa", HOTPOT, tokenizer, 15_500).request
    return request.head + request.tail
