"""`--executor ray` on a local Ray (2 CPUs) gives the same dataset as the local executor."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from synth_fakes import scripted_llm

from fake_openai_server import serve_in_thread
from selfctx.synth.pipeline import SynthConfig, run_synth


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for f in sorted((out / "data").glob("*.jsonl")) for x in f.read_text().splitlines()]


def local_and_ray(config_for: Callable[[str], SynthConfig], tmp_path: Path) -> tuple[dict, dict]:
    """The summaries of one config run locally (into tmp/local) and on a local Ray (tmp/ray), against one
    scripted server (`config_for(base_url)` builds the config)."""
    ray = pytest.importorskip("ray")
    from selfctx.synth.executors import run_synth_ray

    with serve_in_thread(scripted_llm(), model_name="scripted") as server:
        cfg = config_for(server.base_url)
        local = run_synth(cfg, tmp_path / "local")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            remote = run_synth_ray(cfg, tmp_path / "ray")
        finally:
            ray.shutdown()
    return local, remote


def test_ray_executor_matches_local(tmp_path: Path) -> None:
    local, remote = local_and_ray(
        lambda url: SynthConfig(
            backend="openai", base_url=url, model="scripted", tokenizer="regex", per_task=1, length="2k",
            seed=9, tasks=("qa", "logic", "code"),
        ),
        tmp_path,
    )  # fmt: skip
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")
    assert remote["samples"] == local["samples"] == 3
    assert remote["dropped_by_filter"] == local["dropped_by_filter"]
    assert remote["backend"]["calls"] == local["backend"]["calls"]


def test_ray_executor_reads_the_users_documents_as_the_local_run_does(tmp_path: Path) -> None:
    from test_from_docs import config, write_docs

    docs = write_docs(tmp_path / "docs")
    local, remote = local_and_ray(
        lambda url: config(docs, backend="openai", base_url=url, model="scripted", per_task=2), tmp_path
    )
    assert rows(tmp_path / "ray") == rows(tmp_path / "local") and len(rows(tmp_path / "local")) == 6
    assert remote["documents"] == local["documents"] and remote["source"] == "documents"
    assert remote["stages"]["tasks"] == local["stages"]["tasks"]
