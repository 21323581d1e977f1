"""`selfctx bench serve-load`: 64 concurrent OpenAI clients against `selfctx serve`, in three scenarios.

All run in one process against the same loaded model, each on a fresh server (empty memory cache):
  shared          every client asks its own question about the same document (memory reuse on)
  shared-noreuse  the same requests with reuse switched off: each request compresses its own copy (baseline)
  distinct        every client sends a different document (nothing to reuse)
Printed per scenario: latency p50/p90/p99/max, requests/s and completion tokens/s over the wall time, how
many compressions the server ran and its largest decode batch. Documents are slices of the WordNet noun list
shipped with the package (real words), cut to --doc-tokens tokens.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from importlib.resources import files as package_files
from typing import Annotated, Any

import typer

from selfctx.errors import SelfctxError

SCENARIOS = ("shared", "shared-noreuse", "distinct")


def _documents(tokenizer: Any, count: int, n_tokens: int) -> list[str]:
    words = (
        (package_files("selfctx.synth") / "data" / "wordnet_nouns.txt").read_text(encoding="utf-8").split()
    )
    docs = []
    per_doc = max(1, n_tokens)  # words per doc is at most the token count; cut by tokens below
    for i in range(count):
        start = (i * per_doc) % max(1, len(words) - per_doc)
        text = "Nouns to remember: " + ", ".join(words[start : start + per_doc]) + "."
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
        docs.append(tokenizer.decode(ids))
    return docs


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _run_clients(
    base_url: str, bodies: list[dict[str, Any]], clients: int
) -> tuple[list[float], int, float]:
    import httpx

    latencies: list[float] = []
    tokens = 0
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=1800, limits=limits) as http:

        async def client() -> None:
            nonlocal tokens
            while not queue.empty():
                body = queue.get_nowait()
                started = time.perf_counter()
                response = await http.post("/chat/completions", json=body)
                if response.status_code != 200:
                    raise SelfctxError(f"the server answered {response.status_code}: {response.text[:300]}")
                latencies.append(time.perf_counter() - started)
                tokens += int(response.json()["usage"]["completion_tokens"])

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - started
    return latencies, tokens, wall


def command(
    model: Annotated[
        str, typer.Option(help="smollm2-135m (the embedded model) or 'tiny' (random tiny Llama).")
    ] = "smollm2-135m",
    clients: Annotated[int, typer.Option(help="Concurrent clients.")] = 64,
    requests_per_client: Annotated[
        int, typer.Option(help="Requests each client sends, one after another.")
    ] = 1,
    doc_tokens: Annotated[int, typer.Option(help="Tokens per document.")] = 2000,
    max_tokens: Annotated[int, typer.Option(help="Completion tokens per request (max_tokens).")] = 16,
    window: Annotated[int, typer.Option(help="Compression window.")] = 256,
    native_context: Annotated[int, typer.Option(help="Native context the router fits into.")] = 1024,
    answer_budget: Annotated[int, typer.Option(help="Tokens reserved for question + answer.")] = 128,
    scenarios: Annotated[str, typer.Option(help=f"Comma-separated subset of {', '.join(SCENARIOS)}.")] = (
        ",".join(SCENARIOS)
    ),
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice).")] = None,
) -> None:
    """Latency percentiles and throughput of the compressed-inference server under concurrent load."""
    import torch

    from selfctx.compress import CompressedLM, ExpertBattery
    from selfctx.models import load_causal_lm, resolve_model
    from selfctx.serve import ServeConfig, serve_in_thread

    chosen = [s.strip() for s in scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or not chosen:
        raise SelfctxError(
            f"unknown scenario {unknown[0] if unknown else '(none)'}: use {', '.join(SCENARIOS)}"
        )
    if clients < 1 or requests_per_client < 1 or doc_tokens < 1 or max_tokens < 1:
        raise SelfctxError("clients, requests, doc tokens and max tokens must all be at least 1")
    if threads:
        torch.set_num_threads(threads)
    loaded = time.perf_counter()
    if resolve_model(model).in_memory:  # random weights, so it needs no battery on disk
        base, tokenizer = load_causal_lm(
            model,
            dtype="float32",
            device="cpu",
            in_memory_config={"max_position_embeddings": max(1024, native_context)},
        )
        battery = ExpertBattery.create(base, (2, 4, 8))
        lm = CompressedLM(base, tokenizer, battery, window=window, native_context=native_context, name=model)
    else:
        lm = CompressedLM.from_pretrained(
            model, window=window, native_context=native_context, ratios=(2, 4, 8), dtype="float32"
        )
    lm.eval()
    typer.echo(
        f"model {model} loaded in {time.perf_counter() - loaded:.1f}s; torch threads "
        f"{torch.get_num_threads()}; {clients} clients x {requests_per_client} requests, documents of "
        f"{doc_tokens} tokens, max_tokens {max_tokens}, window {window}, native {native_context}"
    )
    n_requests = clients * requests_per_client
    shared_doc = _documents(lm.tokenizer, 1, doc_tokens)[0]
    rows = []
    for scenario in chosen:
        docs = _documents(lm.tokenizer, n_requests, doc_tokens) if scenario == "distinct" else [shared_doc]
        bodies = [
            {
                "model": model,
                "max_tokens": max_tokens,
                "temperature": 0.0,
                "messages": [
                    {"role": "system", "content": docs[i % len(docs)]},
                    {
                        "role": "user",
                        "content": f"Question {i}: which noun comes right after the {i % 7 + 1}th one?",
                    },
                ],
            }
            for i in range(n_requests)
        ]
        config = ServeConfig(
            model_name=model,
            answer_budget=answer_budget,
            max_inflight=max(256, clients),
            max_batch=max(64, clients),
            max_input_tokens=10 * doc_tokens + 4096,
            max_body_bytes=64 * 2**20,
            reuse=scenario != "shared-noreuse",
        )
        with serve_in_thread(lm, config) as server:
            latencies, tokens, wall = asyncio.run(_run_clients(server.base_url, bodies, clients))
            worker = server.app.state.worker.stats
        rows.append(
            {
                "scenario": scenario,
                "requests": len(latencies),
                "p50": statistics.median(latencies),
                "p90": _percentile(latencies, 0.9),
                "p99": _percentile(latencies, 0.99),
                "max": max(latencies),
                "req_s": len(latencies) / wall,
                "tok_s": tokens / wall,
                "wall": wall,
                "compressions": worker.compressions,
                "max_batch": worker.max_batch,
                "batches": worker.batches,
            }
        )
        r = rows[-1]  # printed at once too, so a run cut short still reports its finished scenarios
        typer.echo(
            f"  {scenario}: p50 {r['p50']:.2f}s p90 {r['p90']:.2f}s p99 {r['p99']:.2f}s, "
            f"{r['req_s']:.2f} req/s, "
            f"wall {wall:.1f}s, {r['compressions']} compressions, max batch {r['max_batch']}",
            err=True,
        )
    header = (
        f"{'scenario':<16}{'requests':>9}{'p50 s':>9}{'p90 s':>9}{'p99 s':>9}{'max s':>9}{'req/s':>9}"
        f"{'tok/s':>9}{'wall s':>9}{'compress':>10}{'batches':>9}{'max batch':>10}"
    )
    typer.echo(header)
    for r in rows:
        typer.echo(
            f"{r['scenario']:<16}{r['requests']:>9}{r['p50']:>9.2f}{r['p90']:>9.2f}{r['p99']:>9.2f}"
            f"{r['max']:>9.2f}{r['req_s']:>9.2f}{r['tok_s']:>9.1f}{r['wall']:>9.1f}{r['compressions']:>10}"
            f"{r['batches']:>9}{r['max_batch']:>10}"
        )
    baseline = next((r for r in rows if r["scenario"] == "shared-noreuse"), None)
    shared = next((r for r in rows if r["scenario"] == "shared"), None)
    if baseline and shared:
        typer.echo(
            f"memory reuse: x{baseline['wall'] / shared['wall']:.1f} throughput, p50 latency "
            f"{baseline['p50']:.2f}s -> {shared['p50']:.2f}s against compressing per request"
        )
