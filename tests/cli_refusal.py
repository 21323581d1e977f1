"""What "refused in one line" means for the CLI's argument checks, shared by the `*_arguments` tests so that
`generate` and `eval` are held to the same contract."""

from __future__ import annotations

from typer.testing import Result

from selfctx.errors import SelfctxError


def assert_refused(result: Result, name: str) -> None:
    """The run failed on the option `name`: typer's usage error for a choice option (before any code runs),
    else a SelfctxError whose message names it in one line."""
    assert result.exit_code != 0, result.output
    if isinstance(result.exception, SystemExit):  # a choice option: typer's usage error, before any code runs
        assert result.exit_code == 2 and name in result.output and "is not one of" in result.output
    else:
        assert isinstance(result.exception, SelfctxError), repr(result.exception)
        message = str(result.exception)
        assert name in message and "\n" not in message, message
