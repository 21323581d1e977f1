"""One GPU run of the winning recipe: train SmolLM2 experts (the smollm2-cpu preset's recipe, bf16, bigger
batches; x8, x4, x16, x32 by default) for a fixed time, then score them on the needle as 4-way multiple
choice against full attention, truncation to the capped native window and the untrained expert with the same
mechanism, all methods on the same items, a chunk at a time until the evaluation's time is up. Sized for one
H200 in ~8 min.

Here (CPU), once:
    ../shared/tools/stage-smollm2                         # .gpu-stage/part00, part01, sha256, whl
    python benchmarks/gpu/experts_h200.py prepare         # .gpu-stage/data: task samples, pool, haystack
On the device machine (two calls, the second within ~30 s of the first):
    carry [".gpu-stage/part00"]:  mkdir -p ~/m && cp .gpu-stage/part00 ~/m/
    carry [".gpu-stage/part01", ".gpu-stage/sha256", ".gpu-stage/whl", ".gpu-stage/data"]:
        bash benchmarks/gpu/run_h200.sh
Results: $OUT/results.json, results.md, train_logs.json (rewritten after every chunk, so a killed run still
returns what it scored), battery.tar.gz (the experts as trained), train.tar.gz (each run's latest checkpoint
and log: `selfctx train` resumes from it). The tests run `main` on a tiny model on CPU.

`run --battery DIR` skips training and scores a battery trained elsewhere (the CPU runs); each length's items
are also written to WORK/items-LENGTH.jsonl in harness_needle_mc.py's format, so the kvpress runner scores the
same items (benchmarks/gpu/eval_h200.sh does both in one call).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STAGE = Path(".gpu-stage/data")


def prepare(synth: Path, pool: Path, haystack: Path, stage: Path = STAGE) -> None:
    """Copy what the run reads into the carried stage folder (a few MB)."""
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(synth / "data", stage / "synth" / "data")
    shutil.copytree(pool, stage / "pool")  # with its done markers: the synthetic checks read finished shards
    shutil.copytree(haystack, stage / "haystack")
    print(
        f"staged {sum(f.stat().st_size for f in stage.rglob('*') if f.is_file()) / 2**20:.1f} MiB in {stage}"
    )


def train(args: argparse.Namespace) -> tuple[Path, dict[str, int]]:
    """The battery to score and the step each expert's run reached (0: never trained, time ran out first)."""
    from dataclasses import replace

    from selfctx.config import load_config
    from selfctx.train.experts import ExpertsConfig, rebase_sources, run_experts
    from selfctx.train.preset import preset_defaults

    overrides = [
        f"model.name={args.model}",
        f"experts.ratios={args.ratios}",
        f"loop.output_dir={args.work / 'train'}",
        f"loop.max_steps={args.steps}",
        f"loop.micro_batch_size={args.micro_batch}",
        f"loop.grad_accum_steps={args.accum}",
        f"loop.dtype={args.dtype}",
        f"loop.save_every={max(1, args.steps // 4)}",
        f"loop.time_limit_s={args.train_seconds}",
        f"data.ramp_samples={args.steps * args.micro_batch * args.accum // 2}",
        *args.set,
    ]
    cfg = load_config(
        ExpertsConfig, None, overrides, defaults=preset_defaults(ExpertsConfig, "experts", "smollm2-cpu")
    )
    # the preset's mix (or a --set data.sources=... one) read from the staged data
    sources = rebase_sources(cfg.data.sources, args.data / "synth", args.data / "pool")
    cfg = replace(cfg, data=replace(cfg.data, sources=sources))
    result = run_experts(cfg)
    steps = {f"r{r}": 0 for r in cfg.experts.ratios} if cfg.experts.kind == "lora" else {}
    steps.update({name: run.step for name, run in result.runs.items()})
    if result.experts_dir is not None:
        return result.experts_dir, steps
    # stopped by the time limit: the weights it reached, as a loadable battery
    target = args.work / "battery-at-time-limit"
    shutil.rmtree(target, ignore_errors=True)
    battery: Any = result.compressed.battery
    battery.save(target)
    return target, steps


def run_folders(train_dir: Path) -> list[Path]:
    """Each expert's run folder (r8, r4, ... or an mha_clone run's clone): the ones holding checkpoints."""
    return sorted(p for p in train_dir.iterdir() if (p / "checkpoints").is_dir())


def pack(args: argparse.Namespace, experts: Path) -> None:
    """The battery and each run's latest checkpoint (with its log) into $OUT as two archives."""
    import tarfile

    from selfctx.train import checkpoint as ckpt

    args.out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(args.out / "battery.tar.gz", "w:gz") as tar:
        tar.add(experts, arcname="battery")
    with tarfile.open(args.out / "train.tar.gz", "w:gz") as tar:
        for run in run_folders(args.work / "train"):
            latest = ckpt.latest(run)
            for path in [run / "train_log.jsonl", run / "train_config.json", *([latest] if latest else [])]:
                if path.exists():
                    tar.add(path, arcname=f"train/{run.name}/{path.relative_to(run)}")
            if latest is not None:
                pointer = run / "checkpoints" / "latest.json"
                tar.add(pointer, arcname=f"train/{run.name}/{pointer.relative_to(run)}")


def evaluate(
    args: argparse.Namespace, experts: Path, on_rows: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    import torch

    from selfctx.compress import CompressedLM
    from selfctx.eval.needle import load_haystack
    from selfctx.eval.needle_mc import make_items, score_items, summarize, write_items
    from selfctx.train.config import ModelSettings
    from selfctx.train.experts import load_base

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    model, tokenizer = load_base(ModelSettings(name=args.model), 0, device, dtype)
    trained = CompressedLM.from_pretrained(model, experts=experts, tokenizer=tokenizer)
    # full attention reads the whole context raw: the model's own positions, not the capped native window
    raw = CompressedLM.from_pretrained(
        model, experts=experts, native_context=model.config.max_position_embeddings, tokenizer=tokenizer
    )
    untrained = CompressedLM.from_pretrained(
        model,
        ratios=trained.battery.ratios,
        window=trained.window,
        native_context=trained.native_context,
        sink=trained.sink,
        memory_input=trained.battery.adapter_for(trained.battery.ratios[0]).config.memory_input,
        tokenizer=tokenizer,
    )
    haystack = load_haystack(args.haystack)
    truncate = trained.native_context
    methods = {  # the trained experts first: if time runs short, what the run exists for is scored
        "experts": (trained, None, None),
        "full": (raw, 1, None),
        f"truncate-{truncate}": (trained, 1, truncate),
        "untrained": (untrained, None, None),
    }
    # --skip: methods already scored on these items elsewhere (`truncate` names the truncation row)
    methods = {k: v for k, v in methods.items() if k.split("-")[0] not in args.skip}
    rows: dict[str, Any] = {}
    deadline = time.perf_counter() + args.eval_seconds
    for length in args.lengths:
        items = make_items(tokenizer, haystack, length, args.items, seed=0)
        write_items(args.work / f"items-{length}.jsonl", items)  # for runners in other environments (kvpress)
        n = len(tokenizer(items[0].context)["input_ids"])
        scored: dict[str, list[dict[str, Any]]] = {name: [] for name in methods}
        seconds = dict.fromkeys(methods, 0.0)
        # every method on the same chunk before the next one, so the rows stay paired when time runs out
        for first in range(0, len(items), args.chunk):
            if first > 0 and time.perf_counter() > deadline:  # the first chunk always runs
                print(f"evaluation time is up: {first} of {len(items)} items at {length}", flush=True)
                break
            for name, (lm, ratio, cut) in methods.items():
                started = time.perf_counter()
                with torch.no_grad():
                    part = score_items(
                        lm, items[first : first + args.chunk], ratio=ratio, truncate=cut,
                        answer_budget=args.answer_budget,
                    )  # fmt: skip
                seconds[name] += time.perf_counter() - started
                scored[name] += part["per_item"]
            for name, (lm, ratio, _) in methods.items():
                result = summarize(scored[name])
                routed = lm.route_for(n, args.answer_budget).ratio if ratio is None else 1
                rows[f"{name}@{length}"] = {
                    "method": name, "length": length, "ratio": routed, "seconds": round(seconds[name], 1),
                    **result,
                }  # fmt: skip
                print(
                    f"{length:>6} {name:<16} x{routed:<3} acc {result['acc']:.3f}"
                    f" ± {result['acc_stderr']:.3f} ({result['items']} items)",
                    flush=True,
                )
            on_rows(rows)
    return rows


def write_results(out: Path, rows: dict[str, Any], summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    from selfctx.fsutil import write_json_atomic, write_text_atomic

    # atomic: a run killed mid-write still leaves the last chunk's complete results
    write_json_atomic(out / "results.json", {**summary, "rows": rows})
    lines = [
        "| length | method | ratio | accuracy % | ± stderr | items | s |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows.values():
        lines.append(
            f"| {r['length']} | {r['method']} | {r['ratio']} | {100 * r['acc']:.1f} "
            f"| {100 * r['acc_stderr']:.1f} | {r['items']} | {r['seconds']} |"
        )
    write_text_atomic(out / "results.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    prep = sub.add_parser("prepare", help="stage the data here (CPU)")
    prep.add_argument("--synth", type=Path, default=Path("runs/synth"))
    prep.add_argument("--pool", type=Path, default=Path("runs/pool/pool"))
    prep.add_argument("--haystack", type=Path, default=Path("../shared/data/paul_graham_essays"))
    run = sub.add_parser("run", help="train and evaluate (the device machine)")
    run.add_argument("--model", default=".gpu-stage/smollm2.gguf")
    run.add_argument("--data", type=Path, default=STAGE)
    run.add_argument("--haystack", type=Path, default=STAGE / "haystack")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--work", type=Path, default=Path("/tmp/selfctx-gpu"))
    run.add_argument("--ratios", default="[8, 4, 16, 32]")
    run.add_argument("--steps", type=int, default=150)
    run.add_argument("--micro-batch", type=int, default=4)
    run.add_argument("--accum", type=int, default=1)
    run.add_argument("--dtype", default="bfloat16")
    run.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[4000, 8000])
    run.add_argument("--items", type=int, default=100)
    run.add_argument("--chunk", type=int, default=10, help="items each method scores before the time check")
    run.add_argument("--train-seconds", type=float, default=300, help="training stops, checkpointed")
    run.add_argument("--eval-seconds", type=float, default=180, help="no new chunk starts after this")
    run.add_argument(
        "--answer-budget", type=int, default=128, help="question + answer tokens the router keeps"
    )
    run.add_argument("--set", action="append", default=[], help="extra experts config override (repeatable)")
    run.add_argument(
        "--skip", type=lambda s: [m for m in s.split(",") if m], default=[],
        help="comma-separated methods not to score: full, truncate, untrained",
    )  # fmt: skip
    run.add_argument(
        "--battery",
        type=Path,
        help="score this trained battery (e.g. one trained on CPU) instead of training",
    )
    args = parser.parse_args(argv)
    if args.verb == "prepare":
        prepare(args.synth, args.pool, args.haystack)
        return
    started = time.perf_counter()
    if args.chunk < 1 or args.items < 1:
        parser.error("--chunk and --items must be >= 1")
    steps: dict[str, int] = {}
    if args.battery is not None:
        experts = args.battery
        args.out.mkdir(parents=True, exist_ok=True)
    else:
        experts, steps = train(args)
        pack(args, experts)
    trained_s = time.perf_counter() - started
    logs = {
        run.name: [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line]
        for run in (run_folders(args.work / "train") if args.battery is None else [])
        if (run / "train_log.jsonl").is_file()
    }
    (args.out / "train_logs.json").write_text(json.dumps(logs))

    def summary() -> dict[str, Any]:
        total = time.perf_counter() - started
        return {"train_seconds": round(trained_s, 1), "total_seconds": round(total, 1), "steps": steps}

    rows = evaluate(args, experts, lambda rows: write_results(args.out, rows, summary()))
    write_results(args.out, rows, summary())
    print((args.out / "results.md").read_text(), json.dumps(summary()), sep="\n")


if __name__ == "__main__":
    main(sys.argv[1:])
