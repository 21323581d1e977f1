"""train -> eval -> report of `selfctx extend` on the tiny random Llama (the synth stage is replaced by a
written passage pool: a random model writes no usable data). Checks REPORT.md, the published battery and
that `--from eval` reproduces the same figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfctx.extend.plan import load_extend_config, make_plan
from selfctx.extend.report import report_numbers
from selfctx.extend.runner import DONE, Stage, run_stages
from selfctx.extend.stages import build_stages

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _plan(out: Path):  # noqa: ANN202
    cfg = load_extend_config(
        "tiny",
        "smoke",
        target_length=800,
        overrides=[
            "min_ratio=4",
            "eval.answer_budget=160",
            "eval.prompt_margin=128",
            "eval.max_new_tokens=4",
            "eval.depths=[0.5]",
            "eval.baseline_backend=hf",
            "eval.synthetic_lengths=[800]",  # 6 key-value records need ~620 tiny-tokenizer tokens
            "experts.experts.window=32",
            "experts.experts.native_context=384",
            "experts.experts.group_tokens=512",
            "experts.data.min_tokens=16",
            "experts.data.max_tokens=320",
            "experts.loop.max_steps=1",
        ],
    )
    return make_plan(cfg, out)


def _fake_synth(folder: Path) -> dict:
    """A one-shard passage pool in the synth format (needle haystack and synthetic-check distractors)."""
    pool = folder / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "id": f"p{i}",
            "noun": f"lantern{i}",
            "genre": "story",
            "text": f"Passage {i}. The {i}th lantern hangs by the blue door. It is old. " * 4,
            "n_tokens": 80,
        }
        for i in range(8)
    ]
    (pool / "passages-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (pool / "passages-00000.done.json").write_text("{}")
    (folder / "data").mkdir(exist_ok=True)
    return {"samples": 0, "length": "-", "pool_passages": 8, "pool_tokens": 0, "tasks": {}}


def _stages(plan, out: Path) -> list[Stage]:  # noqa: ANN001
    stages = build_stages(plan, out, command=f"selfctx extend --model tiny --out {out}")
    return [Stage("synth", stages[0].config, _fake_synth), *stages[1:]]


def test_tiny_pipeline_writes_report_and_from_eval_reproduces_it(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    assert plan.ratios == (4, 8) and plan.needle_lengths == (400, 800)
    markers = run_stages(tmp_path, _stages(plan, tmp_path), log=lambda _: None)
    assert all((tmp_path / s / DONE).is_file() for s in ("synth", "train", "eval", "report"))
    needle = markers["eval"]["outputs"]["needle"]
    assert set(needle) == {"truncate-384", "experts-x4-8"}
    # the experts hold fewer KV entries than the tokens they read; truncation holds at most the window
    assert needle["experts-x4-8"]["effective_ratio"] > 1
    # the held-out synthetic checks ran for both methods at the needle lengths, one row per cell
    synthetic = markers["eval"]["outputs"]["held_out_synthetic"]
    assert set(synthetic) == {"truncate-384", "experts-x4-8"}
    for name, result in synthetic.items():
        assert set(result["by_check"]) == {"kv-retrieval"} and set(result["score_by_length"]) == {"800"}
        rows = (tmp_path / "eval" / "synthetic" / name / "synthetic.jsonl").read_text().splitlines()
        assert len(rows) == 1 and 0 <= result["mean_score"] <= 1
    report = (tmp_path / "REPORT.md").read_text()
    assert "| truncate-384 |" in report and "| experts-x4-8 |" in report
    assert "held-out synthetic checks" in report and "| method | kv-retrieval | 800 tok | mean |" in report
    assert "| train |" in report and "--from eval" in report and "heatmap.png" in report
    for run in markers["eval"]["outputs"]["runs"]:
        assert (tmp_path / run / "heatmap.png").is_file()
    for run in markers["eval"]["outputs"]["synthetic_runs"]:
        assert (tmp_path / run / "synthetic.png").is_file() and f"{run}/synthetic.png" in report
    numbers = report_numbers(tmp_path)
    assert json.loads((tmp_path / "report" / "report.json").read_text()) == numbers

    # --from eval: the eval folder is cleared and rerun; greedy decoding gives the same figures
    train_before = (tmp_path / "train" / DONE).read_text()
    again = run_stages(tmp_path, _stages(plan, tmp_path), from_stage="eval", log=lambda _: None)
    assert (tmp_path / "train" / DONE).read_text() == train_before
    assert again["eval"]["resumed"] is False
    assert report_numbers(tmp_path) == numbers
