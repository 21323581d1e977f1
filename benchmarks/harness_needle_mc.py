"""Needle retrieval as multiple choice (`selfctx.eval.needle_mc`), scored by lm-evaluation-harness through
`selfctx.eval.harness`.

Generation-scored needles give 0 or 100 per cell; ranking the right magic number against three others by
log-likelihood gives a graded signal (chance = 25%) of whether a method carries the fact at all.

    python benchmarks/harness_needle_mc.py --haystack ../shared/data/paul_graham_essays \\
        --out runs/harness-mc --length 4000 --items 20 --native-context 8192 --ratio 8 \\
        --experts synth=runs/experts-cpu-synth/experts --experts nosynth=runs/experts-cpu-nosynth/experts \\
        --experts clone=runs/experts-cpu-clone/experts --untrained --full --truncate 1024

One loaded base model; each method is a `SelfctxLM` over it (full = ratio 1: the whole context read raw;
truncate-N = ratio 1 over the context's first and last halves of N minus the answer budget; the untrained
expert uses --untrained-sink / --untrained-memory-input, so it can share the trained experts' mechanism).
Results go to OUT/results.json and OUT/results.md; each method's lm-eval output to OUT/<method>/. A method
whose results.json exists is skipped, so a stopped run resumes. `--prior FILE` (repeatable; a results.json of
an earlier folder on the same items, or one method's) adds rows scored before, so new methods pair with them
(benchmarks/paired_mc.py); a prior row scored on other items is refused (told by the items file's sha256,
which rows record; older rows only by their depths).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

TASK = "selfctx_needle_mc"


def write_task(args: argparse.Namespace, tokenizer: Any, folder: Path) -> None:
    """Items as a local jsonl plus the lm-eval task YAML that reads it (no hub access)."""
    from selfctx.eval.needle import load_haystack
    from selfctx.eval.needle_mc import make_items, write_items

    items = make_items(tokenizer, load_haystack(args.haystack), args.length, args.items, args.seed)
    data = folder / "items.jsonl"
    write_items(data, items)
    (folder / "task.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data.resolve()}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}\\n\\nQuestion: {{question}}\\nAnswer:"\n'
        "doc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8",
    )


def compressed_lms(args: argparse.Namespace, model: Any, tokenizer: Any) -> dict[str, Any]:
    """`experts-<name>-r<ratio>` (each --experts battery) and `untrained-r<ratio>` over one loaded model."""
    from selfctx.compress import CompressedLM

    out: dict[str, Any] = {}
    for spec in args.experts:
        name, _, folder = spec.partition("=")
        out[f"experts-{name}-r{args.ratio}"] = CompressedLM.from_pretrained(
            model, experts=folder, native_context=args.native_context, tokenizer=tokenizer
        )
    if args.untrained:
        out[f"untrained-r{args.ratio}"] = CompressedLM.from_pretrained(
            model,
            ratios=(args.ratio,),
            window=args.window,
            native_context=args.native_context,
            tokenizer=tokenizer,
            sink=args.untrained_sink,
            memory_input=args.untrained_memory_input,
        )
    return out


def items_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def add_prior_rows(out: Path, priors: list[Path]) -> None:
    """Earlier methods' rows on these items into OUT/<method>/results.json (never over an existing one)."""
    items_file = out / "task" / "items.jsonl"
    items = [json.loads(line) for line in items_file.read_text().splitlines() if line]
    digest = items_sha256(items_file)
    depths = [round(float(item["depth"]), 6) for item in items]
    for prior in priors:
        data = json.loads(prior.read_text())
        rows = [data] if "per_item" in data else list(data.values())
        for row in rows:
            # rows written before items_sha256 was recorded can only be checked by their depths
            other_items = row.get("items_sha256", digest) != digest
            if other_items or [round(float(r["depth"]), 6) for r in row["per_item"]] != depths:
                where = f"{prior} ({row['method']})"
                raise SystemExit(f"error: {where} scored other items than {out}/task: drop that --prior")
            target = out / row["method"] / "results.json"
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(row, indent=1), encoding="utf-8")


def methods(args: argparse.Namespace, model: Any, tokenizer: Any) -> dict[str, Any]:
    """name -> (CompressedLM, forced ratio, truncation); `full` and `truncate-N` read the first battery's
    model at ratio 1 (nothing compressed)."""
    lms = compressed_lms(args, model, tokenizer)
    out: dict[str, Any] = {}
    if args.full and lms:
        out["full"] = (next(iter(lms.values())), 1, None)
    if args.truncate and lms:
        out[f"truncate-{args.truncate}"] = (next(iter(lms.values())), 1, args.truncate)
    out.update({name: (lm, args.ratio, None) for name, lm in lms.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--haystack", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--length", type=int, default=4000)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratio", type=int, default=8)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--native-context", type=int, default=8192)
    parser.add_argument("--experts", action="append", default=[], help="NAME=DIR (repeatable)")
    parser.add_argument("--untrained", action="store_true")
    parser.add_argument("--full", action="store_true", help="ratio 1 over the same model")
    parser.add_argument("--truncate", type=int, default=0, help="also the truncation baseline at N tokens")
    parser.add_argument("--untrained-sink", type=int, default=0)
    parser.add_argument("--untrained-memory-input", default="shared", choices=["shared", "span_last"])
    parser.add_argument("--prior", type=Path, action="append", default=[], help="earlier results.json")
    args = parser.parse_args()
    for prior in args.prior:
        if not prior.is_file():
            raise SystemExit(f"error: --prior {prior} is not a file: give an earlier folder's results.json")

    import lm_eval
    from lm_eval.tasks import TaskManager

    from selfctx.eval.harness import SelfctxLM
    from selfctx.models import load_causal_lm

    model, tokenizer = load_causal_lm(args.model, dtype="float32")
    task_dir = args.out / "task"
    if not (task_dir / "task.yaml").is_file():
        write_task(args, tokenizer, task_dir)
    add_prior_rows(args.out, args.prior)
    digest = items_sha256(task_dir / "items.jsonl")
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    summary: dict[str, Any] = {}
    for name, (lm, ratio, truncate) in methods(args, model, tokenizer).items():
        folder = args.out / name
        if (folder / "results.json").is_file():
            summary[name] = json.loads((folder / "results.json").read_text())
            continue
        started = time.perf_counter()
        harness = SelfctxLM(lm=lm, ratio=ratio, truncate=truncate)
        out = lm_eval.simple_evaluate(model=harness, tasks=[TASK], task_manager=manager, log_samples=True)
        assert out is not None
        per_item = [{"depth": s["doc"]["depth"], "correct": bool(s["acc"])} for s in out["samples"][TASK]]
        result = {
            "method": name,
            "ratio": ratio,
            "acc": out["results"][TASK]["acc,none"],
            "acc_stderr": out["results"][TASK]["acc_stderr,none"],
            "items": len(per_item),
            "items_sha256": digest,
            "seconds": round(time.perf_counter() - started, 1),
            "per_item": per_item,
        }
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        summary[name] = result
        accuracy = f"acc {result['acc']:.3f} ± {result['acc_stderr']:.3f}"
        print(f"{name}: {accuracy} ({result['seconds']} s)", flush=True)
    for path in sorted(args.out.glob("*/results.json")):  # rows of earlier calls and --prior ones too
        summary.setdefault(path.parent.name, json.loads(path.read_text()))
    lines = [
        "| method | ratio | accuracy (%) | ± stderr | items | seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in summary.items():
        lines.append(
            f"| {name} | {r['ratio']} | {100 * r['acc']:.1f} | {100 * r['acc_stderr']:.1f} | {r['items']} "
            f"| {r['seconds']} |"
        )
    (args.out / "results.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    (args.out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
