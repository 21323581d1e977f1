"""The one resume rule of every evaluation runner (eval/cells.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfctx.errors import SelfctxError
from selfctx.eval.cells import CellLog


def test_rows_survive_a_reopen_and_a_torn_last_line_runs_again(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    log = CellLog(path, "cell")
    log.add({"cell": "a", "score": 1})
    log.add({"cell": "b", "score": 0})
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"cell": "c", "sco')  # a crash in the middle of a write
    again = CellLog(path, "cell")
    assert sorted(again.done) == ["a", "b"]
    again.add({"cell": "c", "score": 1})  # appended on a clean line: the file reads back whole
    assert [json.loads(line)["cell"] for line in path.read_text().splitlines()] == ["a", "b", "c"]


def test_a_bad_line_before_the_end_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"cell": "a"}\nnot json\n{"cell": "b"}\n')
    with pytest.raises(SelfctxError, match=r"rows.jsonl:2 is not valid JSON"):
        CellLog(path, "cell")


def test_a_last_line_cut_inside_a_character_or_without_its_newline_is_torn(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    whole = json.dumps({"cell": "a", "pred": "café"}, ensure_ascii=False).encode() + b"\n"
    cut = json.dumps({"cell": "b", "pred": "café"}, ensure_ascii=False).encode()
    path.write_bytes(whole + cut[: cut.index("é".encode()) + 1])  # half of a two-byte character
    assert sorted(CellLog(path, "cell").done) == ["a"]
    path.write_bytes(whole + cut)  # complete JSON, but the write stopped before its newline
    log = CellLog(path, "cell")
    assert sorted(log.done) == ["a"]
    log.add({"cell": "b", "pred": "ok"})
    assert [json.loads(line)["cell"] for line in path.read_text().splitlines()] == ["a", "b"]
