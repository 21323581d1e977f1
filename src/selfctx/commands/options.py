"""The options several commands share, written once: what loads the model and its experts, and how it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from selfctx.checks import DtypeName, EvalBackend, MemoryInput

BaseModel = Annotated[
    str,
    typer.Option(
        help="Base model: smollm2-135m, a .gguf file, an HF folder or hub id, or the final/ folder of "
        "`selfctx train --method finetune` (RoPE-scaled, adapter merged)."
    ),
]
ExpertsFolder = Annotated[
    Path | None,
    typer.Option(
        help="Expert folder from `selfctx train` (default: untrained experts, memory read through the base "
        "weights)."
    ),
]
Window = Annotated[
    int | None, typer.Option(help="Tokens per compression window (default: as the experts were trained).")
]
NativeContext = Annotated[
    int | None, typer.Option(help="Usable native context (default: as trained, else the model's).")
]
Ratio = Annotated[int | None, typer.Option(help="Force one compression ratio instead of routing by length.")]
Dtype = Annotated[DtypeName, typer.Option(help="Weights' dtype (auto: as stored).")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")]
Backend = Annotated[EvalBackend, typer.Option(help="hf (transformers) or llamacpp (GGUF, faster on CPU).")]
MethodExperts = Annotated[
    list[str] | None,
    typer.Option(
        help="Expert folder for --method compressed (default: untrained experts); repeat as NAME=DIR to "
        "score several batteries in one run, one method folder each (NAME-w<window>...); NAME= with no "
        "folder is an untrained battery under that name."
    ),
]
Sink = Annotated[
    int | None,
    typer.Option(help="Raw tokens kept at position 0, never compressed (default: as trained; untrained: 0)."),
]
MemoryInputOption = Annotated[
    MemoryInput,
    typer.Option(
        help="What untrained experts' memory tokens start from: shared (one learned embedding) or span_last "
        "(the last token of each slot's span); trained experts keep the input they learned with."
    ),
]
