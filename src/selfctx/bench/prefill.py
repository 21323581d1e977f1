"""`selfctx bench prefill`: compressed prefill vs full-attention SDPA prefill of the same model, same inputs.

Each (method, length) runs in a fresh subprocess so peak memory is its own. Printed per row: tokens/s, wall
seconds, peak memory above the loaded model (RSS on CPU, max_memory_allocated on CUDA) and key/value bytes
held after the prefill (full attention: its KV cache; compressed: the memory + the raw tail).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from selfctx.bench.measure import parse_lengths, peak_rss_mib, rss_mib, run_worker, text_ids


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from selfctx.compress import CompressedLM

    torch.manual_seed(0)
    lm = CompressedLM.from_pretrained(
        spec["model"],
        window=spec["window"],
        ratios=(spec["ratio"],),
        native_context=spec.get("native_context"),
        dtype=spec["dtype"],
        device=spec["device"],
    )
    ids = text_ids(lm.tokenizer, spec.get("text"), spec["tokens"])
    tensor = torch.tensor([ids], device=lm.device)
    cuda = lm.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated() / 2**20
    else:
        base_mem = rss_mib()
    with torch.inference_mode():
        start = time.perf_counter()
        if spec["method"] == "full":
            out = lm.model(tensor, logits_to_keep=1, use_cache=True)
            cache = out.past_key_values
            kv_bytes = sum(
                t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
            )
        else:
            memory = lm.compress(ids, ratio=spec["ratio"])
            per_token = (
                2 * len(memory.layers) * memory.layers[0].keys.shape[1] * memory.layers[0].keys.shape[3]
            )
            kv_bytes = (
                memory.nbytes
                + int(memory.tail_ids.numel()) * per_token * lm.parts.embed_tokens.weight.element_size()
            )
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
    return {
        "method": spec["method"],
        "tokens": spec["tokens"],
        "seconds": seconds,
        "tokens_per_s": spec["tokens"] / seconds,
        "peak_mib_above_model": max(0.0, peak - base_mem),
        "kv_mib": kv_bytes / 2**20,
        "device": str(lm.device),
        "dtype": str(lm.parts.embed_tokens.weight.dtype),
        "threads": torch.get_num_threads(),
    }


def command(
    model: Annotated[str, typer.Option(help="Model spec.")] = "smollm2-135m",
    lengths: Annotated[str, typer.Option(help="Lengths run with both methods.")] = "4k,8k,16k",
    compressed_only: Annotated[str, typer.Option(help="Longer lengths run compressed only.")] = "32k,64k",
    window: Annotated[int, typer.Option(help="Compression window W.")] = 1024,
    ratio: Annotated[int, typer.Option(help="Compression ratio r.")] = 8,
    text: Annotated[str | None, typer.Option(help="A text file or a folder of .txt files to read.")] = None,
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16")] = "auto",
    device: Annotated[str | None, typer.Option(help="cpu | cuda")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the rows as JSON here.")] = None,
    worker: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    """Tokens/s and memory of compressed prefill against full-attention SDPA prefill, in one run."""
    if worker is not None:
        print(json.dumps(_worker(json.loads(worker))))
        return
    from selfctx.models import default_device

    device = device or default_device()
    both, only = parse_lengths(lengths), parse_lengths(compressed_only)
    plan = [(m, n) for n in both for m in ("full", "compressed")] + [("compressed", n) for n in only]
    rows = []
    typer.echo(f"{'method':<11}{'tokens':>8}{'seconds':>10}{'tok/s':>10}{'peak MiB':>10}{'KV MiB':>9}")
    for method, n in plan:
        spec = {
            "model": model,
            "method": method,
            "tokens": n,
            "window": window,
            "ratio": ratio,
            "text": text,
            "dtype": dtype,
            "device": device,
            "native_context": max(n + 64, 8192),
        }
        row = run_worker("prefill", spec, f"{method} prefill at {n} tokens")
        rows.append(row)
        typer.echo(
            f"{method:<11}{n:>8}{row['seconds']:>10.1f}{row['tokens_per_s']:>10.1f}"
            f"{row['peak_mib_above_model']:>10.0f}{row['kv_mib']:>9.1f}"
        )
    typer.echo("\nratio compressed / full (same length):")
    for n in both:
        full = next(r for r in rows if r["method"] == "full" and r["tokens"] == n)
        comp = next(r for r in rows if r["method"] == "compressed" and r["tokens"] == n)
        typer.echo(
            f"  {n:>6} tokens: throughput x{comp['tokens_per_s'] / full['tokens_per_s']:.2f}, "
            f"KV memory x{comp['kv_mib'] / full['kv_mib']:.3f}, "
            f"peak memory x{comp['peak_mib_above_model'] / max(1e-9, full['peak_mib_above_model']):.2f}"
        )
    if out is not None:
        from selfctx.fsutil import write_json_atomic

        write_json_atomic(out, rows)
