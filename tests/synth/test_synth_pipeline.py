"""The synth pipeline end to end on a scripted fake model: six tasks, filters, seeds, resume, errors."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from synth_fakes import scripted_answer, scripted_llm

from selfctx.errors import SelfctxError
from selfctx.llm.base import LLM, ChatRequest, Completion
from selfctx.llm.cache import CachedLLM
from selfctx.llm.echo import EchoLLM
from selfctx.synth.lengths import tolerance_window
from selfctx.synth.pipeline import SynthConfig, run_synth
from selfctx.synth.tasks import TASKS

CFG = SynthConfig(tokenizer="regex", per_task=2, length="2k", seed=5)


def rows(out: Path) -> list[dict]:
    lines = []
    for shard in sorted((out / "data").glob("train-*.jsonl")):
        lines += [json.loads(line) for line in shard.read_text().splitlines() if line.strip()]
    return lines


def passages_in(user: str) -> dict[int, str]:
    parts = re.split(r"(?:^|\n\n)Passage (\d+):\n", user)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


class BatchLimited(LLM):
    """Hands requests to `inner` in chunks of `size`, reporting `size` as its preferred batch."""

    def __init__(self, inner: LLM, size: int) -> None:
        super().__init__()
        self.inner, self.size, self.model_id = inner, size, inner.model_id
        self.batch_sizes: list[int] = []

    @property
    def preferred_batch_size(self) -> int:
        return self.size

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        self.batch_sizes.append(len(requests))
        out: list[Completion] = []
        for i in range(0, len(requests), self.size):
            out += self.inner.generate(requests[i : i + self.size])
        return out


def test_all_six_tasks_build_valid_samples(tmp_path: Path) -> None:
    import datasets

    summary = run_synth(CFG, tmp_path, llm=scripted_llm())
    data = rows(tmp_path)
    assert sorted({r["task"] for r in data}) == sorted(TASKS)
    assert all(sum(r["task"] == t for r in data) == 2 for t in TASKS)
    assert summary["samples"] == 12
    for r in data:
        lo, hi = tolerance_window(r["target_tokens"], r["bucket"])
        assert lo <= r["token_count"] <= hi
        user, answer = r["messages"][0]["content"], r["messages"][1]["content"]
        assert answer.strip() and "{gold[" not in user + answer
        context = passages_in(user)
        assert len(context) == r["n_distractors"] + len(r["gold_positions"])
        assert all(1 <= g <= len(context) for g in r["gold_positions"])
        # Distractors never share a relevant noun.
        extra = json.loads(r["extra"])
        assert extra["item_index"] >= 0
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "data" / "*.jsonl"), split="train")
    assert len(ds) == 12 and set(ds.column_names) >= {"messages", "task", "bucket", "token_count", "seed"}
    for name in ("README.md", "length_histogram.png", "config.yaml", "manifest.json", "summary.json"):
        assert (tmp_path / name).is_file(), name


def test_summarization_names_gold_passages_and_qa_is_grounded(tmp_path: Path) -> None:
    run_synth(CFG, tmp_path, llm=scripted_llm())
    for r in rows(tmp_path):
        context = passages_in(r["messages"][0]["content"])
        if r["task"] == "summarization":
            for g in r["gold_positions"]:
                assert f"passage {g} (about" in r["messages"][0]["content"]
                assert f"Passage {g} (" in r["messages"][1]["content"]
        if r["task"] == "qa":
            (g,) = r["gold_positions"]
            words = set(re.findall(r"\w+", context[g].lower()))
            assert set(re.findall(r"\w+", r["messages"][1]["content"].lower())) <= words
        if r["task"] == "logic":
            gold_text = " ".join(context[g] for g in r["gold_positions"])
            for fact in json.loads(r["extra"])["facts"]:
                assert fact in gold_text


def _program(row: dict) -> dict[str, tuple[str, list[str]]]:
    """result variable -> (function, argument variables), read from the code pieces in the context."""
    context = passages_in(row["messages"][0]["content"].split("\n\nThe passages are pieces")[0])
    calls: dict[str, tuple[str, list[str]]] = {}
    for g in row["gold_positions"]:
        for node in ast.parse(context[g]).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                target = node.targets[0]
                assert isinstance(target, ast.Name) and isinstance(node.value.func, ast.Name)
                calls[target.id] = (
                    node.value.func.id,
                    [a.id for a in node.value.args if isinstance(a, ast.Name)],
                )
    return calls


def test_code_answers_match_the_recorded_call_tree(tmp_path: Path) -> None:
    cfg = SynthConfig(tokenizer="regex", per_task=12, length="2k", seed=11, tasks=("code",))
    run_synth(cfg, tmp_path, llm=scripted_llm())
    kinds = set()
    for r in rows(tmp_path):
        extra = json.loads(r["extra"])
        kind, question, answer = (
            extra["question_kind"],
            r["messages"][0]["content"],
            r["messages"][1]["content"],
        )
        kinds.add(kind)
        calls = _program(r)  # re-derived from the context, independently of the recorded tree
        var = re.findall(r"\b(result_\d+)\b", question.rsplit("\n\n", 1)[-1])
        if kind == "produced_by":
            assert answer == calls[var[0]][0]
        elif kind == "participants":
            seen, stack = set(), list(calls[var[0]][1])
            while stack:
                v = stack.pop()
                if v not in seen:
                    seen.add(v)
                    stack += calls.get(v, ("", []))[1]
            assert set(answer.split(", ")) == seen
        elif kind == "init":
            name = re.search(r"variable (\w+) initialized", question).group(1)
            assert re.match(rf"^(?:.*\b{name}\b.*)=", answer) and answer in question
        assert extra["answer_source"] == ("model" if kind == "summarize" else "call_tree")
    assert {"produced_by", "participants"} <= kinds


def test_filters_count_their_drops(tmp_path: Path) -> None:
    def flaky(request: ChatRequest) -> str:
        prompt = request.messages[-1].content
        if "Write one specific question" in prompt:
            bucket = request.sampling.seed % 4
            if bucket == 0:
                return "I'm sorry, but as an AI I cannot do that."
            if bucket == 1:
                return "Here is a question without the format."
        if "Answer the question in one short sentence" in prompt and request.sampling.seed % 4 == 2:
            return "Zorblax quintessence flumes."
        if prompt.startswith("Write ") and request.sampling.seed % 5 == 0 and "about" in prompt:
            return "Too short."
        return scripted_answer(request)

    llm = EchoLLM(flaky, model_id="flaky")
    cfg = SynthConfig(
        tokenizer="regex", per_task=3, length="2k", seed=2, tasks=("qa",), max_attempts_per_sample=10
    )
    summary = run_synth(cfg, tmp_path, llm=llm)
    qa_prompts = [r for r in llm.calls if "Write one specific question" in r.messages[-1].content]
    answer_prompts = [r for r in llm.calls if "Answer the question in one short" in r.messages[-1].content]
    expected = {
        "refusal": sum(r.sampling.seed % 4 == 0 for r in qa_prompts),
        "malformed": sum(r.sampling.seed % 4 == 1 for r in qa_prompts),
        "ungrounded": sum(r.sampling.seed % 4 == 2 for r in answer_prompts),
    }
    dropped = summary["stages"]["tasks"]["qa"]["dropped"]
    assert {k: dropped[k] for k in expected} == expected
    assert sum(expected.values()) > 0
    pool_short = sum(
        1 for r in llm.calls if r.messages[-1].content.startswith("Write ") and r.sampling.seed % 5 == 0
    )
    assert summary["stages"]["pool"]["dropped"]["too_short"] == pool_short > 0
    assert summary["dropped_by_filter"]["refusal"] >= expected["refusal"]
    passing = sum(r.sampling.seed % 4 != 2 for r in answer_prompts)
    assert summary["stages"]["tasks"]["qa"]["kept"] == min(3, passing) == 3
    assert "| refusal |" in (tmp_path / "README.md").read_text()


def test_duplicate_passages_are_counted_and_dropped(tmp_path: Path) -> None:
    def repetitive(request: ChatRequest) -> str:
        prompt = request.messages[-1].content
        if prompt.startswith("Write ") and request.sampling.seed % 3 == 0:
            return "The same passage again. " * 12
        return scripted_answer(request)

    summary = run_synth(
        SynthConfig(tokenizer="regex", per_task=1, length="2k", tasks=("qa",)),
        tmp_path,
        llm=EchoLLM(repetitive),
    )
    pool = summary["stages"]["pool"]
    texts = [
        json.loads(x)["text"]
        for f in sorted((tmp_path / "pool").glob("*.jsonl"))
        for x in f.read_text().splitlines()
    ]
    assert len(texts) == len(set(texts)) == pool["passages"]
    assert pool["dropped"]["duplicate"] >= 1


def test_output_does_not_depend_on_batch_size(tmp_path: Path) -> None:
    small = BatchLimited(scripted_llm(), 1)
    large = BatchLimited(scripted_llm(), 64)
    run_synth(replace(CFG, max_in_flight=1), tmp_path / "small", llm=small)
    run_synth(replace(CFG, max_in_flight=200), tmp_path / "large", llm=large)
    assert max(small.batch_sizes) <= 3 < 16 <= max(large.batch_sizes)
    assert rows(tmp_path / "small") == rows(tmp_path / "large")
    # Per-sample seeds: samples do not share one shuffle pattern.
    golds = {tuple(r["gold_positions"]) for r in rows(tmp_path / "small") if r["task"] == "qa"}
    seeds = {r["seed"] for r in rows(tmp_path / "small")}
    assert len(seeds) == 12 and len(golds) >= 1


def test_scheduler_keeps_the_backend_batches_full(tmp_path: Path) -> None:
    llm = BatchLimited(scripted_llm(), 8)
    run_synth(SynthConfig(tokenizer="regex", per_task=4, length="2k"), tmp_path, llm=llm)
    full = [b for b in llm.batch_sizes if b >= 8]
    assert len(full) >= 0.6 * len(llm.batch_sizes), llm.batch_sizes


def test_rerun_replays_from_cache_and_is_identical(tmp_path: Path) -> None:
    first = CachedLLM(scripted_llm(), tmp_path / "a" / "cache")
    run_synth(CFG, tmp_path / "a", llm=first)
    first.close()
    # Drop two tasks' finished shards: the rerun must rebuild them from cached calls alone.
    for task in ("code", "simdiff"):
        (tmp_path / "a" / "state" / f"{task}.json").unlink()
    before = rows(tmp_path / "a")
    inner = scripted_llm()
    again = CachedLLM(inner, tmp_path / "a" / "cache")
    summary = run_synth(CFG, tmp_path / "a", llm=again)
    again.close()
    assert inner.calls == []  # nothing regenerated
    assert summary["cached_calls_this_run"] > 0
    assert rows(tmp_path / "a") == before


def test_a_range_starting_below_a_samples_passages_still_builds_it(tmp_path: Path) -> None:
    # a summarization sample's relevant passages alone outgrow the low end of the range: its target is
    # drawn from the part of the range that holds them (this used to stop the whole run with an error)
    cfg = SynthConfig(tokenizer="regex", per_task=3, uniform="64-400", tasks=("summarization",))
    run_synth(cfg, tmp_path, llm=scripted_llm())
    data = rows(tmp_path)
    assert len(data) == 3
    for r in data:
        lo, hi = tolerance_window(r["target_tokens"], r["bucket"])
        assert 64 <= r["target_tokens"] <= 400 and lo <= r["token_count"] <= hi
    assert min(r["target_tokens"] for r in data) > 200  # each at least its own minimum (238-285 here)


def test_impossible_length_is_a_clear_error(tmp_path: Path) -> None:
    cfg = SynthConfig(tokenizer="regex", per_task=1, length="2k", tasks=("qa",))
    run_synth(cfg, tmp_path / "a", llm=scripted_llm())
    # Reusing that small pool without growing it, for a sample far longer than the pool: error at once.
    big = SynthConfig(
        tokenizer="regex",
        per_task=1,
        length="1m",
        tasks=("qa",),
        pool=str(tmp_path / "a" / "pool"),
        grow_pool=False,
    )
    with pytest.raises(SelfctxError, match="pool|distractor"):
        run_synth(big, tmp_path / "b", llm=scripted_llm())
    with pytest.raises(SelfctxError, match="unknown task"):
        run_synth(SynthConfig(tokenizer="regex", tasks=("poetry",)), tmp_path / "c", llm=scripted_llm())
    with pytest.raises(SelfctxError, match="exactly one"):
        run_synth(
            SynthConfig(tokenizer="regex", length="2k", bucket="8k-16k"), tmp_path / "d", llm=scripted_llm()
        )


def test_multiqa_falls_back_to_a_stated_detail_when_the_reply_is_a_sentence(tmp_path: Path) -> None:
    """SmolLM2-135M answers "name one key detail" with a sentence and opens questions with a greeting: the
    builder takes a number/name the passage states and the first question in the reply."""

    def chatty(request: ChatRequest) -> str:
        prompt = request.messages[-1].content
        if "Name one key detail" in prompt:
            return "This passage is a concise and evocative example of how a writer captures a whole scene."
        if "Write only the question." in prompt:
            return "Dear reader,\n" + scripted_answer(request)
        return scripted_answer(request)

    cfg = replace(CFG, tasks=("multiqa",))
    run_synth(cfg, tmp_path, llm=EchoLLM(chatty, model_id="chatty"))  # type: ignore[arg-type]
    data = rows(tmp_path)
    assert len(data) == 2
    for r in data:
        extra = json.loads(r["extra"])
        assert extra["detail_source"] == "passage"
        detail = extra["shared_detail"]
        context = passages_in(r["messages"][0]["content"])
        gold = [context[g] for g in r["gold_positions"]]
        assert all(detail in passage for passage in gold)  # the link is in both relevant passages
        user = r["messages"][0]["content"]
        assert "Dear reader" not in user and user.rstrip().endswith("?")  # the question, not the greeting


def test_multiqa_bridges_a_second_passage_that_leaves_the_detail_out(tmp_path: Path) -> None:
    """SmolLM2-135M often leaves "Mention X." out of a 120-word passage: the model then writes one sentence
    about the second noun that mentions X, inserted into the passage, so the link is in both passages; a
    bridge sentence without X drops the item as ungrounded."""

    def forgetful(request: ChatRequest) -> str:
        prompt = request.messages[-1].content
        if " Mention " in prompt:  # the second passage, written without its detail
            detail = prompt.split(" Mention ")[1].split(".")[0].lower()
            text = scripted_answer(ChatRequest.user(prompt.split(" Mention ")[0] + ".", request.sampling))
            return " ".join(s for s in re.split(r"(?<=\.) ", text) if detail not in s.lower())
        return scripted_answer(request)

    run_synth(replace(CFG, tasks=("multiqa",)), tmp_path / "ok", llm=EchoLLM(forgetful, model_id="f"))
    data = rows(tmp_path / "ok")
    assert len(data) == 2
    for r in data:
        extra = json.loads(r["extra"])
        assert extra["bridge_inserted"] is True
        context = passages_in(r["messages"][0]["content"])
        gold = [context[g] for g in r["gold_positions"]]
        assert all(extra["shared_detail"] in passage for passage in gold)
        assert "was once compared with " + extra["shared_detail"] in gold[1] + gold[0]

    def no_bridge(request: ChatRequest) -> str:
        if request.messages[-1].content.startswith("Write one sentence about"):
            return "It is a fine thing that many people like very much."
        return forgetful(request)

    cfg = replace(CFG, tasks=("multiqa",), per_task=1, max_attempts_per_sample=2, retry_per_missing=0)
    summary = run_synth(cfg, tmp_path / "bad", llm=EchoLLM(no_bridge, model_id="b"))
    task = summary["stages"]["tasks"]["multiqa"]
    assert task["kept"] == 0 and task["drop_details"] == {"ungrounded (passage 2 lacks the shared detail)": 2}
    assert "multiqa" in summary["shortfalls"]


def test_multiqa_detail_falls_back_to_the_passage_noun() -> None:
    from selfctx.synth.tasks.base import TaskContext
    from selfctx.synth.tasks.multiqa import mentions, pick_detail
    from selfctx.synth.tokens import RegexTokenCounter
    from selfctx.synth.types import Passage

    text = "the copper lantern hung in the old harbor.\n1. it was lit every night.\n2. it burned oil."
    passage = Passage("p", "copper lantern", "essay", text, 20)
    ctx = TaskContext("multiqa", 0, 1, [passage], RegexTokenCounter())
    reply = "This passage is a lovely and evocative description of a quiet evening by the sea."
    assert pick_detail(reply, passage, ctx) == ("copper lantern", "noun")  # list markers are no details
    assert pick_detail('Name: "harbor"', passage, ctx) == ("harbor", "model")
    assert pick_detail(reply, replace(passage, noun="brass bell"), ctx) is None
    assert mentions("The UK is far.", "UK's Scotland")  # half of the words; not the "s" of "UK's"
    assert not mentions("Everyone's friend was there.", "UK's Scotland")
    assert not mentions("A lake.", "Lake Tana Basin") and mentions("Lake Tana.", "Lake Tana Basin")
