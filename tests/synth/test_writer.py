from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import yaml

from selfctx.synth.assemble import stream_sample
from selfctx.synth.tokens import RegexTokenCounter
from selfctx.synth.types import Passage, Sample, SampleDraft
from selfctx.synth.writer import ROW_COLUMNS, DatasetWriter


def make_sample(
    i: int, task: str, tokens: int, *, nouns: tuple[str, ...] = ("cat",), extra: dict | None = None
):
    return Sample(
        messages=(
            {"role": "user", "content": f"Passage 1:\nText {i}.\n\nQ{i}?"},
            {"role": "assistant", "content": f"A{i}"},
        ),
        task=task,
        bucket="0-8k" if tokens < 8192 else "8k-16k",
        token_count=tokens,
        target_tokens=tokens + (i % 3),
        n_distractors=i,
        gold_positions=(1, 3),
        nouns=nouns,
        seed=7,
        model="smollm2-135m",
        extra=extra if extra is not None else {"key": i},
    )


def samples() -> list[Sample]:
    out = []
    for i in range(9):
        task = ["single_doc_qa", "code", "summarization"][i % 3]
        # Heterogeneous extra dicts and an empty noun list must not break Arrow's single schema.
        extra = {"variables": ["v1"], "depth": 0.5} if task == "code" else {"key": i}
        out.append(make_sample(i, task, 2_000 + 1_000 * i, nouns=() if i == 4 else ("cat",), extra=extra))
    return out


def finalize(writer: DatasetWriter) -> Path:
    return writer.finalize(
        {"model": "smollm2-135m", "seed": 7, "length": {"bucket": "0-8k"}},
        {"command": "selfctx synth --out x --per-task 3", "filters": {"refusal": 2, "ungrounded": 1},
         "backend_stats": {"calls": 30, "tokens_per_s": 81.5}, "elapsed_s": 12.25},
    )  # fmt: skip


def test_jsonl_and_parquet_load_with_datasets(tmp_path: Path) -> None:
    import datasets

    writer = DatasetWriter(tmp_path, shard_size=4, formats=("jsonl", "parquet"))
    writer.add_many(samples())
    finalize(writer)
    shards = sorted((tmp_path / "data").glob("*.jsonl"))
    assert [p.name for p in shards] == ["train-00000.jsonl", "train-00001.jsonl", "train-00002.jsonl"]
    ds = datasets.load_dataset(
        "json",
        data_files=str(tmp_path / "data" / "*.jsonl"),
        split="train",
        cache_dir=str(tmp_path / ".hf_cache"),
    )
    assert set(ds.column_names) == set(ROW_COLUMNS) and len(ds) == 9
    assert ds[0]["messages"][1] == {"role": "assistant", "content": "A0"}
    assert ds[4]["nouns"] == [] and ds[1]["gold_positions"] == [1, 3]
    assert json.loads(ds[1]["extra"]) == {"variables": ["v1"], "depth": 0.5}
    pq = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "data_parquet" / "*.parquet"), split="train"
    )
    assert pq.to_list() == ds.to_list()
    # The card's `configs:` header makes the folder itself loadable.
    whole = datasets.load_dataset(str(tmp_path), split="train", cache_dir=str(tmp_path / ".hf_cache"))
    assert len(whole) == 9 and set(whole.column_names) == set(ROW_COLUMNS)


def test_card_histogram_config_and_manifest(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path, shard_size=100)
    writer.add_many(samples())
    finalize(writer)
    card = (tmp_path / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["configs"][0]["data_files"][0]["path"] == "data/*.jsonl"
    # what the Hub and `datasets` read: licence, language, the model that wrote it, the columns and types
    assert header["license"] == "apache-2.0" and header["language"] == ["en"]
    assert header["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    features = {f["name"]: f for f in header["dataset_info"]["features"]}
    assert set(features) == set(json.loads((tmp_path / "data" / "train-00000.jsonl").open().readline()))
    assert features["gold_positions"]["sequence"] == "int64" and features["task"]["dtype"] == "string"
    assert header["dataset_info"]["splits"] == [{"name": "train", "num_examples": 9}]
    assert "| single_doc_qa | 3 | 0 | 3 |" in card and "| code | 2 | 1 | 3 |" in card  # 0-8k, 8k-16k, total
    assert "| **total** | 7 | 2 | 9 |" in card
    assert "| refusal | 2 |" in card and "| ungrounded | 1 |" in card
    assert "selfctx synth --out x --per-task 3" in card and "smollm2-135m" in card
    assert "| tokens_per_s | 81.5 |" in card and "| elapsed_s | 12.2 |" in card
    assert (tmp_path / "length_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["length"] == {"bucket": "0-8k"}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["rows"] == 9 and manifest["seed"] == 7 and manifest["model"] == "smollm2-135m"
    assert manifest["counts"]["code/0-8k"] == 2 and "transformers" in manifest["versions"]
    shard = next(f for f in manifest["files"] if f["path"] == "data/train-00000.jsonl")
    data = (tmp_path / shard["path"]).read_bytes()
    assert shard["rows"] == 9 and shard["sha256"] == hashlib.sha256(data).hexdigest()


def test_rerun_into_the_same_folder_leaves_no_stale_shards(tmp_path: Path) -> None:
    first = DatasetWriter(tmp_path, shard_size=2)
    first.add_many(samples())
    finalize(first)
    assert len(list((tmp_path / "data").glob("*.jsonl"))) == 5
    second = DatasetWriter(tmp_path, shard_size=2)
    second.add_many(samples()[:3])
    finalize(second)
    rows = [json.loads(line) for p in sorted((tmp_path / "data").glob("*.jsonl")) for line in p.open()]
    assert len(rows) == 3
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_model_we_do_not_know_gets_its_own_name_and_other_terms() -> None:
    from selfctx.synth.writer import model_identity

    assert model_identity("llamacpp:smollm2-135m") == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    assert model_identity("openai:gpt-x") == ("gpt-x", "other")


def test_parquet_only_output(tmp_path: Path) -> None:
    import datasets

    writer = DatasetWriter(tmp_path, formats=("parquet",))
    writer.add_many(samples())
    finalize(writer)
    assert not list((tmp_path / "data").glob("*.jsonl"))
    assert (
        len(datasets.load_dataset(str(tmp_path), split="train", cache_dir=str(tmp_path / ".hf_cache"))) == 9
    )
    with pytest.raises(ValueError):
        DatasetWriter(tmp_path, formats=("csv",))


def test_streamed_rows_share_the_row_format(tmp_path: Path) -> None:
    import datasets

    counter = RegexTokenCounter()
    rng = random.Random(0)
    pool = []
    for i in range(80):
        text = " ".join(f"Word{rng.randint(0, 99)} is here." for _ in range(20))
        pool.append(Passage(f"p{i}", f"n{i}", "g", text, counter.count(text)))
    draft = SampleDraft("single_doc_qa", (pool[0],), "Answer the question based on the passages.", "Q?", "A.",
                        ("n0",))  # fmt: skip
    writer = DatasetWriter(tmp_path)
    writer.add_many(samples()[:2])
    with writer.stream_shard() as handle:
        streamed = stream_sample(draft, pool, 3_000, counter, random.Random(1), handle, model="m", seed=1,
                                 bucket="0-8k")  # fmt: skip
        writer.record(streamed.metadata)
    finalize(writer)
    ds = datasets.load_dataset(str(tmp_path), split="train", cache_dir=str(tmp_path / ".hf_cache"))
    assert len(ds) == 3 and ds[2]["token_count"] == streamed.metadata["token_count"]
    assert json.loads(ds[2]["extra"])["token_count_method"] == "additive"
    assert "| single_doc_qa |" in (tmp_path / "README.md").read_text()
