"""LongBench runner: prompts, middle truncation, chat split, resumable predictions, scoring (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_files import write_longbench

from selfctx.errors import SelfctxError
from selfctx.eval import longbench as lb
from selfctx.eval.methods import HFMethod, Prediction, Request


def test_official_config_covers_the_16_english_datasets() -> None:
    from selfctx.eval.scoring import ENGLISH_DATASETS

    config = lb.official_config()
    assert set(ENGLISH_DATASETS) <= set(config["prompt"]) and set(ENGLISH_DATASETS) <= set(
        config["max_new_tokens"]
    )
    assert lb.max_new_tokens("gov_report") == 512 and lb.max_new_tokens("hotpotqa") == 32
    assert lb.max_new_tokens("samsum") == 128 and lb.max_new_tokens("lcc") == 64
    assert [d for d in ENGLISH_DATASETS if not lb.uses_chat_template(d)] == [
        "trec",
        "triviaqa",
        "samsum",
        "lcc",
        "repobench-p",
    ]
    assert (
        lb.prompt_template("lcc") == "Please complete the code given below. \n{context}Next line of code:\n"
    )
    # THUDM's main branch (what the published numbers used) spells narrativeqa's instruction without the
    # space, twice; a "corrected" prompt changes the scores
    narrativeqa = lb.prompt_template("narrativeqa")
    assert narrativeqa.count("asconcisely") == 2 and "as concisely" not in narrativeqa


def test_middle_truncate_keeps_both_ends(tiny_lm) -> None:
    _, tokenizer = tiny_lm  # one token per byte
    assert lb.middle_truncate(tokenizer, "abcdefghij", 10) == ("abcdefghij", 10)
    assert lb.middle_truncate(tokenizer, "abcdefghij", 4) == ("abij", 4)
    assert lb.middle_truncate(tokenizer, "abcdefghij", 5) == ("abij", 4)  # halves of int(5/2)


def test_build_request_splits_at_the_end_of_the_context(tiny_lm) -> None:
    _, tokenizer = tiny_lm
    row = {"context": "Passage 1: Paris is in France.", "input": "Where is Paris?"}
    built = lb.build_request("hotpotqa", row, tokenizer, 10_000)
    request = built.request
    assert request.head.startswith("<|im_start|>user\nAnswer the question")
    assert request.head.endswith("Passage 1: Paris is in France.")
    assert request.tail.startswith("\n\nAnswer the question based on the given passages.")
    assert request.tail.endswith("Question: Where is Paris?\nAnswer:<|im_end|>\n<|im_start|>assistant\n")
    assert request.max_new_tokens == 32 and not request.add_special_tokens and not built.truncated

    trec = lb.build_request(
        "trec", {"context": "Q: Who? Type: Human", "input": "What city?"}, tokenizer, 10_000
    )
    assert trec.request.head == (
        "Please determine the type of the question below. Here are some examples of "
        "questions.\n\nQ: Who? Type: Human"
    )
    assert trec.request.tail == "\nWhat city?"  # no chat template for trec
    assert lb.build_request("samsum", {"context": "x", "input": "y"}, tokenizer, 100).request.stop_at_newline


def test_truncation_cuts_the_middle_of_the_context(tiny_lm) -> None:
    _, tokenizer = tiny_lm
    row = {"context": "A" * 300 + "B" * 300, "input": "q?"}
    built = lb.build_request("multifieldqa_en", row, tokenizer, 400)
    assert built.truncated and built.prompt_tokens == 400
    content = built.request.head + built.request.tail
    assert "Read the following text and answer briefly." in content and content.count("A") < 300
    assert built.request.tail.startswith("\n\nNow, answer the following question")  # instructions survive


class EchoFirstAnswer:
    """A fake method: answers 'Paris' and records what it was asked."""

    name = "fake"

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.requests: list[Request] = []

    @property
    def tokenizer(self):
        return self._tokenizer

    def input_limit(self, max_new_tokens: int) -> int | None:
        return 200

    def memory_bytes(self, n_tokens: int) -> int:
        return n_tokens

    def generate(self, requests: list[Request]) -> list[Prediction]:
        self.requests.extend(requests)
        return [Prediction(text="Paris\nmore", input_tokens=7, memory_bytes=7) for _ in requests]


def test_runner_predicts_scores_and_resumes(tmp_path: Path, tiny_lm) -> None:
    _, tokenizer = tiny_lm
    data = tmp_path / "data"
    write_longbench(
        data,
        "hotpotqa",
        [
            {"context": "Paris is in France. " * 30, "input": "Capital of France?", "answers": ["Paris"]},
            {"context": "Rome.", "input": "Capital of Italy?", "answers": ["Rome"]},
        ],
    )
    write_longbench(data, "triviaqa", [{"context": "x", "input": "y", "answers": ["Paris"]}])
    method = EchoFirstAnswer(tokenizer)
    out = tmp_path / "pred"
    report = lb.run_longbench(method, ["hotpotqa", "triviaqa"], out, data_dir=data)
    # hotpotqa keeps the whole "Paris\nmore" -> F1 2/3 on row 1, 0 on row 2; triviaqa cuts to "Paris" -> 100
    assert report["result"] == {"hotpotqa": 33.33, "triviaqa": 100.0}
    assert json.loads((out / "result.json").read_text()) == report["result"]
    assert "mean of category averages" in (out / "results.md").read_text()
    rows = [json.loads(line) for line in (out / "hotpotqa.jsonl").read_text().splitlines()]
    assert rows[0]["truncated"] and rows[0]["prompt_tokens"] == 200  # the method's own limit applied
    assert {"pred", "answers", "all_classes", "length", "_id", "memory_bytes"} <= rows[0].keys()
    assert len(method.requests) == 3

    lb.run_longbench(method, ["hotpotqa", "triviaqa"], out, data_dir=data)
    assert len(method.requests) == 3  # everything already predicted

    # a crash mid-write leaves a torn line: it is dropped and that row predicted again
    path = out / "hotpotqa.jsonl"
    path.write_text(path.read_text().splitlines()[0] + "\n" + '{"pred": "Ro')
    lb.run_longbench(method, ["hotpotqa"], out, data_dir=data)
    assert len(method.requests) == 4 and len(path.read_text().splitlines()) == 2


def test_hf_method_generates_with_the_tiny_model(tmp_path: Path, tiny_lm) -> None:
    model, tokenizer = tiny_lm
    method = HFMethod(model, tokenizer, name="truncate", limit="native")
    overhead = len(
        tokenizer(
            str(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": ""}], tokenize=False, add_generation_prompt=True
                )
            ),
            add_special_tokens=False,
        )["input_ids"]
    )
    assert method.input_limit(32) == 1024 - 32 - overhead
    assert HFMethod(model, tokenizer, name="full").input_limit(32) is None
    # 2 layers x 2 KV heads x 16 dims x 2 (K and V) x 4 bytes
    assert method.memory_bytes(10) == 10 * 2 * 2 * 2 * 16 * 4
    data = tmp_path / "data"
    write_longbench(data, "passage_count", [{"context": "Paragraph 1: a. Paragraph 2: b.", "answers": ["2"]}])
    write_longbench(data, "lcc", [{"context": "def f():\n", "answers": ["    return 1"]}])
    report = lb.run_longbench(method, ["passage_count", "lcc"], tmp_path / "out", data_dir=data)
    assert set(report["result"]) == {"passage_count", "lcc"}
    row = json.loads((tmp_path / "out" / "lcc.jsonl").read_text())
    assert row["input_tokens"] > 0 and isinstance(row["pred"], str)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(SelfctxError, match="unknown LongBench dataset"):
        lb.check_datasets(["hotpotqa", "dureader"])
    with pytest.raises(SelfctxError, match="does not exist"):
        lb.load_rows("hotpotqa", data_dir=tmp_path)
    (tmp_path / "qasper.jsonl").write_text('{"input": "q"}\n')
    with pytest.raises(SelfctxError, match="lacks context, answers"):
        lb.load_rows("qasper", data_dir=tmp_path)
