"""`selfctx synth --from-docs`: chunk-and-stitch on a scripted fake model (format, lengths, resume)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from synth_fakes import WORDS, scripted_answer, scripted_llm

from selfctx.errors import SelfctxError
from selfctx.llm.base import ChatRequest
from selfctx.llm.cache import CachedLLM
from selfctx.llm.echo import EchoLLM
from selfctx.synth.chunking import chunk_text
from selfctx.synth.docs import DOCS_TASKS, needs_both
from selfctx.synth.lengths import tolerance_window
from selfctx.synth.pipeline import SynthConfig, run_synth
from selfctx.synth.tokens import RegexTokenCounter

CHUNK_TOKENS = 200


def write_docs(folder: Path, n_docs: int = 3, paragraphs: int = 12, seed: int = 0) -> Path:
    """Markdown documents of short paragraphs; every sentence ends in a name of its own (K<doc>x<par>x<s>)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        paras = []
        for p in range(paragraphs):
            sentences = []
            for s in range(5):
                w = rng.sample(WORDS, 4)
                sentences.append(
                    f"The {w[0]} of chapter {d}-{p} met the {w[1]} near {rng.randint(1, 99999)} {w[2]}s "
                    f"and a {w[3]} called K{d}x{p}x{s}."
                )
            paras.append(" ".join(sentences))
        (folder / f"doc{d}.md").write_text(f"# Document {d}\n\n" + "\n\n".join(paras) + "\n")
    return folder


def config(docs: Path, **kw: object) -> SynthConfig:
    base = dict(
        tokenizer="regex", per_task=3, length="2k", seed=1, from_docs=str(docs), chunk_tokens=CHUNK_TOKENS
    )
    return SynthConfig(**{**base, **kw})  # type: ignore[arg-type]


def rows(out: Path) -> list[dict]:
    return [
        json.loads(line)
        for shard in sorted((out / "data").glob("train-*.jsonl"))
        for line in shard.read_text().splitlines()
        if line.strip()
    ]


def context_passages(user: str, task: str) -> list[str]:
    """The passage texts of a user turn, in order (position i+1 = list index i)."""
    parts = re.split(r"(?:^|\n\n)Passage \d+:\n", user)
    passages = parts[1:]
    # The last passage (itself possibly several paragraphs) is followed by the instruction and, except for
    # summaries, the question.
    tail_parts = 1 if task == "docs_summary" else 2
    passages[-1] = passages[-1].rsplit("\n\n", tail_parts)[0]
    return passages


def doc_chunks(docs: Path, name: str) -> list[str]:
    text = (docs / name).read_text()
    return [c for c, _ in chunk_text(text, RegexTokenCounter(), CHUNK_TOKENS)]


def link_writer(request: ChatRequest) -> str:
    """The scripted model, plus a linking question that names a number from each of the two facts."""
    prompt = request.messages[-1].content
    if "Write one question that needs both facts" in prompt:
        facts = re.findall(r"Fact \d: (.*)", prompt)
        numbers = [re.findall(r"\w*\d\w*", f) for f in facts]
        if all(numbers):
            return f"What links {numbers[0][0]} and {numbers[1][0]}?"
        return "What links the two facts?"
    return scripted_answer(request)


def test_docs_samples_have_the_dataset_format_and_lengths(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs")
    summary = run_synth(config(docs), tmp_path / "out", llm=scripted_llm())
    data = rows(tmp_path / "out")
    assert sorted(r["task"] for r in data) == sorted(DOCS_TASKS * 3)
    assert summary["samples"] == 9 and summary["documents"]["documents"] == 3
    for r in data:
        lo, hi = tolerance_window(r["target_tokens"], r["bucket"])
        assert lo <= r["token_count"] <= hi
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        user, answer = r["messages"][0]["content"], r["messages"][1]["content"]
        assert answer.strip() and "{gold[" not in user + answer
        extra = json.loads(r["extra"])
        own = doc_chunks(docs, extra["doc_id"])
        others = {c for name in ("doc0.md", "doc1.md", "doc2.md") if name != extra["doc_id"]
                  for c in doc_chunks(docs, name)}  # fmt: skip
        passages = context_passages(user, r["task"])
        # The document's own chunks form one run, in document order; every other piece is (a prefix of) a
        # chunk of another document.
        start, end = extra["doc_chunks"]
        first = next(i for i, p in enumerate(passages) if p in own or own[start].startswith(p))
        run = passages[first : first + end - start]
        assert run[:-1] == own[start : end - 1] and own[end - 1].startswith(run[-1])
        distractors = passages[:first] + passages[first + end - start :]
        assert len(distractors) == r["n_distractors"]
        assert all(any(o.startswith(p) for o in others) for p in distractors)
        # Gold positions point at the gold chunks, whole.
        for pos, chunk in zip(r["gold_positions"], extra["gold_chunks"], strict=True):
            assert passages[pos - 1] == own[chunk]
        if r["task"] == "docs_summary":
            assert all(f"Passage {g}:" in answer for g in r["gold_positions"])
            assert f"passages {r['gold_positions'][0]} to" in user or len(r["gold_positions"]) == 1
    card = (tmp_path / "out" / "README.md").read_text()
    assert "docs_crossqa" in card and "3 documents" in card
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())


def test_cross_chunk_questions_need_two_chunks_placed_far_apart(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs", paragraphs=30)
    cfg = config(docs, tasks=("docs_crossqa",), per_task=4, length="4k")
    run_synth(cfg, tmp_path / "out", llm=EchoLLM(link_writer))
    data = rows(tmp_path / "out")
    assert len(data) == 4
    kinds = set()
    for r in data:
        extra = json.loads(r["extra"])
        a, b = extra["gold_chunks"]
        first, second = r["gold_positions"]
        assert b - a >= 2 and second - first == b - a  # at least one chunk between, in document order
        passages = context_passages(r["messages"][0]["content"], r["task"])
        between = sum(len(p.split()) for p in passages[first : second - 1])
        assert between >= 0.25 * sum(len(p.split()) for p in passages)
        question = r["messages"][0]["content"].rsplit("\n\n", 1)[-1]
        text_a, text_b = passages[first - 1], passages[second - 1]
        kinds.add(extra["question_kind"])
        if extra["question_kind"] == "linked":
            assert needs_both(question + " " + r["messages"][1]["content"], text_a, text_b)
    assert "linked" in kinds


def test_two_part_question_when_the_link_fails(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs")
    summary = run_synth(
        config(docs, tasks=("docs_crossqa",), per_task=2), tmp_path / "out", llm=scripted_llm()
    )
    assert summary["stages"]["tasks"]["docs_crossqa"]["question_kinds"] == {"two_part": 2}
    for r in rows(tmp_path / "out"):
        assert r["messages"][0]["content"].endswith("?") and "1. " in r["messages"][1]["content"]


def test_long_single_document_fills_with_its_own_chunks(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs", n_docs=1, paragraphs=50)
    cfg = config(docs, tasks=("docs_qa", "docs_summary"), per_task=2, length=None, uniform="2k-4k")
    run_synth(cfg, tmp_path / "out", llm=scripted_llm())
    own = doc_chunks(docs, "doc0.md")
    for r in rows(tmp_path / "out"):
        assert r["n_distractors"] == 0
        lo, hi = tolerance_window(r["target_tokens"], r["bucket"])
        assert lo <= r["token_count"] <= hi
        start, end = json.loads(r["extra"])["doc_chunks"]
        passages = context_passages(r["messages"][0]["content"], r["task"])
        assert passages[:-1] == own[start : end - 1] and own[end - 1].startswith(passages[-1])


class Interrupted(Exception):
    pass


def test_resume_after_an_interruption_gives_the_same_dataset(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs")
    run_synth(config(docs), tmp_path / "clean", llm=scripted_llm())

    calls = 0

    def dies_midway(request: ChatRequest) -> str:
        nonlocal calls
        calls += 1
        if calls > 20:
            raise Interrupted("killed")
        return scripted_answer(request)

    out = tmp_path / "resumed"
    first = CachedLLM(EchoLLM(dies_midway, model_id="scripted"), out / "cache")
    with pytest.raises(Interrupted):
        run_synth(config(docs), out, llm=first)
    first.close()
    assert not (out / "data").exists() or not rows(out)
    inner = scripted_llm()
    again = CachedLLM(inner, out / "cache")
    summary = run_synth(config(docs), out, llm=again)
    again.close()
    assert summary["cached_calls_this_run"] >= 20  # the finished calls were replayed, not regenerated
    assert rows(out) == rows(tmp_path / "clean")
    # A third run finds every task done: no calls at all.
    idle = scripted_llm()
    run_synth(config(docs), out, llm=idle)
    assert idle.calls == [] and rows(out) == rows(tmp_path / "clean")


def test_changed_documents_do_not_mix_into_a_resumed_output(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs")
    run_synth(config(docs, per_task=1), tmp_path / "out", llm=scripted_llm())
    (docs / "doc0.md").write_text((docs / "doc0.md").read_text() + "\n\nA new closing paragraph here.\n")
    with pytest.raises(SelfctxError, match="changed since"):
        run_synth(config(docs, per_task=1), tmp_path / "out", llm=scripted_llm())


def run_cli(args: Sequence[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    from selfctx.cli import main

    monkeypatch.setattr(sys, "argv", ["selfctx", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def bad_inputs(tmp_path: Path) -> Iterator[tuple[list[str], str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    yield ["--from-docs", str(empty)], "no .txt, .md or .jsonl file"
    other = tmp_path / "other"
    other.mkdir()
    (other / "slides.pdf").write_bytes(b"%PDF-1.4")
    (other / "table.csv").write_text("a,b\n1,2\n")
    yield ["--from-docs", str(other)], "2 other files"
    yield ["--from-docs", str(tmp_path / "missing")], "does not exist"
    docs = write_docs(tmp_path / "docs")
    yield ["--from-docs", str(docs), "--length", "64k"], "hold"
    yield ["--from-docs", str(docs), "--tasks", "qa"], "unknown task"
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "a.txt").write_text("   \n")
    yield ["--from-docs", str(blank)], "empty"


def test_bad_input_is_one_line_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, expected in bad_inputs(tmp_path):
        out = tmp_path / "out"
        err = run_cli(["synth", "--out", str(out), "--tokenizer", "regex", *args], monkeypatch, capsys)
        assert expected in err, (args, err)
        assert ":" in err  # what is wrong: what to do
    too_long = run_cli(
        ["synth", "--out", str(tmp_path / "o2"), "--tokenizer", "regex", "--from-docs",
         str(tmp_path / "docs"), "--length", "64k", "--set", f"chunk_tokens={CHUNK_TOKENS}"], monkeypatch,
        capsys,
    )  # fmt: skip
    match = re.search(r"hold ([\d,]+) tokens", too_long)
    assert match, too_long
    counter = RegexTokenCounter()
    exact = sum(counter.count(c) for name in ("doc0.md", "doc1.md", "doc2.md")
                for c in doc_chunks(tmp_path / "docs", name))  # fmt: skip
    assert int(match.group(1).replace(",", "")) == exact
    assert "shorter length" in too_long


def _cached_calls(out: Path) -> int:
    path = out / "cache" / "llm_calls.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1) as db:
            return int(db.execute("select count(*) from calls").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_cli_kill_9_midway_then_the_same_command_gives_the_same_dataset(tmp_path: Path) -> None:
    """`selfctx synth --from-docs` against an OpenAI-compatible server in front of the scripted model."""
    from fake_openai_server import serve_in_thread

    docs = write_docs(tmp_path / "docs")
    env = {**os.environ, "SELFCTX_PROGRESS": "0"}

    def command(out: Path, url: str) -> list[str]:
        return [
            sys.executable, "-m", "selfctx", "synth", "--out", str(out), "--backend", "openai",
            "--base-url", url, "--model", "scripted", "--tokenizer", "regex", "--from-docs", str(docs),
            "--per-task", "2", "--length", "2k", "--concurrency", "2",
            "--set", f"chunk_tokens={CHUNK_TOKENS}",
        ]  # fmt: skip

    with serve_in_thread(scripted_llm(delay_s=0.05), model_name="scripted", max_batch=2) as server:
        ref = subprocess.run(command(tmp_path / "ref", server.base_url), env=env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        assert ref.returncode == 0, ref.stderr
        assert "documents: 3 in" in ref.stdout and "docs_crossqa" in ref.stdout
        total = server.stats.requests
        proc = subprocess.Popen(command(tmp_path / "run", server.base_url), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 120
        while _cached_calls(tmp_path / "run") < total // 2 and time.monotonic() < deadline:
            assert proc.poll() is None, "the run finished before it could be killed"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert not (tmp_path / "run" / "summary.json").exists()  # it really died midway
        rerun = subprocess.run(command(tmp_path / "run", server.base_url), env=env, capture_output=True,
                               text=True, timeout=300)  # fmt: skip
        assert rerun.returncode == 0, rerun.stderr
    assert rows(tmp_path / "run") == rows(tmp_path / "ref") and len(rows(tmp_path / "ref")) == 6
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["cached_calls_this_run"] > 0
