"""`score_pred_dir`: official result.json layout, LongBench-E buckets, both aggregates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfctx.errors import SelfctxError
from selfctx.eval.scoring import aggregate, score_pred_dir


def _write(folder: Path, name: str, rows: list[dict]) -> None:
    with (folder / f"{name}.jsonl").open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def test_score_pred_dir_matches_hand_worked(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "hotpotqa",
        [
            {"pred": "Paris", "answers": ["Paris"], "all_classes": None, "length": 100},  # 1
            {"pred": "Paris, France", "answers": ["Paris"], "all_classes": None, "length": 5000},  # 2/3
            {"pred": "Rome", "answers": ["Paris"], "all_classes": None, "length": 9000},  # 0
        ],
    )
    _write(
        tmp_path,
        "passage_count",
        [
            {"pred": "3 or 4", "answers": ["3"], "all_classes": None, "length": 200},  # 0.5
        ],
    )
    (tmp_path / "notes.txt").write_text("ignored")
    out = score_pred_dir(tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result == {"hotpotqa": 55.56, "passage_count": 50.0}  # (1 + 2/3 + 0) / 3 = 55.56
    assert out["summary"]["mean_over_datasets"] == 52.78
    # one dataset in each of two categories -> the same mean here
    assert out["summary"]["categories"] == {"Multi-Doc QA": 55.56, "Synthetic": 50.0}

    e = score_pred_dir(tmp_path, e=True)["result"]
    assert e["hotpotqa"] == {"0-4k": 100.0, "4-8k": 66.67, "8k+": 0.0}
    assert e["passage_count"] == {"0-4k": 50.0, "4-8k": None, "8k+": None}


def test_aggregate_two_ways() -> None:
    scores = {"hotpotqa": 40.0, "2wikimqa": 20.0, "musique": 30.0, "trec": 70.0}
    summary = aggregate(scores)
    assert summary["mean_over_datasets"] == 40.0  # 160 / 4
    assert summary["categories"] == {"Multi-Doc QA": 30.0, "Few-shot Learning": 70.0}
    assert summary["mean_over_categories"] == 50.0


def test_bad_inputs_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SelfctxError, match="does not exist"):
        score_pred_dir(tmp_path / "nope")
    with pytest.raises(SelfctxError, match="no <dataset>.jsonl"):
        score_pred_dir(tmp_path)
    (tmp_path / "trec.jsonl").write_text('{"pred": "x"}\n')
    with pytest.raises(SelfctxError, match="lacks answers"):
        score_pred_dir(tmp_path)
    (tmp_path / "trec.jsonl").write_text("{broken\n")
    with pytest.raises(SelfctxError, match="not valid JSON"):
        score_pred_dir(tmp_path)
