"""A fine-tune's final/ folder is one more model spec: load_causal_lm, CompressedLM, `selfctx eval` and the
server take it (RoPE scaling from its config, LoRA merged) and read exactly what training left."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
import torch
from train_files import tiny_yarn_finetune, write_synth_dir
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from selfctx.cli import app
from selfctx.compress import CompressedLM
from selfctx.errors import SelfctxError
from selfctx.models import ModelSpec, load_causal_lm, load_model_config, resolve_model
from selfctx.serve import ServeConfig, serve_in_thread
from selfctx.train.finetune import FinetuneResult, run_finetune

IDS = torch.tensor([list(range(5, 5 + 200))])  # 200 tokens: past the 64-token window the run started from


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> FinetuneResult:
    root = tmp_path_factory.mktemp("ft")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = tiny_yarn_finetune(root / "run", write_synth_dir(root / "synth"), steps=6)
        result = run_finetune(cfg)
    finally:
        torch.set_num_threads(before)
    assert result.final_dir is not None
    return result


def test_final_folder_resolves_to_its_base_plus_the_adapter(finetuned: FinetuneResult) -> None:
    final = finetuned.final_dir
    assert final is not None
    spec = resolve_model(str(final))
    assert spec.adapter == str(final.resolve())
    assert spec.folder == str((final.parent / "base").resolve())
    assert spec.name.endswith("+run") and not spec.runs_on_llamacpp
    assert load_model_config(spec).max_position_embeddings == 256


def test_loaded_finetune_matches_the_trained_model_past_the_old_window(finetuned: FinetuneResult) -> None:
    model, _ = load_causal_lm(str(finetuned.final_dir), dtype="float32", device="cpu")
    assert model.config.rope_parameters["rope_type"] == "yarn"
    assert model.config.max_position_embeddings == 256
    with torch.no_grad():
        ours = finetuned.model(input_ids=IDS).logits
        loaded = model(input_ids=IDS).logits
        base = AutoModelForCausalLM.from_pretrained(finetuned.final_dir.parent / "base")
        untrained = base(input_ids=IDS).logits
    torch.testing.assert_close(loaded, ours, atol=1e-5, rtol=1e-4)
    assert (untrained - ours).abs().max() > 1e-3  # the adapter was applied, not just the base loaded


def test_compressed_lm_and_the_server_read_with_the_finetune(finetuned: FinetuneResult) -> None:
    lm = CompressedLM.from_pretrained(str(finetuned.final_dir), window=16, dtype="float32", device="cpu")
    assert lm.native_context == 256  # the scaled window: contexts up to it are read in full
    lm.eval()
    context = " ".join(f"w{i}" for i in range(30))
    direct = lm.generate(context=context, prompt="next?", max_new_tokens=6)
    assert direct.ratio == 1 and direct.expert is None  # within the scaled window: no compression
    config = ServeConfig(model_name="ft", answer_budget=64, default_max_tokens=6, max_input_tokens=4000)
    with serve_in_thread(lm, config) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)
        reply = client.chat.completions.create(
            model="ft",
            messages=[{"role": "system", "content": context}, {"role": "user", "content": "next?"}],
            max_tokens=6,
            temperature=0,
        )
    assert reply.choices[0].message.content == direct.text


def test_eval_cli_names_finetune_runs_apart(finetuned: FinetuneResult, tmp_path: Path) -> None:
    hay = tmp_path / "hay"
    hay.mkdir()
    (hay / "a.txt").write_text(" ".join(f"Line {i} is here." for i in range(100)))
    out = tmp_path / "nd"
    args = ["eval", "needle", "--haystack", str(hay), "--out", str(out), "--lengths", "200"]
    args += ["--depths", "0.5", "--max-new-tokens", "4", "--method", "truncate,full"]
    args += ["--model", str(finetuned.final_dir), "--dtype", "float32", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["finetune-full", "finetune-truncate-256"]
    run = json.loads((out / "finetune-full" / "run.json").read_text())
    assert run["benchmark"] == "needle"


def test_adapter_errors_are_one_line(tmp_path: Path, finetuned: FinetuneResult) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": None}))
    with pytest.raises(SelfctxError, match="no config.json"):
        resolve_model(str(bare))
    (bare / "config.json").write_text("{}")
    with pytest.raises(SelfctxError, match="names no base model"):
        resolve_model(str(bare))
    over_gguf = ModelSpec(name="m+ft", folder=str(tmp_path), gguf_file="m.gguf", adapter=str(bare))
    with pytest.raises(SelfctxError, match="llama.cpp cannot apply: use the hf backend"):
        _ = over_gguf.gguf_path
    (tmp_path / "a.txt").write_text("Some haystack text. " * 50)
    result = CliRunner().invoke(
        app,
        ["eval", "needle", "--haystack", str(tmp_path), "--out", str(tmp_path / "o")]
        + ["--model", str(finetuned.final_dir), "--backend", "llamacpp"],
    )
    assert result.exit_code != 0 and "llamacpp backend needs a .gguf model" in str(result.exception)
