"""Held-out synthetic checks: items, placement among pool passages, scoring, resume, report, CLI (fast)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from selfctx.cli import app
from selfctx.errors import SelfctxError
from selfctx.eval import synthetic as sy
from selfctx.eval.methods import HFMethod, Prediction, Request
from selfctx.eval.report import build_report
from selfctx.synth.nouns import writable_nouns
from selfctx.synth.types import Passage


def _pool(n: int = 40) -> list[Passage]:
    return [
        Passage(
            id=f"d{i}",
            noun=f"pool noun {i}",
            genre="encyclopedia",
            text=" ".join(f"Sentence {j} of passage {i} talks about the weather." for j in range(6)),
            n_tokens=0,  # recounted under the method's tokenizer
        )
        for i in range(n)
    ]


def _write_pool(folder: Path, passages: list[Passage]) -> Path:
    folder.mkdir(parents=True)
    with (folder / "passages-00000.jsonl").open("w") as f:
        for p in passages:
            f.write(json.dumps(p.to_json()) + "\n")
    (folder / "passages-00000.done.json").write_text("{}")
    return folder


class OracleMethod:
    """Answers from the context like a perfect reader (or a fixed wrong reader), and records requests."""

    name = "oracle"

    def __init__(self, tokenizer, *, wrong: bool = False) -> None:  # type: ignore[no-untyped-def]
        self._tokenizer = tokenizer
        self.wrong = wrong
        self.requests: list[Request] = []

    @property
    def tokenizer(self):  # type: ignore[no-untyped-def]
        return self._tokenizer

    def input_limit(self, max_new_tokens: int) -> int | None:
        return None

    def memory_bytes(self, n_tokens: int) -> int:
        return 10 * n_tokens

    def _answer(self, head: str, tail: str) -> str:
        question = re.search(r"Question: (.*)", tail)
        assert question, tail
        q = question.group(1)
        if m := re.match(r"What is the secret code of the (.+)\?", q):
            noun = m.group(1)
            for _ in range(10):  # follow the chain through the context
                if value := re.search(rf"The secret code of the {re.escape(noun)} is (\d+)\.", head):
                    return value.group(1)
                same = "is the same as the secret code of the"
                link = re.search(rf"The secret code of the {re.escape(noun)} {same} (.+?)\.", head)
                assert link, noun
                noun = link.group(1)
        if m := re.match(r"Under which number is the (.+) filed\?", q):
            return re.findall(rf"the {re.escape(m.group(1))} is filed under number (\d+)", head)[0]
        if m := re.match(r"In which city is the (.+) kept now\?", q):
            return re.findall(rf"the {re.escape(m.group(1))} was moved to (\w+)", head)[-1]
        if m := re.match(r"In which city was the (.+) first exhibited\?", q):
            return re.findall(rf"The {re.escape(m.group(1))} was first exhibited in (\w+)", head)[0]
        raise AssertionError(q)

    def generate(self, requests: list[Request]) -> list[Prediction]:
        self.requests += requests
        out = []
        for r in requests:
            text = "I do not know." if self.wrong else self._answer(r.head, r.tail) + "."
            n = len(self._tokenizer(r.head + r.tail, add_special_tokens=False)["input_ids"])
            out.append(Prediction(text=text, input_tokens=n, memory_bytes=self.memory_bytes(n)))
        return out


def test_items_are_exact_and_consistent() -> None:
    rng = random.Random(0)
    chain = sy.make_item("multi-hop", 0.3, rng, frozenset(), hops=3)
    assert len(chain.facts) == 8 and chain.roles.count("link") == 3 and chain.roles.count("decoy") == 4
    assert chain.depths[chain.roles.index("value")] == 0.3
    asked_chain = [d for d, r in zip(chain.depths, chain.roles, strict=True) if r in ("link", "value")]
    assert sorted(asked_chain) == pytest.approx([0.0, 0.3, 2 / 3, 1.0])  # spread, the number at the depth
    assert chain.expected == (chain.answer,) and chain.answer not in chain.wrong and len(chain.wrong) == 1
    assert chain.answer in chain.facts[chain.roles.index("value")]

    latest = sy.make_item("update-latest", 0.95, rng, frozenset())
    earliest = sy.make_item("update-earliest", 0.2, rng, frozenset())
    assert latest.depths == pytest.approx((0.8, 0.9)) and earliest.depths == pytest.approx(
        (0.2, 0.6)
    )  # the change always comes later
    assert latest.answer in latest.facts[1] and earliest.answer in earliest.facts[0]
    assert latest.wrong[0] in latest.facts[0] and earliest.wrong[0] in earliest.facts[1]

    kv = sy.make_item("kv-retrieval", 1.0, rng, frozenset(), records=5)
    assert kv.depths[0] == 1.0 and sorted(kv.depths) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len(set(kv.wrong) | {kv.answer}) == 5

    with pytest.raises(SelfctxError, match="unknown synthetic check"):
        sy.make_item("recall", 0.5, rng, frozenset())
    with pytest.raises(SelfctxError, match="between 0"):
        sy.make_item("consistency", 1.5, rng, frozenset())


def test_nouns_are_held_out(tmp_path: Path) -> None:
    allowed = ["zebra", "Yellow jacket", "violin"]
    exclude = frozenset(n.lower() for n in writable_nouns()) - {a.lower() for a in allowed}
    item = sy.make_item("kv-retrieval", 0.5, random.Random(3), exclude, records=3)
    assert sorted(n.lower() for n in item.fact_nouns) == sorted(a.lower() for a in allowed)

    dataset = tmp_path / "train"
    (dataset / "data").mkdir(parents=True)
    (dataset / "data" / "train-00000.jsonl").write_text(
        json.dumps({"messages": [], "nouns": ["Burglar", "skirt"]}) + "\n" + "not json\n"
    )
    _write_pool(dataset / "pool", [Passage("p0", "keratoplasty", "x", "Text.", 2)])
    assert sy.nouns_in(dataset) == {"burglar", "skirt", "keratoplasty"}
    with pytest.raises(SelfctxError, match="does not exist"):
        sy.nouns_in(tmp_path / "missing")


def test_placement_length_and_depth_on_the_tiny_tokenizer(tmp_path: Path, tiny_lm) -> None:
    _, tokenizer = tiny_lm  # one token per byte
    method = OracleMethod(tokenizer)
    summary = sy.run_synthetic_checks(
        method, pool=_pool(), out=tmp_path / "run", lengths=[2500], depths=[0.0, 0.5, 1.0], seed=1
    )
    rows = [json.loads(line) for line in (tmp_path / "run" / sy.ROWS_FILE).read_text().splitlines()]
    assert len(rows) == len(sy.CHECKS) * 3 == len(method.requests)
    for row, request in zip(rows, method.requests, strict=True):
        assert abs(row["token_count"] - 2500) <= 25  # +-1%, measured on the rendered chat sample
        step = 1 / (row["n_passages"] - 1)
        for fact, role, want, placed, gold in zip(
            row["facts"],
            row["roles"],
            row["requested_depths"],
            row["placed_depths"],
            row["gold_positions"],
            strict=True,
        ):
            # the nearest passage slot; decoys (random depths) give way to the asked chain
            slack = len(row["facts"]) if role == "decoy" else 1
            assert abs(placed - want) <= slack * step + 1e-9
            # fact i really is passage gold[i] of the context the method was given
            assert f"Passage {gold}:\n{fact}" in request.head
        assert row["question"] in request.tail and "Question:" not in request.head
        asked = {"multi-hop": "value", "kv-retrieval": "asked"}.get(row["check"])
        if asked:
            assert row["placed_depths"][row["roles"].index(asked)] == pytest.approx(row["depth"], abs=step)
        if row["check"].startswith("update"):
            assert row["gold_positions"][0] < row["gold_positions"][1]
        assert not set(row["nouns"]) & {p.noun for p in _pool()}
        assert row["score"] == row["exact"] == 1.0 and not row["confused"] and row["rouge_recall"] == 1.0
    assert summary["mean_score"] == 1.0 and summary["held_out"]["excluded_nouns"] == 40
    assert summary["memory_bytes_by_length"]["2500"] > 0
    assert (tmp_path / "run" / sy.PLOT_FILE).is_file()


def test_wrong_answers_score_zero_and_confusion_is_flagged(tmp_path: Path, tiny_lm) -> None:
    _, tokenizer = tiny_lm
    summary = sy.run_synthetic_checks(
        OracleMethod(tokenizer, wrong=True), pool=_pool(), out=tmp_path / "w", lengths=[1500], depths=[0.5]
    )
    assert summary["mean_score"] == 0.0 and summary["by_check"]["kv-retrieval"]["confused_rate"] == 0.0
    item = sy.make_item("update-latest", 0.5, random.Random(0), frozenset())
    stale = sy.score_answer(f"It is in {item.wrong[0]}.", item)
    assert stale["score"] == 0.0 and stale["confused"]
    both = sy.score_answer(f"{item.answer}, before that {item.wrong[0]}", item)
    assert both["score"] == 1.0 and both["confused"] and both["exact"] == 0.0


def test_resume_skips_done_cells_and_refuses_other_settings(tmp_path: Path, tiny_lm) -> None:
    _, tokenizer = tiny_lm
    pool_dir = _write_pool(tmp_path / "pool", _pool())
    kwargs = dict(
        pool=pool_dir, out=tmp_path / "r", lengths=[1500], depths=[0.2, 0.8], checks=["consistency"]
    )
    first = OracleMethod(tokenizer)
    sy.run_synthetic_checks(first, **kwargs)
    assert len(first.requests) == 2
    rows_path = tmp_path / "r" / sy.ROWS_FILE
    lines = rows_path.read_text().splitlines()
    rows_path.write_text(lines[0] + "\n" + lines[1][:20])  # a torn last line: that cell runs again
    again = OracleMethod(tokenizer)
    summary = sy.run_synthetic_checks(again, **kwargs)
    assert len(again.requests) == 1 and summary["mean_score"] == 1.0
    assert json.loads(rows_path.read_text().splitlines()[1])["cell"] == "consistency/1500/0.8/0"
    with pytest.raises(SelfctxError, match="other settings"):
        sy.run_synthetic_checks(OracleMethod(tokenizer), **{**kwargs, "seed": 7})
    with pytest.raises(SelfctxError, match="unknown synthetic check"):
        sy.run_synthetic_checks(OracleMethod(tokenizer), **{**kwargs, "checks": ["nope"]})
    with pytest.raises(SelfctxError, match="no finished passages"):
        sy.load_distractors(tmp_path / "r")


def test_tiny_model_end_to_end_and_report_merges_columns(tmp_path: Path, tiny_lm) -> None:
    from selfctx.eval.methods import describe
    from selfctx.eval.needle import NeedleGrid, run_needle
    from selfctx.eval.run_folder import bind_run

    model, tokenizer = tiny_lm
    method = HFMethod(model, tokenizer, name="full", limit=None)
    syn = tmp_path / "synthetic" / "full"
    bind_run(syn, {**describe(method), "benchmark": "synthetic"})
    summary = sy.run_synthetic_checks(
        method, pool=_pool(), out=syn, lengths=[1200], depths=[0.5], checks=["kv-retrieval"], max_new_tokens=3
    )
    row = json.loads((syn / sy.ROWS_FILE).read_text())
    assert row["memory_bytes"] == row["input_tokens"] * 2 * 2 * 2 * 16 * 4  # KV grows with the input
    assert 0.0 <= summary["mean_score"] <= 1.0
    needle = tmp_path / "needle" / "full"
    bind_run(needle, {**describe(method), "benchmark": "needle"})
    run_needle(method, " ".join(f"Line {i} is here." for i in range(200)), NeedleGrid((600,), (0.5,)), needle)
    report = build_report([needle, syn, tmp_path / "synthetic" / "full"], tmp_path / "report")
    assert [r["method"] for r in report["runs"]] == ["full", "full"]  # the same part twice: its own column
    report = build_report([needle, syn], tmp_path / "report")
    (run,) = report["runs"]
    assert "needle" in run and run["synthetic"]["by_check"]["kv-retrieval"]["by_length"]["1200"] is not None
    assert set(run["memory_bytes_by_length"]) == {"600", "1200"}
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Held-out synthetic checks" in text and "kv-retrieval @ 1200" in text
    assert "synthetic_vs_length.png" in report["files"]
    assert (tmp_path / "report" / "synthetic_vs_length.png").is_file()


def test_synthetic_verb(tmp_path: Path, tiny_lm) -> None:
    model, tokenizer = tiny_lm
    model_dir = tmp_path / "tiny-model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    pool_dir = _write_pool(tmp_path / "pool", _pool())
    train = tmp_path / "train"
    train.mkdir()
    (train / "rows.jsonl").write_text(json.dumps({"nouns": ["zebra"]}) + "\n")
    out = tmp_path / "syn"
    args = ["eval", "synthetic", "--pool", str(pool_dir), "--out", str(out), "--lengths", "1200"]
    args += ["--depths", "0.5", "--checks", "consistency", "--exclude-from", str(train)]
    args += ["--model", str(model_dir), "--dtype", "float32", "--device", "cpu", "--method", "full"]
    args += ["--max-new-tokens", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "full" / sy.SUMMARY_FILE).read_text())
    assert summary["held_out"]["excluded_nouns"] == 41 and summary["held_out"]["exclude_from"] == [str(train)]
    assert json.loads((out / "full" / "run.json").read_text())["benchmark"] == "synthetic"
    result = CliRunner().invoke(app, ["eval", "report", str(out / "full"), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0 and "consistency" in result.output
