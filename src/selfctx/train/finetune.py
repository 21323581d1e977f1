"""`selfctx train --method finetune`: extend the window with RoPE scaling, then train LoRA (peft)
or all weights on the data mix with the shared loop, and save something plain transformers + peft load.

OUTPUT/final/ holds: adapter_config.json + adapter_model.safetensors (LoRA) or the full weights, the scaled
config.json, the tokenizer, and LOADING.md with the exact loading code. A base that only exists in memory
(the `tiny` test model) is saved under OUTPUT/base/ so the adapter has something to load onto.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfctx.config import to_dict
from selfctx.fsutil import write_json_atomic, write_text_atomic
from selfctx.train.config import FinetuneConfig
from selfctx.train.data import MixBatches, build_mix
from selfctx.train.distributed import barrier
from selfctx.train.loop import Trainer, TrainResult, check_before_loading, check_same_settings
from selfctx.train.objective import CausalLMObjective
from selfctx.train.rope import apply_rope_scaling
from selfctx.train.session import open_session


def prepare_trainable(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """Wrap in LoRA (peft) or unfreeze everything; turn on non-reentrant gradient checkpointing if asked."""
    if cfg.loop.gradient_checkpointing:
        # newer transformers renamed it (the old name warns); 5.17 has only the old one
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[operator]
        else:
            model.gradient_checkpointing_enable(  # type: ignore[operator]
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
    if cfg.method == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    # A fixed seed for LoRA's random init, so every rank (and a resumed run) builds the same adapter.
    torch.manual_seed(cfg.loop.seed)
    return get_peft_model(model, lora)


def base_reference(cfg: FinetuneConfig, output: Path) -> tuple[str, str | None]:
    """(folder or hub id, gguf file name or None) of the base, for loading code and adapter_config.json;
    an in-memory base is the copy the session saved under OUTPUT/base."""
    from selfctx.models import resolve_model

    spec = resolve_model(cfg.model.name)
    if spec.in_memory:
        return str((output / "base").resolve()), None
    return spec.folder, spec.gguf_file


def save_final(model: nn.Module, tokenizer: Any, cfg: FinetuneConfig, output: Path) -> Path:
    """Write the adapter (or full model), the scaled config and the tokenizer into output/final."""
    final = output / "final"
    final.mkdir(parents=True, exist_ok=True)
    base_folder, gguf_file = base_reference(cfg, output)
    if cfg.method == "lora":
        lm = model.get_base_model()  # type: ignore[operator]
        model.peft_config["default"].base_model_name_or_path = base_folder  # type: ignore[index, union-attr]
        model.save_pretrained(str(final))  # type: ignore[operator]
        lm.config.save_pretrained(str(final))
        if cfg.save_merged:
            merged = model.merge_and_unload()  # type: ignore[operator]
            merged.save_pretrained(str(output / "merged"))
            tokenizer.save_pretrained(str(output / "merged"))
    else:
        model.save_pretrained(str(final))  # type: ignore[operator]
    tokenizer.save_pretrained(str(final))
    write_text_atomic(final / "LOADING.md", _loading_doc(cfg, final, base_folder, gguf_file))
    return final


def _loading_doc(cfg: FinetuneConfig, final: Path, base: str, gguf_file: str | None) -> str:
    gguf = f', gguf_file="{gguf_file}"' if gguf_file else ""
    if cfg.method == "full":
        body = f'model = AutoModelForCausalLM.from_pretrained("{final}")\n'
    else:
        body = (
            f'config = AutoConfig.from_pretrained("{final}")  # carries the RoPE scaling\n'
            f'base = AutoModelForCausalLM.from_pretrained("{base}", config=config{gguf})\n'
            f'model = PeftModel.from_pretrained(base, "{final}")\n'
        )
    return (
        "# Loading this model without selfctx\n\n```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer\n\n"
        f'{body}tokenizer = AutoTokenizer.from_pretrained("{final}")\n```\n\n'
        f"RoPE: {to_dict(cfg.rope)}\n"
    )


@dataclass
class FinetuneResult:
    train: TrainResult
    model: nn.Module  # the trained model as it is in memory (PEFT-wrapped for LoRA)
    tokenizer: Any
    final_dir: Path | None  # None when the run stopped before max_steps


def run_finetune(
    cfg: FinetuneConfig,
    stop_after: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """Train (resuming from the latest checkpoint in cfg.loop.output_dir) and save OUTPUT/final on rank 0."""
    check_before_loading(cfg.model.name, cfg.loop, cfg.data)
    check_same_settings(Path(cfg.loop.output_dir), cfg)
    with open_session(cfg.model, cfg.loop, prepare=lambda base: apply_rope_scaling(base, cfg.rope)) as s:
        model = prepare_trainable(s.model, cfg)
        mix = build_mix(cfg.data, s.tokenizer, cfg.loop.seed)
        batches = MixBatches(mix, cfg.loop.micro_batch_size, cfg.loop.grad_accum_steps, s.pad_id)
        trainer = Trainer(
            cfg.loop, model, CausalLMObjective(), batches, dist_info=s.info, run_config=cfg, on_step=on_step
        )
        result = trainer.train(stop_after=stop_after)
        final: Path | None = None
        model.eval()
        if result.step >= cfg.loop.max_steps and s.info.is_main:
            final = save_final(model, s.tokenizer, cfg, s.output)
            write_json_atomic(final / "selfctx_train.json", to_dict(cfg))
        barrier(s.info)
        return FinetuneResult(result, model, s.tokenizer, final)
