"""`selfctx eval longbench|needle|synthetic` check every argument before a model loads or a folder is made:
a bad one fails in one line naming it, the loader is never called and --out is not created."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_files import write_longbench
from typer.testing import CliRunner

from cli_refusal import assert_refused
from selfctx.cli import app


@pytest.fixture()
def no_loading(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any model or tokenizer load fails the test (and is recorded)."""
    calls: list[str] = []

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(str(args[:1]))
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr("selfctx.models.load_causal_lm", refuse)
    monkeypatch.setattr("selfctx.models.load_tokenizer", refuse)
    return calls


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    model = tmp_path / "model"  # resolves as an HF folder; its weights are never read
    model.mkdir()
    (model / "config.json").write_text("{}")
    data = tmp_path / "data"
    write_longbench(data, "trec", [{"context": "c", "answers": ["a"]}])
    hay = tmp_path / "hay"
    hay.mkdir()
    (hay / "a.txt").write_text("Some text. More text.")
    pool = tmp_path / "pool"
    pool.mkdir()
    passage = {"id": "d0", "noun": "n", "genre": "g", "text": "A passage.", "n_tokens": 3}
    (pool / "passages-00000.jsonl").write_text(json.dumps(passage) + "\n")
    (pool / "passages-00000.done.json").write_text("{}")
    experts = tmp_path / "not-experts"
    experts.mkdir()
    trained = tmp_path / "trained"  # battery.json alone: what the checks read (no weights are loaded)
    trained.mkdir()
    mechanism = {"window": 64, "native_context": 1024, "sink": 1}
    (trained / "battery.json").write_text(json.dumps({"kind": "lora", "ratios": [8], "mechanism": mechanism}))
    out = tmp_path / "out"
    return {"model": model, "data": data, "hay": hay, "pool": pool, "experts": experts, "trained": trained,
            "out": out}  # fmt: skip


def assert_refused_before_loading(args: list[str], name: str, out: Path, calls: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert_refused(result, name)
    assert not calls, "the model was loaded before the bad argument was refused"
    assert not out.exists(), f"{out} was created by a run that failed its argument checks"


LONGBENCH_CASES = [
    (["--datasets", "nosuch"], "--datasets"),
    (["--dtype", "float99"], "--dtype"),
    (["--device", "gpu9"], "--device"),
    (["--method", "nosuch"], "--method"),
    (["--backend", "nosuch"], "--backend"),
    (["--data-dir", "{tmp}/nowhere"], "--data-dir"),
    (["--datasets", "trec,qasper"], "--data-dir"),
    (["--limit", "0"], "--limit"),
    (["--batch-size", "0"], "--batch-size"),
    (["--method", "compressed", "--experts", "{experts}"], "--experts"),
    (["--method", "compressed", "--ratio", "3"], "--ratio"),
    # the experts were trained under a 1024-token native context: a 2048-token window cannot fit it
    (["--method", "compressed", "--experts", "{trained}", "--window", "2048"], "--window"),
]


@pytest.mark.parametrize(("extra", "name"), LONGBENCH_CASES)
def test_longbench_refuses_bad_arguments_before_loading(
    extra: list[str], name: str, files: dict[str, Path], no_loading: list[str], tmp_path: Path
) -> None:
    extra = [e.format(tmp=tmp_path, experts=files["experts"], trained=files["trained"]) for e in extra]
    args = ["eval", "longbench", "--out", str(files["out"]), "--model", str(files["model"])]
    args += ["--data-dir", str(files["data"]), "--datasets", "trec", "--device", "cpu", *extra]
    assert_refused_before_loading(args, name, files["out"], no_loading)


NEEDLE_CASES = [
    (["--lengths", "-5"], "--lengths"),
    (["--depths", "1.5"], "--depths"),
    (["--variant", "nosuch"], "--variant"),
    (["--samples", "0"], "--samples"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--dtype", "float99"], "--dtype"),
    (["--method", "compressed", "--window", "0"], "--window"),
]


@pytest.mark.parametrize(("extra", "name"), NEEDLE_CASES)
def test_needle_refuses_bad_arguments_before_loading(
    extra: list[str], name: str, files: dict[str, Path], no_loading: list[str]
) -> None:
    args = ["eval", "needle", "--haystack", str(files["hay"]), "--out", str(files["out"])]
    args += ["--model", str(files["model"]), "--device", "cpu", "--lengths", "300", *extra]
    assert_refused_before_loading(args, name, files["out"], no_loading)


SYNTHETIC_CASES = [
    (["--depths", "2"], "--depths"),
    (["--checks", "nosuch"], "--checks"),
    (["--exclude-from", "{tmp}/nowhere"], "--exclude-from"),
    (["--hops", "0"], "--hops"),
    (["--records", "0"], "--records"),
    (["--samples", "0"], "--samples"),
    (["--device", "gpu9"], "--device"),
    (["--method", "truncate-0"], "--method"),
    (["--method", "truncate-1k"], "--method"),
]


@pytest.mark.parametrize(("extra", "name"), SYNTHETIC_CASES)
def test_synthetic_refuses_bad_arguments_before_loading(
    extra: list[str], name: str, files: dict[str, Path], no_loading: list[str], tmp_path: Path
) -> None:
    extra = [e.format(tmp=tmp_path) for e in extra]
    args = ["eval", "synthetic", "--pool", str(files["pool"]), "--out", str(files["out"])]
    args += ["--model", str(files["model"]), "--device", "cpu", "--lengths", "1k", *extra]
    assert_refused_before_loading(args, name, files["out"], no_loading)


def test_out_under_a_file_is_refused(files: dict[str, Path], no_loading: list[str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "run"
    args = ["eval", "needle", "--haystack", str(files["hay"]), "--out", str(out)]
    args += ["--model", str(files["model"]), "--device", "cpu"]
    assert_refused_before_loading(args, "--out", out, no_loading)
