"""The prepared GPU run (benchmarks/gpu/experts_h200.py) end to end on a tiny model on CPU."""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "experts_h200.py"
PASSAGE = (
    "The ferry left at dawn and the gulls followed it past the lighthouse while the captain logged the tide."
)


def load_script():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("experts_h200", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_run_trains_every_ratio_and_scores_every_method(tmp_path: Path) -> None:
    script = load_script()
    (tmp_path / "synth" / "data").mkdir(parents=True)
    row = {"messages": [{"role": "user", "content": PASSAGE[:60] + " Who logged it?"},
                        {"role": "assistant", "content": "The captain."}]}  # fmt: skip
    (tmp_path / "synth" / "data" / "qa.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "pool").mkdir()
    texts = [{"text": f"{i}: {PASSAGE}"} for i in range(6)]
    (tmp_path / "pool" / "passages-00000.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    (tmp_path / "haystack").mkdir()
    (tmp_path / "haystack" / "a.txt").write_text(PASSAGE * 20)
    stage = tmp_path / "stage"
    script.prepare(tmp_path / "synth", tmp_path / "pool", tmp_path / "haystack", stage)
    out = tmp_path / "out"
    geometry = ["experts.window=32", "experts.native_context=160", "experts.group_tokens=512",
                "data.min_tokens=16", "data.max_tokens=200", "data.max_samples_per_source=8",
                "experts.rank=4", "loop.optim.lr=0.01"]  # fmt: skip
    script.main(
        ["run", "--model", "tiny", "--data", str(stage), "--haystack", str(stage / "haystack"),
         "--out", str(out), "--work", str(tmp_path / "work"), "--ratios", "[4, 2, 8]", "--steps", "2",
         "--micro-batch", "2", "--dtype", "float32", "--lengths", "300", "--items", "3",
         "--answer-budget", "32",
         *[a for s in geometry for a in ("--set", s)]]
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert set(rows) == {"full@300", "truncate-160@300", "untrained@300", "experts@300"}
    assert all(r["items"] == 3 and 0.0 <= r["acc"] <= 1.0 for r in rows.values())
    assert rows["experts@300"]["ratio"] in (2, 4, 8) and rows["full@300"]["ratio"] == 1
    logs = json.loads((out / "train_logs.json").read_text())
    assert set(logs) == {"r2", "r4", "r8"} and all(len(v) == 2 for v in logs.values())
    assert "| 300 | experts |" in (out / "results.md").read_text()
    with tarfile.open(out / "train.tar.gz") as tar:
        names = tar.getnames()
    assert {"train/r8/train_log.jsonl", "train/r8/checkpoints/latest.json"} <= set(names)
    assert any(n.startswith("train/r8/checkpoints/step-000002/") for n in names)
    with tarfile.open(out / "battery.tar.gz") as tar:
        assert "battery/battery.json" in tar.getnames()


def test_a_run_stopped_by_its_time_limit_scores_the_weights_it_reached(tmp_path: Path) -> None:
    script = load_script()
    stage = tmp_path / "stage"
    (stage / "pool").mkdir(parents=True)
    texts = [{"text": f"{i}: {PASSAGE}"} for i in range(6)]
    (stage / "pool" / "passages-00000.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    (stage / "synth" / "data").mkdir(parents=True)
    row = {"messages": [{"role": "user", "content": PASSAGE}, {"role": "assistant", "content": "Dawn."}]}
    (stage / "synth" / "data" / "qa.jsonl").write_text(json.dumps(row) + "\n")
    (stage / "haystack").mkdir()
    (stage / "haystack" / "a.txt").write_text(PASSAGE * 20)
    out = tmp_path / "out"
    geometry = ["experts.window=32", "experts.native_context=160", "experts.group_tokens=512",
                "data.min_tokens=16", "data.max_tokens=200", "data.max_samples_per_source=8",
                "experts.rank=4"]  # fmt: skip
    script.main(
        ["run", "--model", "tiny", "--data", str(stage), "--haystack", str(stage / "haystack"),
         "--out", str(out), "--work", str(tmp_path / "work"), "--ratios", "[4]", "--steps", "50",
         "--micro-batch", "1", "--dtype", "float32", "--lengths", "300", "--items", "4", "--chunk", "2",
         "--train-seconds", "1e-6", "--eval-seconds", "1e-6", "--answer-budget", "32",
         *[a for s in geometry for a in ("--set", s)]]
    )  # fmt: skip
    logs = json.loads((out / "train_logs.json").read_text())
    assert [row["step"] for row in logs["r4"]] == [1]
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == {"r4": 1}
    # what was scored is what step 1 reached, not the untrained expert
    from safetensors.torch import load_file

    with tarfile.open(out / "battery.tar.gz") as tar:
        tar.extractall(tmp_path / "scored", filter="data")
    scored = load_file(str(tmp_path / "scored" / "battery" / "expert-r4" / "expert.safetensors"))
    checkpoint = tmp_path / "work" / "train" / "r4" / "checkpoints" / "step-000001"
    step1 = load_file(str(checkpoint / "trainable.safetensors"))
    assert scored and all(any(torch.equal(v, w) for w in step1.values()) for v in scored.values())
    rows = json.loads((out / "results.json").read_text())["rows"]
    # the first chunk always runs; the deadline stops the second, for every method alike
    assert {r["items"] for r in rows.values()} == {2} and len(rows) == 4

    # --battery scores those weights without training: same items, same answers, and the items written out
    again, battery = tmp_path / "again", tmp_path / "scored" / "battery"
    script.main(
        ["run", "--model", "tiny", "--data", str(stage), "--haystack", str(stage / "haystack"),
         "--out", str(again), "--work", str(tmp_path / "work2"), "--battery", str(battery),
         "--dtype", "float32", "--lengths", "300", "--items", "4", "--chunk", "2", "--eval-seconds", "1e-6",
         "--answer-budget", "32", "--skip", "truncate"]
    )  # fmt: skip
    again_rows = json.loads((again / "results.json").read_text())["rows"]
    assert json.loads((again / "results.json").read_text())["steps"] == {}
    assert set(again_rows) == {"experts@300", "untrained@300", "full@300"}  # truncation skipped
    for name in again_rows:
        assert again_rows[name]["per_item"] == rows[name]["per_item"]
    items = (tmp_path / "work2" / "items-300.jsonl").read_text().splitlines()
    assert len(items) == 4 and {"context", "question", "choices", "label"} <= set(json.loads(items[0]))
    assert not (tmp_path / "work2" / "train").exists()
