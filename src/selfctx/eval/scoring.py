"""Score a directory of LongBench prediction files the way the official `eval.py` does, plus aggregates.

    <pred_dir>/<dataset>.jsonl   rows: {"pred", "answers", "all_classes", "length"}
    <pred_dir>/result.json       {dataset: score} (or {dataset: {"0-4k", "4-8k", "8k+"}} with e=True)

The official file holds only the per-dataset scores; we write the same keys and put our aggregates in a
separate `summary.json` so tools that read result.json keep working.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selfctx.errors import SelfctxError
from selfctx.eval.metrics import DATASET_METRIC, score_row
from selfctx.fsutil import write_json_atomic

# LongBench's task categories (English datasets), as in the paper's tables.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "Single-Doc QA": ("narrativeqa", "qasper", "multifieldqa_en"),
    "Multi-Doc QA": ("hotpotqa", "2wikimqa", "musique"),
    "Summarization": ("gov_report", "qmsum", "multi_news"),
    "Few-shot Learning": ("trec", "triviaqa", "samsum"),
    "Synthetic": ("passage_count", "passage_retrieval_en"),
    "Code": ("lcc", "repobench-p"),
}
ENGLISH_DATASETS: tuple[str, ...] = tuple(name for names in CATEGORIES.values() for name in names)
LENGTH_BUCKETS: tuple[str, ...] = ("0-4k", "4-8k", "8k+")


def _percent(values: Sequence[float]) -> float | None:
    """Mean x100, two decimals, summed in row order as the official `scorer` does; None for no rows."""
    if not values:
        return None
    return round(100 * sum(values) / len(values), 2)


def _percent_e(values: Sequence[float]) -> float | None:
    """The official `scorer_e`'s figure: numpy's mean and numpy's rounding; None where it writes NaN."""
    if not values:
        return None
    return float(round(100 * np.mean(values), 2))


def length_bucket(length: int) -> str:
    if length < 4000:
        return "0-4k"
    if length < 8000:
        return "4-8k"
    return "8k+"


def score_rows(dataset: str, rows: Sequence[dict[str, Any]]) -> list[float]:
    """Per-row scores in [0, 1]. The official script takes `all_classes` from the file's last row; LongBench
    rows of one dataset share it, so using each row's own value gives the same result."""
    if dataset not in DATASET_METRIC:
        raise SelfctxError(
            f"no LongBench metric for dataset {dataset!r}: name prediction files <dataset>.jsonl with one of "
            f"{', '.join(DATASET_METRIC)}"
        )
    return [score_row(dataset, str(r["pred"]), list(r["answers"]), r.get("all_classes")) for r in rows]


def score_dataset(dataset: str, rows: Sequence[dict[str, Any]]) -> float | None:
    return _percent(score_rows(dataset, rows))


def score_dataset_e(dataset: str, rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """LongBench-E: the same scores split into buckets by the row's `length` (words/characters, as given)."""
    buckets: dict[str, list[float]] = {name: [] for name in LENGTH_BUCKETS}
    for row, value in zip(rows, score_rows(dataset, rows), strict=True):
        if "length" not in row:
            raise SelfctxError(f"{dataset}: a row has no 'length' field, which LongBench-E scoring needs")
        buckets[length_bucket(int(row["length"]))].append(value)
    return {name: _percent_e(values) for name, values in buckets.items()}


def aggregate(scores: dict[str, float | None]) -> dict[str, Any]:
    """Both aggregates: the mean over datasets, and the mean of category averages (categories with at
    least one scored dataset)."""
    present = {d: s for d, s in scores.items() if s is not None}
    categories: dict[str, float] = {}
    for category, names in CATEGORIES.items():
        values = [present[n] for n in names if n in present]
        if values:
            categories[category] = round(math.fsum(values) / len(values), 2)
    return {
        "datasets": len(present),
        "mean_over_datasets": round(math.fsum(present.values()) / len(present), 2) if present else None,
        "mean_over_categories": (
            round(math.fsum(categories.values()) / len(categories), 2) if categories else None
        ),
        "categories": categories,
    }


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise SelfctxError(
                    f"{path}:{number} is not valid JSON ({exc.msg}): fix or delete that line"
                ) from None
    return rows


def score_pred_dir(pred_dir: str | Path, *, e: bool = False) -> dict[str, Any]:
    """Score every `<dataset>.jsonl` in `pred_dir`; write result.json (official layout) and summary.json."""
    folder = Path(pred_dir)
    if not folder.is_dir():
        raise SelfctxError(
            f"prediction directory {folder} does not exist: pass the folder of <dataset>.jsonl files"
        )
    files = sorted(p for p in folder.glob("*.jsonl") if p.stem in DATASET_METRIC)
    if not files:
        raise SelfctxError(
            f"{folder} holds no <dataset>.jsonl prediction file for a LongBench English dataset "
            f"({', '.join(DATASET_METRIC)})"
        )
    result: dict[str, Any] = {}
    for path in files:
        rows = read_jsonl(path)
        for number, row in enumerate(rows, 1):
            missing = {"pred", "answers"} - row.keys()
            if missing:
                raise SelfctxError(
                    f"{path} row {number} lacks {', '.join(sorted(missing))}: rows need pred and answers"
                )
        if not rows:
            continue
        result[path.stem] = score_dataset_e(path.stem, rows) if e else score_dataset(path.stem, rows)
    write_json_atomic(folder / "result.json", result)
    if e:
        summary = {bucket: aggregate({d: v[bucket] for d, v in result.items()}) for bucket in LENGTH_BUCKETS}
    else:
        summary = aggregate(result)
    write_json_atomic(folder / "summary.json", summary)
    return {"result": result, "summary": summary}
