"""The `selfctx` command line: one verb per stage, no logic here (each verb lives in selfctx.commands)."""

from __future__ import annotations

import importlib
import sys

import typer

from selfctx.errors import SelfctxError

app = typer.Typer(
    name="selfctx",
    help="Teach a language model to read contexts far longer than its window, with data it writes itself.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# (verb, module under selfctx.commands). A module exposes either `command` (a function) or `app` (a Typer
# group with sub-verbs). Modules import heavy libraries inside their functions, so `selfctx --help` is fast.
COMMANDS: list[tuple[str, str]] = [
    ("synth", "synth"),
    ("generate", "generate"),
    ("bench", "bench"),
    ("eval", "eval"),
    ("train", "train"),
    ("serve", "serve"),
    ("extend", "extend"),
]


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"selfctx {version('selfctx')}")
        except PackageNotFoundError:  # run from a source tree without an install
            typer.echo("selfctx (not installed: no version recorded)")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Teach a language model to read contexts far longer than its window, with data it writes itself."""


for verb, module_name in COMMANDS:
    module = importlib.import_module(f"selfctx.commands.{module_name}")
    if hasattr(module, "app"):
        app.add_typer(module.app, name=verb)
    else:
        app.command(verb)(module.command)


def main() -> None:
    """Entry point: user errors end in one line on stderr and exit 2, never a traceback."""
    try:
        app()
    except SelfctxError as exc:
        print(f"selfctx: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("selfctx: interrupted (rerun the same command to resume)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
