"""`selfctx synth`: placeholder until its owner writes it."""

from __future__ import annotations

import typer

app = typer.Typer(help="(not written yet)")
