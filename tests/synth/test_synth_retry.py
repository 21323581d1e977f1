"""Each task reaches its quota within a bounded retry budget, or the run says which task fell short, why."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from synth_fakes import scripted_answer
from typer.testing import CliRunner

from selfctx.cli import app
from selfctx.errors import SelfctxError
from selfctx.llm.base import ChatRequest
from selfctx.llm.echo import EchoLLM
from selfctx.synth.pipeline import SynthConfig, run_synth

CFG = SynthConfig(tokenizer="regex", per_task=2, length="2k", seed=5)


def rows(out: Path) -> list[dict]:
    return [
        json.loads(line)
        for shard in sorted((out / "data").glob("train-*.jsonl"))
        for line in shard.read_text().splitlines()
        if line.strip()
    ]


def _detail_refused_unless(keep: int) -> EchoLLM:
    """Multi-doc QA's detail call is refused unless its seed is 0 mod `keep`: about one item in `keep`
    passes, decided by the item's own seed (so outcomes do not depend on batching)."""

    def answer(request: ChatRequest) -> str:
        if "Name one key detail" in request.messages[-1].content and request.sampling.seed % keep:
            return "I'm sorry, I cannot help with that."
        return scripted_answer(request)

    return EchoLLM(answer, model_id="picky")


def test_a_short_task_gets_one_bounded_retry_round_and_reaches_its_quota(tmp_path: Path) -> None:
    cfg = replace(CFG, tasks=("multiqa", "qa"), max_attempts_per_sample=1)
    # Without retries the first round (per_task x 1 = 2 items) leaves multi-doc QA short ...
    short = run_synth(replace(cfg, retry_per_missing=0), tmp_path / "none", llm=_detail_refused_unless(3))
    first = short["stages"]["tasks"]["multiqa"]
    assert first["kept"] < 2 and first["attempted"] == 2 and first["retries"] == 0
    assert first["dropped"]["refusal"] == 2 - first["kept"]
    # ... with them it gets (missing x retry_per_missing) more items with new seeds and reaches it.
    full = run_synth(replace(cfg, retry_per_missing=8), tmp_path / "retry", llm=_detail_refused_unless(3))
    task = full["stages"]["tasks"]["multiqa"]
    assert task["kept"] == 2 and task["retries"] == (2 - first["kept"]) * 8
    assert 2 < task["attempted"] <= 2 + task["retries"]
    assert full["shortfalls"] == {} and full["stages"]["tasks"]["qa"]["retries"] == 0
    # The samples kept in the first round are still kept (items depend only on their seed), and the retry
    # round does not depend on how the scheduler batches the items.
    seeds = [r["seed"] for r in rows(tmp_path / "retry") if r["task"] == "multiqa"]
    assert {r["seed"] for r in rows(tmp_path / "none") if r["task"] == "multiqa"} <= set(seeds)
    one = run_synth(
        replace(cfg, retry_per_missing=8, max_in_flight=1), tmp_path / "one", llm=_detail_refused_unless(3)
    )
    assert one["stages"]["tasks"] == full["stages"]["tasks"] and rows(tmp_path / "one") == rows(
        tmp_path / "retry"
    )


def test_a_task_short_after_its_budget_is_named_on_stderr_and_in_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(request: ChatRequest) -> str:
        if "Name one key detail" in request.messages[-1].content:
            return "I'm sorry, I cannot help with that."
        return scripted_answer(request)

    cfg = replace(CFG, tasks=("qa", "multiqa"), max_attempts_per_sample=2, retry_per_missing=3)
    summary = run_synth(cfg, tmp_path, llm=EchoLLM(never, model_id="never"))
    task = summary["stages"]["tasks"]["multiqa"]
    # The budget is bounded: 2 x 2 first-round items, then 3 per missing sample, no more.
    assert task["kept"] == 0 and task["attempted"] == 2 * 2 + 2 * 3 == 10 and task["retries"] == 6
    assert task["drop_details"] == {"refusal": 10}
    line = (
        "task multiqa fell short: kept 0 of 2 after 10 tries, 6 of them retries; main drops: refusal 10 "
        f"(more tries: delete {tmp_path / 'state' / 'multiqa'}.* and rerun with --set retry_per_missing=N)"
    )
    assert summary["shortfalls"] == {"multiqa": line}
    assert summary["stages"]["tasks"]["qa"]["kept"] == 2
    assert json.loads((tmp_path / "summary.json").read_text())["shortfalls"] == {"multiqa": line}
    assert "task multiqa fell short" in (tmp_path / "README.md").read_text()
    # A rerun resumes from the done-markers and says it again.
    again = run_synth(cfg, tmp_path, llm=EchoLLM(never, model_id="never"))
    assert again["shortfalls"] == {"multiqa": line}
    # The command ends by saying it: after its summary, the last line on stderr.
    monkeypatch.setattr("selfctx.synth.pipeline.run_synth", lambda *args, **kwargs: again)
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "kept 0/2" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == f"selfctx synth: {line}"


def test_retry_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SelfctxError, match="retry_per_missing"):
        run_synth(replace(CFG, retry_per_missing=-1), tmp_path, llm=EchoLLM(scripted_answer))
    assert not (tmp_path / "pool").exists()
