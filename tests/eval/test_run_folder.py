"""A result folder is bound to its settings: resumed only with the same ones, else refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfctx.errors import SelfctxError
from selfctx.eval.run_folder import bind_run


def test_a_fresh_folder_records_its_settings_and_resumes_with_the_same(tmp_path: Path) -> None:
    folder = tmp_path / "full"
    settings = {"name": "full", "max_length": 4096, "grid": {"lengths": (1000, 2000)}}
    bind_run(folder, settings)
    assert json.loads((folder / "run.json").read_text())["grid"] == {"lengths": [1000, 2000]}
    (folder / "preds.jsonl").write_text("{}\n")
    bind_run(folder, settings)  # a resume with identical settings (tuples compare as stored lists)


def test_a_differing_or_missing_setting_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "full"
    bind_run(folder, {"name": "full", "max_length": 4096})
    with pytest.raises(SelfctxError, match=r"max_length=4096, this one has max_length=8000") as err:
        bind_run(folder, {"name": "full", "max_length": 8000})
    assert "\n" not in str(err.value)
    with pytest.raises(SelfctxError, match=r"does not record dtype \(an older selfctx wrote it\)"):
        bind_run(folder, {"name": "full", "max_length": 4096, "dtype": "float32"})
    assert json.loads((folder / "run.json").read_text()) == {"name": "full", "max_length": 4096}


def test_files_without_a_run_record_are_not_adopted(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "needle.jsonl").write_text("{}\n")
    with pytest.raises(SelfctxError, match="no run.json"):
        bind_run(tmp_path / "old", {"name": "full"})
    bind_run(tmp_path / "empty", {"name": "full"})  # a missing or empty folder is fresh
    assert (tmp_path / "empty" / "run.json").is_file()
