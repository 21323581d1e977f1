"""`selfctx train` checks its model, device, output folder and data paths before the base model loads and
before anything is written: a bad one fails in one line naming it; no run folder (nor its base/) is made."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from selfctx.cli import app
from selfctx.errors import SelfctxError


@pytest.fixture()
def no_loading(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append("load")
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr("selfctx.models.load_causal_lm", refuse)
    monkeypatch.setattr("selfctx.tiny.tiny_llama", refuse)
    return calls


CASES = [
    ("experts", ["data.sources=[{kind: synth, path: {tmp}/nowhere}]"], "data.sources"),
    ("experts", ["data.sources=[{kind: recall, path: {tmp}/nowhere}]"], "data.sources"),
    ("experts", ["data.sources=[{kind: chat, path: {tmp}/nowhere.jsonl}]"], "data.sources"),
    ("experts", ["loop.device=gpu9"], "loop.device"),
    ("experts", ["loop.output_dir={tmp}/a-file/run"], "loop.output_dir"),
    ("experts", ["experts.native_context=32"], "experts: window 32 must be smaller than the native context"),
    ("finetune", ["data.sources=[{kind: text, path: {tmp}/nowhere}]"], "data.sources"),
    ("finetune", ["loop.device=gpu9"], "loop.device"),
]


@pytest.mark.parametrize(("method", "sets", "name"), CASES)
def test_train_refuses_bad_settings_before_loading(
    method: str, sets: list[str], name: str, tmp_path: Path, no_loading: list[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "run"
    preset = "cpu-smoke" if method == "experts" else "smollm2-cpu"
    args = ["train", "--method", method, "--preset", preset]
    for setting in ["model.name=tiny", f"loop.output_dir={out}", *sets]:
        args += ["--set", setting.replace("{tmp}", str(tmp_path))]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SelfctxError), repr(result.exception)
    message = str(result.exception)
    assert name in message and "\n" not in message, message
    assert not no_loading, "the model was loaded before the bad setting was refused"
    assert not out.exists() and not (tmp_path / "a-file").is_dir()


def test_snapshot_under_a_file_is_refused_before_loading(tmp_path: Path, no_loading: list[str]) -> None:
    (tmp_path / "a-file").write_text("")
    args = ["train", "--preset", "cpu-smoke", "--set", f"loop.output_dir={tmp_path / 'run'}"]
    result = CliRunner().invoke(app, [*args, "--snapshot", str(tmp_path / "a-file" / "experts")])
    assert isinstance(result.exception, SelfctxError), repr(result.exception)
    assert "--snapshot" in str(result.exception) and not no_loading


@pytest.mark.parametrize("method", ["experts", "finetune"])
def test_a_bad_data_path_leaves_no_base_folder(method: str, tmp_path: Path) -> None:
    """The tiny model is kept in OUTPUT/base when training starts; a run refused for its data writes none."""
    out = tmp_path / "run"
    preset = "cpu-smoke" if method == "experts" else "smollm2-cpu"
    sources = f"data.sources=[{{kind: synth, path: {tmp_path / 'nowhere'}}}]"
    args = ["train", "--method", method, "--preset", preset, "--set", "model.name=tiny"]
    result = CliRunner().invoke(app, [*args, "--set", f"loop.output_dir={out}", "--set", sources])
    assert isinstance(result.exception, SelfctxError), repr(result.exception)
    assert "data.sources" in str(result.exception)
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
