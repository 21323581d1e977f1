"""`selfctx bench expert-train`: expert training tokens/s against plain LoRA fine-tuning of the same model.

Both train on the same token sequences (real text, the same lengths), micro-batch 1, with gradient
checkpointing, AdamW, and next-token loss on every token: "experts" through `CompressedLM.forward_train` (the
frozen model reads earlier windows from memory; only one expert's LoRA + memory embedding train), "lora"
through peft LoRA on the same projections (q, k, v, o) of the plain model. Each method runs in a fresh
subprocess (its own peak memory); the first step of each is a warm-up and is not timed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from selfctx.bench.measure import parse_lengths, peak_rss_mib, rss_mib, run_worker, text_ids
from selfctx.errors import SelfctxError

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from selfctx.models import load_causal_lm

    torch.manual_seed(0)
    model, tokenizer = load_causal_lm(spec["model"], dtype=spec["dtype"], device=spec["device"])
    device = next(model.parameters()).device
    n_ids = spec["tokens"] * spec["steps"]
    ids = torch.tensor([text_ids(tokenizer, spec.get("text"), n_ids)], device=device)
    sequences = ids.view(spec["steps"], 1, spec["tokens"])
    if spec["method"] == "experts":
        from selfctx.compress import CompressedLM

        lm = CompressedLM.from_pretrained(
            model,
            window=spec["window"],
            ratios=(spec["ratio"],),
            rank=spec["rank"],
            tokenizer=tokenizer,
            native_context=spec["window"] * 4,
        )
        lm.battery.for_training(device)  # as `selfctx train` builds them: float32 over any base dtype
        params = lm.trainable_parameters(spec["ratio"])

        def loss_of(seq: torch.Tensor) -> torch.Tensor:
            return lm.forward_train(seq, seq, spec["ratio"], checkpointing=True).loss

    else:
        from peft import LoraConfig, get_peft_model

        from selfctx.train.objective import CausalLMObjective

        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model = get_peft_model(
            model, LoraConfig(r=spec["rank"], lora_alpha=2 * spec["rank"], target_modules=TARGETS)
        )
        peft_model.train()
        params = [p for p in peft_model.parameters() if p.requires_grad]
        objective = CausalLMObjective()

        def loss_of(seq: torch.Tensor) -> torch.Tensor:
            batch = {"input_ids": seq, "attention_mask": torch.ones_like(seq), "labels": seq}
            return objective(peft_model, batch) / (seq.shape[1] - 1)

    optimizer = torch.optim.AdamW(params, lr=1e-4)
    cuda = device.type == "cuda"
    base_mem = rss_mib()
    times = []
    for step in range(spec["steps"]):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = loss_of(sequences[step])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    timed = times[1:] or times
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
    return {
        "method": spec["method"],
        "tokens": spec["tokens"],
        "steps_timed": len(timed),
        "seconds_per_step": sum(timed) / len(timed),
        "tokens_per_s": spec["tokens"] * len(timed) / sum(timed),
        "peak_mib_above_model": max(0.0, peak - base_mem),
        "trainable_parameters": sum(p.numel() for p in params),
        "threads": torch.get_num_threads(),
    }


def command(
    model: Annotated[str, typer.Option(help="Model spec.")] = "smollm2-135m",
    lengths: Annotated[str, typer.Option(help="Sequence lengths (tokens), e.g. 2k,4k.")] = "2k,4k",
    steps: Annotated[int, typer.Option(help="Optimizer steps per method and length (first is warm-up).")] = 4,
    window: Annotated[int, typer.Option(help="Compression window W.")] = 256,
    ratio: Annotated[int, typer.Option(help="The expert's compression ratio.")] = 8,
    rank: Annotated[int, typer.Option(help="LoRA rank (both methods).")] = 8,
    text: Annotated[str | None, typer.Option(help="A text file or a folder of .txt files.")] = None,
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16")] = "float32",
    device: Annotated[str | None, typer.Option(help="cpu | cuda")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the rows as JSON here.")] = None,
    worker: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    """Tokens/s of expert training against plain LoRA fine-tuning, same model, tokens and lengths."""
    if worker is not None:
        print(json.dumps(_worker(json.loads(worker))))
        return
    if steps < 2:
        raise SelfctxError("--steps must be at least 2 (the first step is an untimed warm-up)")
    from selfctx.models import default_device

    device = device or default_device()
    rows = []
    typer.echo(f"{'method':<9}{'tokens':>8}{'s/step':>9}{'tok/s':>9}{'peak MiB':>10}{'params':>10}")
    for n in parse_lengths(lengths):
        for method in ("lora", "experts"):
            spec = {"model": model, "method": method, "tokens": n, "steps": steps, "window": window,
                    "ratio": ratio, "rank": rank, "text": text, "dtype": dtype, "device": device}  # fmt: skip
            row = run_worker("expert-train", spec, f"{method} training at {n} tokens")
            rows.append(row)
            typer.echo(
                f"{method:<9}{n:>8}{row['seconds_per_step']:>9.1f}{row['tokens_per_s']:>9.1f}"
                f"{row['peak_mib_above_model']:>10.0f}{row['trainable_parameters']:>10}"
            )
    typer.echo("\nexperts / plain LoRA tokens/s (target >= 0.6):")
    for n in parse_lengths(lengths):
        lora = next(r for r in rows if r["method"] == "lora" and r["tokens"] == n)
        experts = next(r for r in rows if r["method"] == "experts" and r["tokens"] == n)
        typer.echo(f"  {n:>6} tokens: x{experts['tokens_per_s'] / lora['tokens_per_s']:.2f}")
    if out is not None:
        from selfctx.fsutil import write_json_atomic

        write_json_atomic(out, rows)
