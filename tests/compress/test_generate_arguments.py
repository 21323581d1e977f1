"""`selfctx generate` checks every argument before the model loads or --save-memory is written: a bad one
fails in one line naming it, the loader is never called and no memory folder appears."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_refusal import assert_refused
from selfctx.cli import app
from selfctx.errors import SelfctxError

CASES = [
    (["--dtype", "float99"], "--dtype"),
    (["--device", "gpu9"], "--device"),
    (["--ratio", "3"], "--ratio"),
    (["--window", "0"], "--window"),
    (["--window", "512"], "--window"),  # not below --native-context 256
    (["--experts", "{not_experts}"], "--experts"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--temperature", "-1"], "--temperature"),
    (["--save-memory", "{blocked}"], "--save-memory"),
]


@pytest.mark.parametrize(("extra", "name"), CASES)
def test_generate_refuses_bad_arguments_before_loading(
    extra: list[str], name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append("load")
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr("selfctx.models.load_causal_lm", refuse)
    model = tmp_path / "model"  # resolves as an HF folder; its weights are never read
    model.mkdir()
    (model / "config.json").write_text("{}")
    context = tmp_path / "context.txt"
    context.write_text("A long context. " * 20)
    not_experts = tmp_path / "not-experts"
    not_experts.mkdir()
    (tmp_path / "a-file").write_text("")
    memory = tmp_path / "mem"
    blocked = tmp_path / "a-file" / "mem"
    extra = [e.format(not_experts=not_experts, blocked=blocked) for e in extra]
    args = ["generate", "--model", str(model), "--prompt", "Why?", "--context", str(context)]
    args += ["--window", "32", "--native-context", "256", "--save-memory", str(memory), "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, *extra])
    assert_refused(result, name)
    assert not calls, "the model was loaded before the bad argument was refused"
    assert not memory.exists() and not blocked.exists()


def test_generate_refuses_a_folder_without_memory_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr("selfctx.models.load_causal_lm", refuse)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    result = CliRunner().invoke(
        app, ["generate", "--model", str(model), "--prompt", "x", "--memory", str(tmp_path / "nothing")]
    )
    assert isinstance(result.exception, SelfctxError), repr(result.exception)
    assert "--memory" in str(result.exception)
