"""`--executor ray` on a local Ray (2 CPUs) gives the same dataset as the local executor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synth_fakes import scripted_llm

from fake_openai_server import serve_in_thread
from selfctx.synth.pipeline import SynthConfig, run_synth


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for f in sorted((out / "data").glob("*.jsonl")) for x in f.read_text().splitlines()]


def test_ray_executor_matches_local(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from selfctx.synth.executors import run_synth_ray

    with serve_in_thread(scripted_llm(), model_name="scripted") as server:
        cfg = SynthConfig(
            backend="openai", base_url=server.base_url, model="scripted", tokenizer="regex", per_task=1,
            length="2k", seed=9, tasks=("qa", "logic", "code"),
        )  # fmt: skip
        local = run_synth(cfg, tmp_path / "local")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            remote = run_synth_ray(cfg, tmp_path / "ray")
        finally:
            ray.shutdown()
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")
    assert remote["samples"] == local["samples"] == 3
    assert remote["dropped_by_filter"] == local["dropped_by_filter"]
    assert remote["backend"]["calls"] == local["backend"]["calls"]


def test_ray_executor_reads_the_users_documents_as_the_local_run_does(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from test_from_docs import config, write_docs

    from selfctx.synth.executors import run_synth_ray

    docs = write_docs(tmp_path / "docs")
    with serve_in_thread(scripted_llm(), model_name="scripted") as server:
        cfg = config(docs, backend="openai", base_url=server.base_url, model="scripted", per_task=2)
        local = run_synth(cfg, tmp_path / "local")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            remote = run_synth_ray(cfg, tmp_path / "ray")
        finally:
            ray.shutdown()
    assert rows(tmp_path / "ray") == rows(tmp_path / "local") and len(rows(tmp_path / "local")) == 6
    assert remote["documents"] == local["documents"] and remote["source"] == "documents"
    assert remote["stages"]["tasks"] == local["stages"]["tasks"]
