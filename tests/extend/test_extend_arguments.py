"""`selfctx extend` checks every stage's settings before its first stage starts: a setting only the training
or the evaluation would read fails in one line naming it, before any model loads and before --out exists."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from selfctx.cli import app
from selfctx.errors import SelfctxError

CASES = [
    ("eval.dtype=float99", "eval.dtype"),
    ("eval.baseline_backend=llamacpp", "eval.baseline_backend"),
    ("synth.backend=nosuch", "synth.backend"),
    ("experts.loop.device=gpu9", "experts.loop.device"),
]


@pytest.mark.parametrize(("setting", "name"), CASES)
def test_extend_refuses_bad_settings_before_any_stage(
    setting: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append("load")
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr("selfctx.models.load_causal_lm", refuse)
    monkeypatch.setattr("selfctx.tiny.tiny_llama", refuse)
    monkeypatch.setattr("selfctx.llm.factory.make_llm", refuse)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["extend", "--model", "tiny", "--out", str(out), "--set", setting])
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SelfctxError), repr(result.exception)
    message = str(result.exception)
    assert name in message and "\n" not in message, message
    assert not calls, "a model was loaded before the bad setting was refused"
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
