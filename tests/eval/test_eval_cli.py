"""The `selfctx eval` verbs, with a tiny model saved to a folder (fast)."""

from __future__ import annotations

import json
from pathlib import Path

from eval_files import write_longbench
from typer.testing import CliRunner

from selfctx.cli import app

runner = CliRunner()


def _tiny_model_folder(tmp_path: Path, tiny_lm) -> Path:
    model, tokenizer = tiny_lm
    folder = tmp_path / "tiny-model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_score_verb(tmp_path: Path) -> None:
    (tmp_path / "trec.jsonl").write_text(
        json.dumps(
            {"pred": "City\nCountry", "answers": ["City"], "all_classes": ["City", "Country"], "length": 10}
        )
        + "\n"
    )
    result = runner.invoke(app, ["eval", "score", "--pred-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "result.json").read_text()) == {"trec": 100.0}
    result = runner.invoke(app, ["eval", "score", "--pred-dir", str(tmp_path), "--e"])
    assert json.loads((tmp_path / "result.json").read_text()) == {
        "trec": {"0-4k": 100.0, "4-8k": None, "8k+": None}
    }


def test_longbench_needle_and_report_verbs(tmp_path: Path, tiny_lm) -> None:
    model_dir = _tiny_model_folder(tmp_path, tiny_lm)
    data = tmp_path / "data"
    write_longbench(data, "passage_count", [{"context": "Paragraph 1: a. Paragraph 2: b.", "answers": ["2"]}])
    out = tmp_path / "lb"
    common = ["--model", str(model_dir), "--dtype", "float32", "--device", "cpu"]
    result = runner.invoke(
        app,
        [
            "eval",
            "longbench",
            "--out",
            str(out),
            "--data-dir",
            str(data),
            "--datasets",
            "passage_count",
            "--method",
            "truncate,full",
            *common,
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "truncate-1024" / "result.json").is_file() and (out / "full" / "run.json").is_file()
    run = json.loads((out / "full" / "run.json").read_text())
    assert run["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4 and run["benchmark"] == "longbench"

    hay = tmp_path / "hay"
    hay.mkdir()
    (hay / "a.txt").write_text(" ".join(f"Line {i} is here." for i in range(300)))
    result = runner.invoke(
        app,
        [
            "eval",
            "needle",
            "--haystack",
            str(hay),
            "--out",
            str(tmp_path / "nd"),
            "--lengths",
            "300",
            "--depths",
            "0,1",
            "--variant",
            "multi-key",
            "--max-new-tokens",
            "4",
            *common,
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "nd" / "truncate-1024" / "heatmap.png").is_file()

    report = tmp_path / "report"
    result = runner.invoke(
        app,
        [
            "eval",
            "report",
            str(out / "truncate-1024"),
            str(out / "full"),
            str(tmp_path / "nd" / "truncate-1024"),
            "--out",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    text = (report / "report.md").read_text()
    assert "| passage_count |" in text and "effective ratio" in text and "## Needle" in text
    assert (report / "score_vs_length.png").is_file() and (report / "score_vs_ratio.png").is_file()
    runs = json.loads((report / "report.json").read_text())["runs"]
    assert runs[1]["effective_ratio"] == 1.0  # full attention holds every token it read


def test_bad_cli_input_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "score", "--pred-dir", str(tmp_path / "none")])
    assert result.exit_code != 0 and "does not exist" in str(result.exception)


def test_compressed_method_defaults_to_the_window_the_experts_were_trained_with(tmp_path: Path) -> None:
    from selfctx.compress import CompressorConfig, ExpertBattery
    from selfctx.eval.methods import build_method
    from selfctx.tiny import tiny_llama, tiny_tokenizer

    model = tiny_llama(seed=0)
    trained = CompressorConfig(ratios=(4,), window=32, native_context=128, sink=1)
    battery = ExpertBattery.create(model, config=trained)
    battery.save(tmp_path / "experts")
    method = build_method("compressed", model, tiny_tokenizer(), experts=str(tmp_path / "experts"), ratio=4)
    lm = method.compressed  # type: ignore[attr-defined]
    assert (lm.window, lm.native_context, lm.sink) == (32, 128, 1)
    assert method.name == "experts-w32-r4"


def test_a_result_folder_resumes_only_with_its_settings_and_prints_what_result_json_holds(
    tmp_path: Path, tiny_lm
) -> None:
    model_dir = _tiny_model_folder(tmp_path, tiny_lm)
    data = tmp_path / "data"
    write_longbench(data, "passage_count", [{"context": "Paragraph 1: a. Paragraph 2: b.", "answers": ["2"]}])
    write_longbench(
        data,
        "trec",
        [
            {
                "context": "Q: where? Type: City",
                "input": "where?",
                "answers": ["City"],
                "all_classes": ["City", "Country"],
            }
        ],
    )
    out = tmp_path / "lb"
    common = [
        "eval",
        "longbench",
        "--out",
        str(out),
        "--data-dir",
        str(data),
        "--model",
        str(model_dir),
        "--dtype",
        "float32",
        "--device",
        "cpu",
    ]
    assert runner.invoke(app, [*common, "--datasets", "passage_count"]).exit_code == 0
    # another dataset under the same settings joins the folder; the table then covers both, like result.json
    result = runner.invoke(app, [*common, "--datasets", "trec"])
    assert result.exit_code == 0, result.output
    folder = out / "truncate-1024"
    held = json.loads((folder / "result.json").read_text())
    assert set(held) == {"passage_count", "trec"}
    table = (folder / "results.md").read_text()
    assert all(f"| {name} |" in table for name in held)
    before = (folder / "run.json").read_text()
    # another max length into the same folder: refused in one line, nothing rewritten
    result = runner.invoke(app, [*common, "--datasets", "trec", "--max-length", "500"])
    assert result.exit_code != 0
    assert "max_length=15500, this one has max_length=500" in str(result.exception)
    assert (folder / "run.json").read_text() == before


def test_truncate_n_is_the_truncate_method_at_n_tokens(tiny_lm) -> None:
    from selfctx.eval.methods import build_method

    model, tokenizer = tiny_lm
    native = build_method("truncate", model, tokenizer)
    capped = build_method("truncate-300", model, tokenizer)
    assert (native.name, capped.name) == ("truncate-1024", "truncate-300")
    native_limit, capped_limit = native.input_limit(32), capped.input_limit(32)
    assert native_limit is not None and capped_limit is not None
    assert native_limit - capped_limit == 1024 - 300  # the same budget and template overhead taken off


def test_several_named_batteries_score_in_one_run_each_in_its_own_folder(tmp_path: Path, tiny_lm) -> None:
    from selfctx.compress import CompressorConfig, ExpertBattery

    model_dir = _tiny_model_folder(tmp_path, tiny_lm)
    model, _ = tiny_lm
    for name in ("a", "b"):
        trained = CompressorConfig(ratios=(4,), window=32, native_context=256, sink=1)
        battery = ExpertBattery.create(model, config=trained)
        battery.save(tmp_path / f"experts-{name}")
    hay = tmp_path / "hay"
    hay.mkdir()
    (hay / "a.txt").write_text(" ".join(f"Line {i} is here." for i in range(300)))
    args = ["eval", "needle", "--haystack", str(hay), "--out", str(tmp_path / "nd"), "--lengths", "300"]
    args += ["--depths", "0.5", "--method", "compressed", "--ratio", "4", "--model", str(model_dir)]
    args += ["--dtype", "float32", "--device", "cpu", "--max-new-tokens", "4"]
    unnamed = runner.invoke(app, [*args, "--experts", str(tmp_path / "experts-a"), "--experts", "x"])
    assert unnamed.exit_code != 0 and "distinct names" in str(unnamed.exception)
    named = [f"--experts=a={tmp_path / 'experts-a'}", f"--experts=b={tmp_path / 'experts-b'}"]
    result = runner.invoke(app, [*args, *named])
    assert result.exit_code == 0, result.output
    for name in ("a", "b"):
        run = json.loads((tmp_path / "nd" / f"{name}-w32-r4" / "run.json").read_text())
        assert run["experts"] == str((tmp_path / f"experts-{name}").resolve())
        assert run["compressor"]["sink"] == 1 and run["compressor"]["native_context"] == 256


def test_a_name_without_a_folder_is_an_untrained_battery_beside_trained_ones(tmp_path: Path, tiny_lm) -> None:
    """The comparison's untrained row reads through the trained battery's mechanism (sink, memory input,
    window, native context) when told to; run.json records it, so a folder never mixes two mechanisms."""
    from selfctx.compress import CompressorConfig, ExpertBattery

    model_dir = _tiny_model_folder(tmp_path, tiny_lm)
    model, _ = tiny_lm
    trained = CompressorConfig(ratios=(4,), window=32, native_context=256, sink=1, memory_input="span_last")
    ExpertBattery.create(model, config=trained).save(tmp_path / "experts-a")
    hay = tmp_path / "hay"
    hay.mkdir()
    (hay / "a.txt").write_text(" ".join(f"Line {i} is here." for i in range(300)))
    args = ["eval", "needle", "--haystack", str(hay), "--out", str(tmp_path / "nd"), "--lengths", "300"]
    args += ["--depths", "0.5", "--method", "compressed", "--ratio", "4", "--model", str(model_dir)]
    args += ["--dtype", "float32", "--device", "cpu", "--max-new-tokens", "4", "--window", "32"]
    args += [f"--experts=a={tmp_path / 'experts-a'}", "--experts=untrained=", "--native-context", "256"]
    result = runner.invoke(app, [*args, "--sink", "1", "--memory-input", "span_last"])
    assert result.exit_code == 0, result.output
    untrained = json.loads((tmp_path / "nd" / "untrained-w32-r4" / "run.json").read_text())
    a = json.loads((tmp_path / "nd" / "a-w32-r4" / "run.json").read_text())
    assert untrained["experts"] is None and a["experts"] == str((tmp_path / "experts-a").resolve())
    for key in ("sink", "memory_input", "window", "native_context"):
        assert untrained["compressor"][key] == a["compressor"][key], key
    again = runner.invoke(app, args)  # the same folders without --sink: another mechanism, refused
    assert again.exit_code != 0 and "compressor" in str(again.exception)
    negative = runner.invoke(app, [*args, "--sink", "-1", "--out", str(tmp_path / "other")])
    assert negative.exit_code != 0 and "--sink" in str(negative.exception)


def test_an_experts_folder_with_an_equals_sign_is_a_folder_not_a_name(tmp_path: Path) -> None:
    from selfctx.commands.eval import _Methods

    folder = tmp_path / "lr=3e-4"
    folder.mkdir()
    entries = [str(folder), f"s400={tmp_path / 'b'}", "runs/lr=3e-4"]
    methods = _Methods("tiny", ["compressed"], entries, None, None, "float32", "cpu", "hf")
    assert methods.batteries == [(None, str(folder)), ("s400", str(tmp_path / "b")), (None, "runs/lr=3e-4")]
