"""Measure a backend's generation throughput on this machine (not a test).

    python -m selfctx.bench.generation --backend llamacpp --instances 1,2 --n 8 --max-tokens 96
    python -m selfctx.bench.generation --backend hf --batch-size 8

Prints load time, completion tokens/s over the batch (after one warm-up call) and the machine's load
average, so figures from a shared machine can be judged.
"""

from __future__ import annotations

import argparse
import os
import time

from selfctx.llm.base import ChatRequest, SamplingParams
from selfctx.llm.factory import make_llm

NOUNS = ["fern", "anvil", "harbor", "violin", "glacier", "lantern", "orchard", "compass", "falcon", "quarry"]


def measure(backend: str, model: str, n: int, max_tokens: int, concurrency: int, **kw: object) -> dict:
    started = time.perf_counter()
    llm = make_llm(backend, model, concurrency=concurrency, **kw)  # type: ignore[arg-type]
    load_s = time.perf_counter() - started
    llm.generate([ChatRequest.user("Hi", SamplingParams(max_tokens=2))] * concurrency)  # warm-up
    requests = [
        ChatRequest.user(
            f"Write a detailed encyclopedia paragraph about the noun '{NOUNS[i % len(NOUNS)]}'.",
            SamplingParams(max_tokens=max_tokens, temperature=0.8, seed=i),
        )
        for i in range(n)
    ]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    out = llm.generate(requests)
    seconds = time.perf_counter() - started
    llm.close()
    tokens = sum(c.completion_tokens for c in out)
    return {
        "backend": backend,
        "concurrency": concurrency,
        "load_s": round(load_s, 2),
        "requests": n,
        "completion_tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "errors": sum(not c.ok for c in out),
        "loadavg_1m": f"{load_before:.2f} -> {os.getloadavg()[0]:.2f}",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="llamacpp", choices=["llamacpp", "hf"])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=8, help="requests in the measured batch")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument(
        "--instances", default="1", help="llamacpp: comma-separated instance counts to compare"
    )
    parser.add_argument("--n-threads", type=int, default=None, help="llamacpp: threads per instance")
    parser.add_argument("--batch-size", type=int, default=8, help="hf: rows per generate call")
    args = parser.parse_args(argv)
    if args.backend == "llamacpp":
        for instances in (int(x) for x in args.instances.split(",")):
            extra = {"n_threads": args.n_threads} if args.n_threads else {}
            print(measure("llamacpp", args.model, args.n, args.max_tokens, instances, **extra), flush=True)
    else:
        print(measure("hf", args.model, args.n, args.max_tokens, args.batch_size, device="cpu"), flush=True)


if __name__ == "__main__":
    main()
