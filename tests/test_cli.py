"""The command line's identity and its choice options: --version, and choices typer shows and enforces."""

from __future__ import annotations

from importlib.metadata import version

import pytest
from typer.testing import CliRunner

from selfctx.cli import app

runner = CliRunner()


def test_version_prints_the_installed_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"selfctx {version('selfctx')}"


@pytest.mark.parametrize(
    ("argv", "option", "choices"),
    [
        (["eval", "needle"], "--backend", "hf|llamacpp"),
        (["generate"], "--dtype", "auto|float32"),
        (["extend"], "--budget", "smoke|cpu-hours"),
        (["synth"], "--executor", "local|ray"),
    ],
)
def test_choice_options_list_and_enforce_their_choices(argv: list[str], option: str, choices: str) -> None:
    help_text = runner.invoke(app, [*argv, "--help"], env={"COLUMNS": "200"}).output
    assert choices in help_text
    refused = runner.invoke(app, [*argv, option, "nosuch"], env={"COLUMNS": "200"})
    assert refused.exit_code == 2 and "nosuch" in refused.output and "is not one of" in refused.output


def test_the_command_line_starts_without_importing_torch() -> None:
    """Every command module imports heavy libraries inside its functions, so `selfctx --help` stays fast."""
    import subprocess
    import sys

    probe = "import sys, selfctx.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
