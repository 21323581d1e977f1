"""Needle grid: haystack loading, sentence-boundary placement, variants, scoring, resume, heatmap."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from selfctx.errors import SelfctxError
from selfctx.eval import needle as nd
from selfctx.eval.methods import Prediction, Request

SENTENCES = " ".join(f"Sentence number {i} talks about the weather in town {i % 7}." for i in range(200))


def test_load_haystack_from_txt_and_pool(tmp_path: Path) -> None:
    (tmp_path / "essays").mkdir()
    (tmp_path / "essays" / "b.txt").write_text("Second essay.")
    (tmp_path / "essays" / "a.txt").write_text("First essay.\n")
    assert nd.load_haystack(tmp_path / "essays") == "First essay.\n\nSecond essay."
    pool = tmp_path / "pool" / "passages"
    pool.mkdir(parents=True)
    (pool / "part-0.jsonl").write_text(
        json.dumps({"text": "Passage one."}) + "\n" + json.dumps({"id": 3}) + "\n"
    )
    assert nd.load_haystack(tmp_path / "pool") == "Passage one."
    (tmp_path / "empty").mkdir()
    with pytest.raises(SelfctxError, match="nothing to fill"):
        nd.load_haystack(tmp_path / "empty")
    with pytest.raises(SelfctxError, match="not a folder"):
        nd.load_haystack(tmp_path / "missing")


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_needle_lands_on_a_sentence_boundary_near_its_depth(tiny_lm, depth: float) -> None:
    _, tokenizer = tiny_lm  # one token per byte, so depth in tokens = depth in characters
    task = nd.make_task("classic", depth, random.Random(0))
    placed = nd.place_needles(tokenizer, SENTENCES, 2000, task)
    context = placed.context
    # the body ends on a whole sentence: at most one sentence (~55 tokens) short of the length asked for
    assert 2000 - 60 <= len(tokenizer(context, add_special_tokens=False)["input_ids"]) <= 2000
    at = context.index(nd.CLASSIC_NEEDLE)
    assert at == 0 or context[at - 2 : at] == ". "  # right after a sentence
    end = at + len(nd.CLASSIC_NEEDLE)
    assert end == len(context) or context[end : end + 9] == " Sentence"  # right before the next one
    # sentences are ~55 tokens, so the nearest boundary is within half a sentence of the target
    assert abs(placed.placed_depths[0] - depth) <= 30 / placed.body_tokens
    assert abs(at / placed.body_tokens - depth) <= 30 / placed.body_tokens


def test_variants_expect_the_right_strings() -> None:
    rng = random.Random(1)
    single = nd.make_task("single", 0.5, rng)
    assert len(single.needles) == 1 and single.expected[0] in single.needles[0]
    multi_key = nd.make_task("multi-key", 0.5, rng, n_keys=4)
    assert len(multi_key.needles) == 4 and len(multi_key.expected) == 1 and multi_key.depths[0] == 0.5
    assert multi_key.expected[0] in multi_key.needles[0]
    multi_value = nd.make_task("multi-value", 0.2, rng, n_values=3)
    assert len(set(multi_value.expected)) == 3
    multi_query = nd.make_task("multi-query", 0.2, rng, n_keys=4, n_queries=2)
    assert len(multi_query.expected) == 2 and all(
        e in " ".join(multi_query.needles) for e in multi_query.expected
    )
    chain = nd.make_task("variable-tracking", 0.0, rng, chain=3)
    value = chain.question.split()[-1].rstrip(".")
    assert chain.needles[0] == f"VAR {chain.expected[0]} = {value}."
    assert chain.needles[2] == f"VAR {chain.expected[2]} = VAR {chain.expected[1]}."
    assert chain.depths == sorted(chain.depths)
    with pytest.raises(SelfctxError, match="unknown needle variant"):
        nd.make_task("haystack", 0.5, rng)


def test_scoring() -> None:
    assert nd.string_match("The numbers are 1234567 and 7654321.", ["1234567", "7654321", "1111111"]) == 2 / 3
    assert nd.string_match("VAR abcde", ["ABCDE"]) == 1.0
    # reference "eat a sandwich" fully inside the prediction -> recall 1
    assert nd.rouge_recall("You should eat a sandwich.", "eat a sandwich") == 1.0
    assert nd.rouge_recall("", "eat a sandwich") == 0.0


class ReadsHead:
    """A fake method that 'finds' magic numbers in what it is given, under a token limit of its own."""

    name = "reader"

    def __init__(self, tokenizer, limit: int | None) -> None:
        self._tokenizer, self.limit, self.calls = tokenizer, limit, 0

    @property
    def tokenizer(self):
        return self._tokenizer

    def input_limit(self, max_new_tokens: int) -> int | None:
        return self.limit

    def memory_bytes(self, n_tokens: int) -> int:
        return n_tokens

    def generate(self, requests: list[Request]) -> list[Prediction]:
        self.calls += len(requests)
        return [
            Prediction(
                text=" ".join(re.findall(r"is: (\d{7})", r.head)), input_tokens=1, memory_bytes=len(r.head)
            )
            for r in requests
        ]


def test_grid_runs_resumes_and_shows_truncation(tmp_path: Path, tiny_lm) -> None:
    _, tokenizer = tiny_lm
    grid = nd.NeedleGrid(lengths=(600, 1200), depths=(0.0, 0.5, 1.0), variant="single")
    full = ReadsHead(tokenizer, None)
    summary = nd.run_needle(full, SENTENCES, grid, tmp_path / "full")
    assert summary["mean_score"] == 1.0 and full.calls == 6
    assert (tmp_path / "full" / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    nd.run_needle(full, SENTENCES, grid, tmp_path / "full")
    assert full.calls == 6  # resumed: nothing left to do

    # middle truncation to 400 tokens drops mid-context needles of the 1200-token cells only
    truncated = nd.run_needle(ReadsHead(tokenizer, 400), SENTENCES, grid, tmp_path / "trunc")
    table = truncated["score_by_length_depth"]
    assert table["600"] == {"0": 1.0, "0.5": 0.0, "1": 1.0}  # 600 > 400 as well
    assert table["1200"]["0.5"] == 0.0 and table["1200"]["0"] == 1.0
    stored = json.loads((tmp_path / "trunc" / "results.json").read_text())
    assert stored["score_by_length_depth"] == table
