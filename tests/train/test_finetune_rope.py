"""RoPE scaling through transformers' own implementations, and loading the result without selfctx."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_files import tiny_yarn_finetune
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from selfctx.errors import SelfctxError
from selfctx.tiny import TINY_TOKENIZER_VOCAB, tiny_llama, tiny_llama_config
from selfctx.train.config import RopeConfig
from selfctx.train.finetune import run_finetune
from selfctx.train.rope import apply_rope_scaling


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn", "llama3"])
def test_rope_scaling_sets_the_config_and_rebuilds_the_rotary_module(kind: str) -> None:
    model = tiny_llama(max_position_embeddings=256)
    before = model.model.rotary_emb.inv_freq.clone()
    params = apply_rope_scaling(
        model, RopeConfig(type=kind, target_length=1024, original_max_position_embeddings=128)
    )
    assert params is not None and params["factor"] == 8.0
    assert model.config.rope_parameters["rope_type"] == kind
    assert model.config.max_position_embeddings == (128 if kind == "dynamic" else 1024)
    expected, _ = ROPE_INIT_FUNCTIONS[kind](model.config, torch.device("cpu"))
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, expected)
    if kind == "linear":
        torch.testing.assert_close(model.model.rotary_emb.inv_freq, before / 8)
    elif kind != "dynamic":  # dynamic only changes frequencies past the native window, at run time
        assert not torch.equal(model.model.rotary_emb.inv_freq, before)


def test_rope_scaling_errors_say_what_to_set() -> None:
    with pytest.raises(SelfctxError, match="factor or rope.target_length"):
        apply_rope_scaling(tiny_llama(), RopeConfig(type="linear"))
    with pytest.raises(SelfctxError, match="shrink"):
        apply_rope_scaling(tiny_llama(), RopeConfig(type="yarn", factor=0.5))
    assert apply_rope_scaling(tiny_llama(), RopeConfig(type="none")) is None


def test_saved_adapter_loads_with_plain_transformers_and_peft_and_matches(
    tmp_path: Path, synth_dir: Path
) -> None:
    from peft import PeftModel

    cfg = tiny_yarn_finetune(tmp_path / "run", synth_dir, steps=8)
    result = run_finetune(cfg)
    assert result.final_dir is not None
    final = result.final_dir
    ids = torch.tensor([list(range(5, 5 + 200))])  # 200 tokens: past the 64-token "native" window
    with torch.no_grad():
        ours = result.model(input_ids=ids).logits
        config = AutoConfig.from_pretrained(final)
        assert config.rope_parameters["rope_type"] == "yarn" and config.max_position_embeddings == 256
        base = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "base", config=config)
        plain = PeftModel.from_pretrained(base, final).eval()
        theirs = plain(input_ids=ids).logits
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
        # The scaled config matters: the same weights with the unscaled RoPE give different logits.
        unscaled = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(
                tmp_path / "run" / "base", config=tiny_llama_config(vocab_size=TINY_TOKENIZER_VOCAB)
            ),
            final,
        ).eval()
        assert (unscaled(input_ids=ids).logits - ours).abs().max() > 1e-3
        # And training changed the model: LoRA disabled differs from enabled.
        with plain.disable_adapter():
            assert (plain(input_ids=ids).logits - theirs).abs().max() > 1e-3
    assert "PeftModel.from_pretrained" in (final / "LOADING.md").read_text()
