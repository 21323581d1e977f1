"""`selfctx bench prefill`: compressed prefill vs full-attention SDPA prefill of the same model, same inputs.

Each (method, length) runs in a fresh subprocess so peak memory is its own. Printed per row: tokens/s, wall
seconds, peak memory above the loaded model (RSS on CPU, max_memory_allocated on CUDA) and key/value bytes
held after the prefill (full attention: its KV cache; compressed: the memory + the raw tail).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from selfctx.errors import SelfctxError


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _text_ids(tokenizer: Any, source: str | None, n_tokens: int) -> list[int]:
    """Real text, repeated if needed, cut to n tokens: files of a folder, or one file."""
    if source:
        path = Path(source)
        files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
        text = "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    else:  # no text given: the WordNet noun list shipped with the package (real words, not random ids)
        from importlib.resources import files as package_files

        text = (package_files("selfctx.synth") / "data" / "wordnet_nouns.txt").read_text(encoding="utf-8")
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise SelfctxError(f"no text found in {source}")
    while len(ids) < n_tokens:
        ids = ids + ids
    return ids[:n_tokens]


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
    ids = _text_ids(lm.tokenizer, spec.get("text"), spec["tokens"])
    tensor = torch.tensor([ids], device=lm.device)
    cuda = lm.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated() / 2**20
    else:
        base_mem = _rss_mib()
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
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mib()
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


def _parse_lengths(text: str) -> list[int]:
    """'4k,16k,64k' -> [4096, 16384, 65536] (k = 1024)."""
    out = []
    for part in (p.strip().lower() for p in text.split(",")):
        if part:
            try:
                out.append(int(float(part[:-1]) * 1024) if part.endswith("k") else int(part))
            except ValueError:
                raise SelfctxError(f"length {part!r} is not a number like 4096 or 16k") from None
    return out


def _run_worker(verb: str, spec: dict[str, Any], what: str) -> dict[str, Any]:
    """One measurement in a fresh `selfctx bench <verb> --worker` process, so its peak memory is its own; its
    JSON row (the last stdout line). A failed worker raises naming `what` and its last stderr line, or
    "(no output)" when it died without one (e.g. killed for memory)."""
    proc = subprocess.run(
        [sys.executable, "-m", "selfctx", "bench", verb, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SelfctxError(f"{what} failed: {last}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise SelfctxError(f"{what} failed: the worker exited without printing its result")
    return json.loads(lines[-1])


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
    both, only = _parse_lengths(lengths), _parse_lengths(compressed_only)
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
        row = _run_worker("prefill", spec, f"{method} prefill at {n} tokens")
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
