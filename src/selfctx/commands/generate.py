"""`selfctx generate`: answer a prompt over a long context read through compressed memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from selfctx.commands import options as opt
from selfctx.errors import SelfctxError


def command(
    prompt: Annotated[str, typer.Option(help="The question or instruction, asked after the context.")],
    context: Annotated[Path | None, typer.Option(help="A text file with the long context.")] = None,
    memory: Annotated[
        Path | None, typer.Option(help="A memory folder saved earlier (instead of --context).")
    ] = None,
    save_memory: Annotated[
        Path | None, typer.Option(help="Save the compressed context here for reuse.")
    ] = None,
    model: opt.BaseModel = ("smollm2-135m"),
    experts: opt.ExpertsFolder = None,
    window: opt.Window = None,
    native_context: opt.NativeContext = None,
    ratio: opt.Ratio = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    dtype: opt.Dtype = "auto",
    device: opt.Device = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole result as JSON.")] = False,
) -> None:
    """Generate with a compressed context; prints the answer and which expert read it."""
    from selfctx.checks import check_device, check_dtype, check_file, check_out_folder, check_positive
    from selfctx.compress.memory import check_memory_folder
    from selfctx.compress.model import check_compression_args
    from selfctx.models import resolve_model

    # every argument is checked before the model loads and before anything is written
    if (context is None) == (memory is None):
        raise SelfctxError("pass exactly one of --context FILE or --memory DIR")
    check_file(context, "--context", "an existing text file")
    if memory is not None:
        check_memory_folder(memory, "--memory")
    check_dtype(dtype)
    check_device(device)
    check_positive(max_new_tokens, "--max-new-tokens")
    check_positive(temperature, "--temperature", minimum=0)
    check_compression_args(experts, window=window, native_context=native_context, ratio=ratio)
    check_out_folder(save_memory, "--save-memory")
    resolve_model(model)

    from selfctx.compress import CompressedLM, Memory

    lm = CompressedLM.from_pretrained(
        model, experts=experts, window=window, native_context=native_context, dtype=dtype, device=device
    )
    if memory is not None:
        compressed = Memory.load(memory, device=lm.device)
    else:
        assert context is not None
        budget = (
            len(lm.tokenizer(prompt)["input_ids"]) + max_new_tokens + 16 if lm.tokenizer else max_new_tokens
        )
        compressed = lm.compress(context.read_text(encoding="utf-8"), ratio=ratio, budget=budget)
    if save_memory is not None:
        compressed.save(save_memory)
    result = lm.generate(
        memory=compressed, prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature
    )
    result.memory_reused = memory is not None
    if as_json:
        typer.echo(json.dumps(result.__dict__, indent=2))
        return
    typer.echo(result.text)
    typer.echo(
        f"[expert {result.expert or 'none (fits natively)'} | ratio x{result.ratio} | achieved x"
        f"{result.achieved_ratio:.1f} | memory {result.memory_bytes / 2**20:.2f} MiB | "
        f"{result.context_tokens} context tokens]",
        err=True,
    )
