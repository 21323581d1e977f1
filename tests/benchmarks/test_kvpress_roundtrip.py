"""The kvpress runner's pure-Python half (benchmarks/kvpress/press_io.py) agrees with selfctx and the harness.

kvpress runs in a venv of its own (it pins transformers < 5.3), so its runner cannot import selfctx: what
it shares with our evaluations (the items file, lm-eval's prompt/continuation split, the results file) is
checked here in the main environment, without kvpress or torch being imported by the module under test.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
HAYSTACK = (
    "The ferry left at dawn and the gulls followed it past the lighthouse. The captain logged the tide and "
    "the wind. Nobody aboard spoke of the storm that had kept them in port for three days. "
)


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def press_io() -> ModuleType:
    before = set(sys.modules)
    module = _load("kvpress_press_io", BENCHMARKS / "kvpress" / "press_io.py")
    loaded = set(sys.modules) - before
    assert not {m for m in loaded if m.split(".")[0] in ("torch", "kvpress", "transformers", "selfctx")}
    tree = ast.parse((BENCHMARKS / "kvpress" / "press_io.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}  # runs in either venv
    return module


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    return _load("harness_needle_mc", BENCHMARKS / "harness_needle_mc.py")


@pytest.fixture(scope="module")
def tokenizer():  # noqa: ANN201
    from selfctx.tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture()
def task_dir(harness: ModuleType, tokenizer, tmp_path: Path) -> Path:  # noqa: ANN001
    """items.jsonl and task.yaml exactly as the harness writes them (its own write_task)."""
    (tmp_path / "haystack").mkdir()
    (tmp_path / "haystack" / "essay.txt").write_text(HAYSTACK * 12, encoding="utf-8")
    args = argparse.Namespace(haystack=str(tmp_path / "haystack"), length=300, items=3, seed=0)
    harness.write_task(args, tokenizer, tmp_path / "out" / "task")
    return tmp_path / "out" / "task"


def test_items_and_split_match_selfctx(press_io, tokenizer, task_dir: Path) -> None:  # noqa: ANN001
    from selfctx.eval.needle_mc import PROMPT, _encode_pair

    assert press_io.PROMPT == PROMPT
    jinja = PROMPT.replace("{", "{{").replace("}", "}}").replace("\n", "\\n")
    assert f'doc_to_text: "{jinja}"' in (task_dir / "task.yaml").read_text()  # the prompt lm-eval builds
    path = task_dir / "items.jsonl"
    items = press_io.read_items(path)
    assert [json.loads(line) for line in path.read_text().splitlines()] == items
    assert len(items) == 3 and len(press_io.items_digest(path)) == 64

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    for item in items:
        prompt = PROMPT.format(context=item["context"], question=item["question"])
        request = press_io.choice_request(encode, item)
        ours = [_encode_pair(tokenizer, prompt, " " + choice) for choice in item["choices"]]
        assert request.head == ours[0][0]  # the very ids the harness methods read
        assert request.continuations == [c for _, c in ours]
        assert request.context_ids == encode(item["context"])  # the press sees the context alone
        assert request.question_ids == encode(prompt)[len(request.context_ids) :]
        assert (request.label, request.depth) == (item["label"], item["depth"])
        for choice in item["choices"]:  # lm-eval's trailing-space rule, the same both sides
            mine = press_io.encode_pair(encode, prompt + " ", choice)
            assert mine == _encode_pair(tokenizer, prompt + " ", choice)


def test_results_read_back_by_the_harness_summary_and_the_table(press_io, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    per_item = [
        {"depth": 0.0, "correct": True, "memory_bytes": 1000, "seconds": 1.5},
        {"depth": 0.5, "correct": False, "memory_bytes": 3000, "seconds": 2.5},
    ]
    method = press_io.method_name("snapkv", 8)
    assert method == "kvpress-snapkv-r8"
    assert press_io.compression_ratio(8) == pytest.approx(0.875)
    record = press_io.result_record(method, 8, per_item, press="SnapKVPress", question_aware=False)
    press_io.write_result(out / method, record)
    # what the harness wrote for one of its own methods (its keys, no memory or per-item seconds)
    harness_record = {
        "method": "full",
        "ratio": 1,
        "acc": 1.0,
        "acc_stderr": 0.0,
        "items": 2,
        "seconds": 9.0,
        "per_item": [{"depth": 0.0, "correct": True}, {"depth": 0.5, "correct": True}],
    }
    (out / "full").mkdir(parents=True)
    (out / "full" / "results.json").write_text(json.dumps(harness_record, indent=1))

    read = json.loads((out / method / "results.json").read_text())
    assert read == record
    assert (read["acc"], read["items"], read["seconds"]) == (0.5, 2, 4.0)
    assert read["acc_stderr"] == pytest.approx(0.5)  # lm-eval's: sqrt(acc (1 - acc) / (n - 1))
    assert (read["memory_bytes"], read["seconds_per_item"]) == (2000, 2.0)
    # every key the harness's summary step reads from a method's results.json is there
    source = (BENCHMARKS / "harness_needle_mc.py").read_text()
    summary_keys = set(re.findall(r"r\['(\w+)'\]", source)) | set(re.findall(r"result\['(\w+)'\]", source))
    assert summary_keys and summary_keys <= set(read)
    assert set(press_io.RESULT_KEYS) <= set(read)

    table = press_io.write_summary(out)
    lines = table.splitlines()
    assert lines[2].startswith("| full | 1 | 100.0 | 0.0 | 2 | - | 4.5 |")
    assert lines[3].startswith(f"| {method} | 8 | 50.0 | 50.0 | 2 | 0.00 | 2.0 |")
    merged = json.loads((out / press_io.SUMMARY_JSON).read_text())
    assert set(merged) == {"full", method}


def test_rows_resume_and_refuse_bad_items(press_io, tmp_path: Path) -> None:  # noqa: ANN001
    folder = tmp_path / "m"
    press_io.append_row(folder, {"item": 0, "correct": True})
    with (folder / press_io.ROWS_FILE).open("a") as handle:
        handle.write('{"item": 1, "corr')  # a stop mid-line
    assert press_io.read_rows(folder) == [{"item": 0, "correct": True}]
    bad = tmp_path / "items.jsonl"
    bad.write_text(
        json.dumps({"context": "x", "question": "q", "choices": ["a"], "label": 3, "depth": 0}) + "\n"
    )
    with pytest.raises(ValueError, match="label 3"):
        press_io.read_items(bad)
    bad.write_text(json.dumps({"context": "x"}) + "\n")
    with pytest.raises(ValueError, match="lacks question"):
        press_io.read_items(bad)


def test_a_merge_across_the_context_end_moves_to_the_question(press_io) -> None:  # noqa: ANN001
    def encode(text: str) -> list[int]:  # characters, except "a\n" merges into one token
        return [1000 if piece == "a\n" else ord(piece) for piece in re.findall(r"a\n|.|\n", text, re.S)]

    item = {"context": "banana", "question": "Which fruit?", "choices": ["x", "y"], "label": 1, "depth": 0.5}
    request = press_io.choice_request(encode, item)
    prompt = press_io.PROMPT.format(**item)
    assert request.head == encode(prompt)
    assert request.context_ids == encode("banan") and request.question_ids[0] == 1000


def test_generation_requests_export_and_collect_through_selfctx_runners(
    press_io,
    tokenizer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    """export -> the kvpress runner's rows (faked here) -> collect -> a folder `selfctx eval report` reads."""
    from selfctx.eval.needle import CLASSIC_ANSWER
    from selfctx.eval.report import collect_run

    monkeypatch.setattr("selfctx.models.load_tokenizer", lambda spec: tokenizer)
    generation = _load("kvpress_generation_requests", BENCHMARKS / "kvpress" / "generation_requests.py")
    (tmp_path / "haystack").mkdir()
    (tmp_path / "haystack" / "essay.txt").write_text(HAYSTACK * 12, encoding="utf-8")
    out = tmp_path / "out"
    generation.export(
        argparse.Namespace(
            out=out,
            model="tiny",
            benchmark="needle",
            haystack=tmp_path / "haystack",
            lengths="400",
            depths="0.2,0.8",
            variant="classic",
            samples=1,
            seed=0,
            max_new_tokens=8,
        )
    )
    requests = press_io.read_requests(out / press_io.REQUESTS_FILE)
    assert len(requests) == 2
    for request in requests:  # the head ends where the document does; the tail asks
        assert "San Francisco" in request["head"] and request["tail"].lstrip().startswith("Question:")
        assert request["add_special_tokens"] is False  # the chat template wrote the special tokens
    method = press_io.method_name("streaming_llm", 8)
    for index, request in enumerate(requests):  # what run_presses.py --requests appends per request
        press_io.append_row(
            out / method,
            {
                "item": index,
                "key": request["key"],
                "text": CLASSIC_ANSWER,
                "input_tokens": 400,
                "memory_bytes": 4096,
                "seconds": 1.0,
            },
        )
    press_io.write_settings(
        out / method,
        {
            "method": method,
            "ratio": 8,
            "kv_bytes_per_token": 64,
            "model": "tiny.gguf",
            "seconds_per_item": 1.0,
            "press": "StreamingLLMPress",
            "compression_ratio": 0.875,
        },
    )
    folders = generation.collect(argparse.Namespace(out=out))
    assert folders == [out / "needle" / method]
    run = collect_run(folders[0])
    assert run["method"] == method and run["needle"]["mean_score"] == 1.0
    assert run["mean_memory_bytes"] == 4096 and run["meta"]["kind"] == "KVPress"
    rows = [json.loads(line) for line in (folders[0] / "needle.jsonl").read_text().splitlines()]
    assert [r["pred"] for r in rows] == [CLASSIC_ANSWER, CLASSIC_ANSWER]
    unanswered = press_io.method_name("snapkv", 8)
    press_io.write_settings(
        out / unanswered,
        {
            "method": unanswered,
            "ratio": 8,
            "kv_bytes_per_token": 64,
            "model": "tiny.gguf",
            "seconds_per_item": 1.0,
        },
    )
    from selfctx.errors import SelfctxError

    with pytest.raises(SelfctxError, match="no prediction for request"):
        generation.collect(argparse.Namespace(out=out))
