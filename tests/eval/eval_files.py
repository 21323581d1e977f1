"""Test helpers: LongBench-format files written by the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_longbench(folder: Path, dataset: str, rows: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{dataset}.jsonl").open("w", encoding="utf-8") as handle:
        for i, row in enumerate(rows):
            full = {
                "input": "",
                "context": "",
                "answers": [],
                "all_classes": None,
                "length": 0,
                "dataset": dataset,
                "language": "en",
                "_id": f"{dataset}-{i}",
            }
            full.update(row)
            handle.write(json.dumps(full) + "\n")
