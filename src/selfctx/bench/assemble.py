"""`selfctx bench assemble`: stream one huge sample (default 10M tokens, bucket 4m-10m) from an existing pool,
next to one tokenizer pass over the very same text, each in a fresh subprocess for clean peak-memory figures.

Assembly = load the pool (passage JSONL with n_tokens) + plan the fill + stream the user turn to a file; its
token count comes from the pieces' pre-computed counts (exact by additivity, see selfctx.synth.assemble).
Baselines on the written text: (1) one `encode` of the whole text with the target tokenizer, whose count also
checks the additive count at full scale; (2) the same text encoded in batches (the Rust tokenizer's threads).
Times exclude loading the tokenizer (reported apart); peak RSS is measured over the work phase only
(Linux: /proc/self/clear_refs resets the high-water mark after the tokenizer is loaded).

    selfctx bench assemble --text-source ../shared/data/paul_graham_essays --tokens 10m
    selfctx bench assemble --pool runs/x/pool --tokens 1m --allow-repeat
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from selfctx.errors import SelfctxError
from selfctx.synth.types import Passage

BENCH_BUCKET = "4m-10m"


# ---- memory probes (Linux /proc; ru_maxrss elsewhere) ---------------------------------------------------


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM, the peak RSS
        return True
    except OSError:
        return False


def _peak_mib() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- pool ------------------------------------------------------------------------------------------------


def _read_pool(path: Path) -> list[Passage]:
    """Passages of a selfctx pool folder (pool.json + shards), or of any passage JSONL file/folder."""

    if (path / "pool.json").is_file():
        from selfctx.synth.corpus import load_pool

        return load_pool(path)
    files = [path] if path.is_file() else sorted(path.rglob("*.jsonl"))
    passages: list[Passage] = []
    for file in files:
        with file.open(encoding="utf-8") as handle:
            passages.extend(Passage.from_json(json.loads(line)) for line in handle if line.strip())
    if not passages:
        raise SelfctxError(f"no passages found in {path}: pass a pool folder written by `selfctx synth`")
    return passages


def _source_chunks(text_source: Path | None, counter: Any) -> tuple[list[str], str]:
    """Base passages (~400 tokens) from real text, or sentences about WordNet nouns when no text is given."""
    from selfctx.synth.chunking import chunk_documents, read_documents

    if text_source is not None:
        chunks = chunk_documents(read_documents(text_source), counter, max_tokens=400)
        return [c.text for c in chunks if c.n_tokens >= 50], f"{text_source} (chunks of <= 400 tokens)"
    from selfctx.synth.nouns import writable_nouns

    rng = random.Random(0)
    nouns = writable_nouns()
    templates = (
        "The {} was first described in an old ledger.",
        "Nobody expected the {} to matter so much.",
        "A {} can be found near the harbor at dawn.",
        "Scholars still argue about the {}.",
    )
    texts = [" ".join(rng.choice(templates).format(rng.choice(nouns)) for _ in range(30)) for _ in range(400)]
    return texts, "sentences about WordNet nouns from 4 templates (no --text-source given)"


def _build_pool(text_source: Path | None, counter: Any, pool_tokens: int, out: Path) -> dict[str, Any]:
    """A pool of >= pool_tokens tokens: the base passages, then variants with their sentences rotated."""
    from selfctx.synth.chunking import _SENTENCE_BREAK
    from selfctx.synth.nouns import writable_nouns
    from selfctx.synth.types import Passage

    start = time.perf_counter()
    base, description = _source_chunks(text_source, counter)
    if not base:
        raise SelfctxError(f"no usable text in {text_source}: pass a folder of .txt/.md files")
    sentences = [[s for s in _SENTENCE_BREAK.split(t) if s.strip()] for t in base]
    nouns = writable_nouns()
    total, n, variant = 0, 0, 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        while total < pool_tokens:
            texts = []
            for parts in sentences:
                shift = variant % len(parts)
                rotated = parts[shift:] + parts[:shift]
                texts.append(" ".join(reversed(rotated) if variant % 2 else rotated).strip())
            for text, count in zip(texts, counter.count_batch(texts), strict=True):
                passage = Passage(f"b{n:07d}", nouns[(n * 7919) % len(nouns)], "bench", text, count)
                handle.write(json.dumps(passage.to_json(), ensure_ascii=False) + "\n")
                total, n = total + count, n + 1
            variant += 1
    return {
        "passages": n,
        "tokens": total,
        "variants": variant,
        "source": description,
        "build_s": time.perf_counter() - start,
        "bytes": out.stat().st_size,
    }


# ---- workers (each in a fresh process) ---------------------------------------------------------------------


def _worker_assemble(spec: dict[str, Any]) -> dict[str, Any]:
    from selfctx.synth.assemble import stream_sample
    from selfctx.synth.tokens import chat_overhead, timed_load_token_counter
    from selfctx.synth.types import SampleDraft

    counter, load_s = timed_load_token_counter(spec["model"])
    overhead = chat_overhead(counter)
    rss_loaded = _rss_mib()
    exact_peak = _reset_peak()
    start = time.perf_counter()
    passages = _read_pool(Path(spec["pool"]))
    pool_s = time.perf_counter() - start
    needle = passages[0]
    draft = SampleDraft(
        task="single_doc_qa",
        relevant=(needle,),
        instruction="Answer the question based on the passages.",
        question=f"Which passage is about {needle.noun}? Give its number.",
        answer="Passage {gold[0]}.",
        nouns=(needle.noun,),
    )
    with open(spec["out"], "w", encoding="utf-8", buffering=1 << 20) as handle:
        streamed = stream_sample(
            draft,
            passages,
            spec["tokens"],
            counter,
            random.Random(spec["seed"]),
            handle,
            allow_repeat=spec["allow_repeat"],
            model=spec["model"],
            seed=spec["seed"],
            bucket=spec["bucket"],
            fmt="text",
        )
    total_s = time.perf_counter() - start
    meta = streamed.metadata
    answer = "Passage {}.".format(meta["gold_positions"][0])
    return {
        "load_tokenizer_s": load_s,
        "pool_load_s": pool_s,
        "assemble_s": total_s - pool_s,
        "total_s": total_s,
        "rss_loaded_mib": rss_loaded,
        "peak_mib": _peak_mib(),
        "peak_is_work_phase": exact_peak,
        "token_count": meta["token_count"],
        "user_tokens": meta["token_count"] - overhead - counter.count(answer),
        "n_distractors": meta["n_distractors"],
        "repeated_distractors": meta["repeated_distractors"],
        "truncated": meta["extra"]["truncated_distractors"],
        "pool_passages": len(passages),
        "pool_text_mib": sum(len(p.text.encode()) for p in passages) / 2**20,
        "chars": streamed.chars_written,
    }


def _worker_tokenize(spec: dict[str, Any]) -> dict[str, Any]:
    from selfctx.synth.tokens import timed_load_token_counter

    counter, load_s = timed_load_token_counter(spec["model"])
    rss_loaded = _rss_mib()
    exact_peak = _reset_peak()
    start = time.perf_counter()
    with open(spec["text"], encoding="utf-8") as handle:
        text = handle.read()
    if spec["mode"] == "whole":
        n = counter.count(text)
    else:  # batches of ~1 MiB cut before a passage header (a boundary the tokenizer does not merge across)
        pieces, cut = [], 0
        while cut < len(text):
            nxt = text.find("\n\nPassage ", cut + (1 << 20))
            nxt = len(text) if nxt < 0 else nxt
            pieces.append(text[cut:nxt])
            cut = nxt
        n = sum(counter.count_batch(pieces))
    total_s = time.perf_counter() - start
    return {
        "load_tokenizer_s": load_s,
        "total_s": total_s,
        "rss_loaded_mib": rss_loaded,
        "peak_mib": _peak_mib(),
        "peak_is_work_phase": exact_peak,
        "tokens": n,
        "text_mib": len(text.encode()) / 2**20,
    }


def _run_worker(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "selfctx.bench.assemble", kind, json.dumps(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "SELFCTX_PROGRESS": "0"},
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise SelfctxError(f"the {kind} worker failed: {' | '.join(tail)}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ---- command ----------------------------------------------------------------------------------------------


_HELP = {
    "tokens": "sample length, e.g. 10m (= 10*1024**2, clipped into bucket 4m-10m)",
    "pool": "an existing pool: a `selfctx synth` pool folder, or passage JSONL",
    "synthetic_pool": "build a pool from --text-source (the default without --pool)",
    "text_source": "folder of .txt/.md for the synthetic pool",
    "model": "model whose tokenizer counts tokens",
    "allow_repeat": "let distractors repeat when the pool is too small",
    "workdir": "where the pool and the sample go (default: a temporary folder)",
}


def command(
    tokens: Annotated[str, typer.Option(help=_HELP["tokens"])] = "10m",
    pool: Annotated[Path | None, typer.Option(help=_HELP["pool"])] = None,
    synthetic_pool: Annotated[bool, typer.Option(help=_HELP["synthetic_pool"])] = False,
    text_source: Annotated[Path | None, typer.Option(help=_HELP["text_source"])] = None,
    model: Annotated[str, typer.Option(help=_HELP["model"])] = "smollm2-135m",
    allow_repeat: Annotated[bool, typer.Option(help=_HELP["allow_repeat"])] = False,
    workdir: Annotated[Path | None, typer.Option(help=_HELP["workdir"])] = None,
    seed: Annotated[int, typer.Option(help="sample seed")] = 0,
) -> None:
    """Time and peak memory of streaming one huge sample vs one tokenizer pass over the same text."""
    from selfctx.synth.lengths import BUCKETS, bucket_of, parse_length

    target = parse_length(tokens)
    bucket = (
        BENCH_BUCKET if BUCKETS[BENCH_BUCKET][0] <= target <= BUCKETS[BENCH_BUCKET][1] else bucket_of(target)
    )
    if pool is not None and synthetic_pool:
        raise SelfctxError("give --pool or --synthetic-pool, not both")
    temp = None
    if workdir is None:
        temp = tempfile.TemporaryDirectory(prefix="selfctx-bench-assemble-")
        workdir = Path(temp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        pool_info: dict[str, Any]
        if pool is None:
            from selfctx.synth.tokens import load_token_counter

            typer.echo(f"building a pool of >= {int(target * 1.05):,} tokens ...", err=True)
            pool = workdir / "pool" / "passages.jsonl"
            pool_info = _build_pool(text_source, load_token_counter(model), int(target * 1.05), pool)
        else:
            pool_info = {"source": str(pool)}
        sample_path = workdir / "sample_user_turn.txt"
        common = {"model": model, "seed": seed}
        typer.echo("assembling (fresh process) ...", err=True)
        asm = _run_worker(
            "assemble",
            {
                **common,
                "pool": str(pool),
                "out": str(sample_path),
                "tokens": target,
                "bucket": bucket,
                "allow_repeat": allow_repeat,
            },
        )
        typer.echo("tokenizer pass over the same text (fresh processes) ...", err=True)
        whole = _run_worker("tokenize", {**common, "text": str(sample_path), "mode": "whole"})
        batched = _run_worker("tokenize", {**common, "text": str(sample_path), "mode": "batched"})
        results = {
            "target": target,
            "bucket": bucket,
            "pool": pool_info,
            "assemble": asm,
            "tokenize_whole": whole,
            "tokenize_batched": batched,
        }
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
        _print(results)
    finally:
        if temp is not None:
            temp.cleanup()


def _print(r: dict[str, Any]) -> None:
    asm, whole, batched = r["assemble"], r["tokenize_whole"], r["tokenize_batched"]
    echo = typer.echo
    pool = r["pool"]
    echo(f"target {r['target']:,} tokens, bucket {r['bucket']}; pool: {pool.get('source')}")
    if "passages" in pool:
        echo(
            f"  pool built: {pool['passages']:,} passages, {pool['tokens']:,} tokens, "
            f"{pool['variants']} variant rounds, {pool['build_s']:.1f} s (setup, not timed below)"
        )
    echo(
        f"sample: {asm['token_count']:,} tokens ({asm['token_count'] / r['target'] - 1:+.3%} vs target), "
        f"{asm['n_distractors']:,} distractors, repeated={asm['repeated_distractors']}, "
        f"{asm['chars'] / 2**20:.1f} MiB of text"
    )
    echo("")
    echo(f"{'':38} {'time s':>8} {'peak RSS MiB':>13} {'RSS loaded':>11} {'growth':>8}")
    rows = [
        ("assemble: load pool + plan + stream", asm["total_s"], asm),
        ("tokenizer pass: one encode()", whole["total_s"], whole),
        ("tokenizer pass: encode_batch (1 MiB)", batched["total_s"], batched),
    ]
    for name, seconds, data in rows:
        growth = data["peak_mib"] - data["rss_loaded_mib"]
        echo(
            f"{name:38} {seconds:8.2f} {data['peak_mib']:13.0f} {data['rss_loaded_mib']:11.0f} {growth:8.0f}"
        )
    echo(
        f"  (assemble: pool load {asm['pool_load_s']:.2f} s + plan/stream {asm['assemble_s']:.2f} s; "
        f"pool text {asm['pool_text_mib']:.0f} MiB; tokenizer load {asm['load_tokenizer_s']:.1f} s, excluded)"
    )
    echo("")
    echo(f"time ratio assemble / one encode():      {asm['total_s'] / whole['total_s']:.3f}")
    echo(f"time ratio assemble / batched encode:    {asm['total_s'] / batched['total_s']:.3f}")
    growth_asm = asm["peak_mib"] - asm["rss_loaded_mib"]
    growth_tok = whole["peak_mib"] - whole["rss_loaded_mib"]
    echo(f"memory growth assemble / one encode():   {growth_asm / max(growth_tok, 1e-9):.3f}")
    match = whole["tokens"] == asm["user_tokens"] == batched["tokens"]
    echo(
        f"user-turn tokens: additive plan {asm['user_tokens']:,}, one encode() {whole['tokens']:,}, "
        f"batched {batched['tokens']:,} -> {'EXACT MATCH' if match else 'MISMATCH'}"
    )


def _main(argv: list[str]) -> None:
    kind, spec = argv[0], json.loads(argv[1])
    result = _worker_assemble(spec) if kind == "assemble" else _worker_tokenize(spec)
    print(json.dumps(result))


if __name__ == "__main__":
    _main(sys.argv[1:])
