"""The four stages of `selfctx extend`: synth -> train -> eval -> report, over the library APIs.

synth   OUT/synth: the passage pool and the task dataset written by the model itself (run_synth; resumes
        through its call cache)
train   OUT/train: one LoRA expert per planned ratio (run_experts; resumes from OUT/train/r<ratio>/
        checkpoints), then OUT/experts (the battery `selfctx serve --experts` and
        `CompressedLM.from_pretrained(model, experts=...)` load)
eval    OUT/eval: truncation to the native window vs the experts on a needle grid up to the target length
        (resumes cell by cell), plus the comparison report of selfctx.eval.report
report  OUT/REPORT.md
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from selfctx.errors import SelfctxError
from selfctx.extend.plan import Plan
from selfctx.extend.runner import Stage

EXPERTS = "experts"

# The frozen base model the train stage loaded, kept for the eval stage of the same process (one model load
# less per run: ~25 s for SmolLM2 on CPU). Keyed by (model, dtype); the battery is loaded from OUT/experts
# either way, so a reused model and a freshly loaded one give the same figures.
_TRAINED_BASE: dict[tuple[str, str], tuple[Any, Any]] = {}


def build_stages(plan: Plan, out: Path, *, command: str) -> list[Stage]:
    configs = plan.stage_configs()
    return [
        Stage(
            "synth", configs["synth"], lambda folder: synth_stage(plan, folder, command), keep_on_change=True
        ),
        Stage("train", configs["train"], lambda folder: train_stage(plan, folder, out)),
        Stage("eval", configs["eval"], lambda folder: eval_stage(plan, folder, out)),
        Stage("report", configs["report"], lambda folder: report_stage(plan, folder, out, command)),
    ]


def synth_stage(plan: Plan, folder: Path, command: str) -> dict[str, Any]:
    from selfctx.synth.pipeline import run_synth

    summary = run_synth(plan.synth, folder, command=command)
    pool = summary["stages"]["pool"]
    return {
        "samples": summary["samples"],
        "length": summary["length"],
        "pool_passages": pool["passages"],
        "pool_tokens": pool["tokens"],
        "tasks": {name: t["kept"] for name, t in summary["stages"]["tasks"].items()},
        "generated_tokens_per_s": summary["generated_tokens_per_s"],
        "backend": summary["backend"],
    }


def _synth_rows(folder: Path) -> int:
    return sum(
        1 for f in (folder / "data").glob("*.jsonl") for line in f.read_text().splitlines() if line.strip()
    )


def train_stage(plan: Plan, folder: Path, out: Path) -> dict[str, Any]:
    from dataclasses import replace

    from selfctx.train.experts import run_experts

    cfg = plan.experts
    if _synth_rows(out / "synth") == 0:  # the model wrote no usable sample: train on its passages alone
        sources = [s for s in cfg.data.sources if s.kind != "synth"]
        cfg = replace(cfg, data=replace(cfg.data, sources=sources))
    result = run_experts(cfg)
    if result.experts_dir is None:
        raise SelfctxError(f"training in {folder} stopped before its last step: rerun the same command")
    compressed: Any = result.compressed
    base = compressed.model
    _TRAINED_BASE.clear()
    _TRAINED_BASE[(plan.config.model, str(next(base.parameters()).dtype))] = (
        base,
        compressed.tokenizer,
    )
    _publish(result.experts_dir, out / EXPERTS)
    experts: dict[str, Any] = {}
    for name in sorted(os.listdir(folder)):
        log = folder / name / "train_log.jsonl"
        if log.is_file():
            rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
            losses = [r["loss"] for r in rows if "loss" in r]
            experts[name] = {
                "steps": rows[-1].get("step") if rows else 0,
                "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None,
            }
    return {
        "ratios": list(plan.ratios),
        "window": cfg.experts.window,
        "native_context": cfg.experts.native_context,
        "sources": [s.kind for s in cfg.data.sources],
        "experts_dir": str(out / EXPERTS),
        "experts": experts,
    }


def _publish(source: Path, target: Path) -> None:
    """Copy the trained battery to OUT/experts in one rename (a reader never sees a partial folder)."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def eval_stage(plan: Plan, folder: Path, out: Path) -> dict[str, Any]:
    from selfctx.compress import CompressedLM
    from selfctx.eval.methods import CompressedMethod, Method, describe
    from selfctx.eval.needle import NeedleGrid, load_haystack, run_needle
    from selfctx.eval.report import build_report
    from selfctx.eval.run_folder import bind_run

    ev = plan.config.eval
    model, tokenizer = load_base_for_eval(plan)
    compressed = CompressedLM.from_pretrained(model, experts=out / EXPERTS, tokenizer=tokenizer)
    methods: list[Method] = [
        baseline_method(plan, model, tokenizer),
        CompressedMethod(compressed, name=f"experts-x{'-'.join(map(str, plan.ratios))}"),
    ]
    grid = NeedleGrid(
        lengths=plan.needle_lengths,
        depths=tuple(ev.depths),
        variant=ev.variant,
        samples=ev.samples,
        max_new_tokens=ev.max_new_tokens,
    )
    haystack = load_haystack(out / "synth" / "pool")
    folders: list[Path] = []
    results: dict[str, Any] = {}
    for method in methods:
        run_dir = folder / "needle" / method.name
        haystack_path = str((out / "synth" / "pool").resolve())
        settings = {"benchmark": "needle", "haystack": haystack_path, "grid": asdict(grid)}
        bind_run(run_dir, {**describe(method), **settings})
        summary = run_needle(method, haystack, grid, run_dir)
        folders.append(run_dir)
        results[method.name] = {
            "mean_score": summary["mean_score"],
            "mean_rouge_recall": summary["mean_rouge_recall"],
            "score_by_length_depth": summary["score_by_length_depth"],
            "memory_bytes_by_length": summary["memory_bytes_by_length"],
        }
    synthetic = _held_out_synthetic(plan, methods, folder, out)
    synthetic_folders = [folder / "synthetic" / name for name in synthetic]
    built = build_report(folders + synthetic_folders, folder / "report")
    by_method = {
        run["method"]: {
            "effective_ratio": run["effective_ratio"],
            "mean_memory_bytes": run["mean_memory_bytes"],
        }
        for run in built["runs"]
    }
    for name, figures in by_method.items():
        results.setdefault(name, {}).update(figures)
    return {
        "baseline_backend": type(methods[0]).__name__,
        "needle": results,
        "grid": {"lengths": list(grid.lengths), "depths": list(grid.depths), "variant": grid.variant},
        "runs": [str(f.relative_to(out)) for f in folders],
        "held_out_synthetic": synthetic or None,
        "synthetic_runs": [str(f.relative_to(out)) for f in synthetic_folders],
    }


def _held_out_synthetic(plan: Plan, methods: list[Any], folder: Path, out: Path) -> dict[str, Any]:
    """The held-out synthetic checks for each method at the needle lengths (resumable, per method folder):
    facts about nouns that neither the synth stage's dataset nor its pool name, among the pool's passages."""
    from selfctx.eval.methods import describe
    from selfctx.eval.run_folder import bind_run
    from selfctx.eval.synthetic import run_synthetic_checks

    ev = plan.config.eval
    if not ev.synthetic_checks:
        return {}
    results: dict[str, Any] = {}
    for method in methods:
        run_dir = folder / "synthetic" / method.name
        lengths = list(ev.synthetic_lengths or plan.needle_lengths)
        grid = {
            "lengths": lengths,
            "depths": list(ev.synthetic_depths),
            "checks": list(ev.synthetic_checks),
            "samples": ev.samples,
            "exclude_from": [str((out / "synth").resolve())],
            "max_new_tokens": ev.max_new_tokens,
        }
        pool = str((out / "synth" / "pool").resolve())
        bind_run(run_dir, {**describe(method), "benchmark": "synthetic", "pool": pool, "grid": grid})
        summary = run_synthetic_checks(
            method,
            pool=out / "synth" / "pool",
            out=run_dir,
            lengths=lengths,
            depths=ev.synthetic_depths,
            checks=ev.synthetic_checks,
            samples=ev.samples,
            exclude_from=[out / "synth"],
            max_new_tokens=ev.max_new_tokens,
        )
        results[method.name] = {
            "mean_score": summary["mean_score"],
            "mean_exact": summary["mean_exact"],
            "by_check": {c: f["mean_score"] for c, f in summary["by_check"].items()},
            "score_by_length": summary["score_by_length"],
            "excluded_nouns": summary["held_out"]["excluded_nouns"],
        }
    return results


def baseline_method(plan: Plan, model: Any, tokenizer: Any) -> Any:
    """Truncation to the native window (capped), through transformers or llama.cpp (eval.baseline_backend)."""
    from selfctx.eval.methods import HFMethod, LlamaCppMethod
    from selfctx.extend.plan import baseline_gguf

    native = plan.native_context
    gguf = baseline_gguf(plan.config)
    if gguf is not None:
        return LlamaCppMethod(gguf, tokenizer, name=f"truncate-{native}", limit=native, n_ctx=native)
    return HFMethod(model, tokenizer, name=f"truncate-{native}", limit=native)


def load_base_for_eval(plan: Plan) -> tuple[Any, Any]:
    """The frozen base model the experts were trained on (the tiny test model is saved beside them); the
    train stage's own copy when this process trained it in the eval dtype."""
    import torch

    from selfctx.models import default_device, load_causal_lm, load_tokenizer, resolve_dtype, resolve_model

    name = plan.config.model
    spec = resolve_model(name)
    dtype = torch.float32 if spec.in_memory else resolve_dtype(plan.config.eval.dtype, default_device())
    reused = _TRAINED_BASE.pop((name, str(dtype)), None)
    _TRAINED_BASE.clear()
    if reused is not None and next(reused[0].parameters()).device.type == default_device():
        reused[0].eval()
        return reused
    if spec.in_memory:  # the copy the train stage saved: the experts were trained on those weights
        from transformers import AutoModelForCausalLM

        base = Path(plan.experts.loop.output_dir) / "base"
        return AutoModelForCausalLM.from_pretrained(str(base)), load_tokenizer(spec)
    return load_causal_lm(spec, dtype=plan.config.eval.dtype)


def report_stage(plan: Plan, folder: Path, out: Path, command: str) -> dict[str, Any]:
    from selfctx.extend.report import write_report

    path = write_report(plan, out, command)
    return {"report": str(path.relative_to(out))}
