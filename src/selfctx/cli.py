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
        code = app(standalone_mode=False)
    except SelfctxError as exc:
        print(f"selfctx: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("selfctx: interrupted (rerun the same command to resume)", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        # click's usage errors (an unknown option, command or choice; a missing argument), whichever click
        # typer bundles: one line too, not click's multi-line box
        message = getattr(exc, "format_message", None)
        if callable(message) and getattr(exc, "exit_code", None) == 2:
            text = message()
            context = getattr(exc, "ctx", None)
            if not text and context is not None:  # a group called bare: its help, as click would show
                print(context.get_help())
            else:
                print(f"selfctx: error: {text} (see --help)", file=sys.stderr)
            sys.exit(2)
        raise
    except KeyboardInterrupt:
        print("selfctx: interrupted (rerun the same command to resume)", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
