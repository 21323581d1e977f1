"""What every training recipe sets up the same way: the process group, the device and dtype, the frozen or
trainable base model and its tokenizer, and the pad id; torn down on the way out.

    with open_session(cfg.model, cfg.loop) as s:
        trainer = Trainer(cfg.loop, recipe_module(s.model), objective, MixBatches(mix, ..., s.pad_id), ...)

A base that only exists in memory (the `tiny` test model) is saved under OUTPUT/base/ so what the run saves
(experts, an adapter) has something to load onto.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selfctx.errors import SelfctxError
from selfctx.train.config import LoopConfig, ModelSettings
from selfctx.train.distributed import DistInfo, cleanup, init_distributed, resolve_device


@dataclass
class Session:
    info: DistInfo
    device: torch.device
    dtype: torch.dtype
    model: Any
    tokenizer: Any
    pad_id: int
    output: Path


def load_model(
    settings: ModelSettings, seed: int, device: torch.device, dtype: torch.dtype, *, tiny_init: float = 0.02
) -> tuple[Any, Any]:
    """The base model and its tokenizer (`tiny`: a random tiny Llama, seeded, with a byte tokenizer)."""
    from selfctx.models import load_causal_lm

    return load_causal_lm(
        settings.name,
        dtype=dtype,
        device=str(device),
        attn_implementation=settings.attn_implementation,
        seed=seed,
        in_memory_config={"initializer_range": tiny_init},
    )


@contextmanager
def open_session(
    settings: ModelSettings,
    loop: LoopConfig,
    *,
    tiny_init: float = 0.02,
    prepare: Callable[[Any], object] | None = None,
) -> Iterator[Session]:
    """Set up one training process; `prepare(model)` changes the base before a tiny one is saved."""
    from selfctx.models import resolve_dtype, resolve_model

    info = init_distributed(loop.device)
    try:
        device = resolve_device(loop.device, info)
        dtype = resolve_dtype(loop.dtype, device.type)
        model, tokenizer = load_model(settings, loop.seed, device, dtype, tiny_init=tiny_init)
        if prepare is not None:
            prepare(model)
        output = Path(loop.output_dir)
        if (
            resolve_model(settings.name).in_memory and info.is_main
        ):  # an in-memory base: keep it beside what the run saves
            model.save_pretrained(str(output / "base"))
            tokenizer.save_pretrained(str(output / "base"))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise SelfctxError("the tokenizer has neither a pad nor an eos token: pick another model")
        yield Session(info, device, dtype, model, tokenizer, int(pad_id), output)
    finally:
        cleanup(info)
