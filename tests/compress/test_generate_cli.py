"""`selfctx generate` end to end on a tiny model saved to disk (the CLI loads it like any HF folder)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from selfctx.cli import app
from selfctx.tiny import TINY_TOKENIZER_VOCAB, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tiny_llama(vocab_size=TINY_TOKENIZER_VOCAB).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_generate_compresses_a_file_saves_and_reuses_memory(tmp_path, tiny_folder):
    context = tmp_path / "context.txt"
    context.write_text("Lorem ipsum dolor sit amet. " * 40)
    runner = CliRunner()
    args = [
        "generate",
        "--model",
        str(tiny_folder),
        "--window",
        "32",
        "--native-context",
        "256",
        "--prompt",
        "Summarize.",
        "--max-new-tokens",
        "5",
        "--dtype",
        "float32",
        "--json",
    ]
    first = runner.invoke(app, [*args, "--context", str(context), "--save-memory", str(tmp_path / "mem")])
    assert first.exit_code == 0, first.output
    result = json.loads(first.stdout)
    assert result["ratio"] > 1 and result["expert"] == f"lora-r{result['ratio']}"
    assert result["context_tokens"] > 256 and not result["memory_reused"]
    second = runner.invoke(app, [*args, "--memory", str(tmp_path / "mem")])
    assert second.exit_code == 0, second.output
    again = json.loads(second.stdout)
    assert again["memory_reused"] and again["texts"] == result["texts"]


def test_generate_rejects_missing_context(tmp_path, tiny_folder):
    result = CliRunner().invoke(
        app,
        ["generate", "--model", str(tiny_folder), "--prompt", "x", "--context", str(tmp_path / "nope.txt")],
    )
    assert result.exit_code != 0
    assert "does not exist" in str(result.exception)
