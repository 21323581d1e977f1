"""Training objectives: what the loop minimises. An objective returns a *sum* of per-target losses and says
how many targets a batch has, so the loop can normalise by the whole global batch (exact under gradient
accumulation and data parallelism, whatever the padding).

The compression experts plug in their own objective with the same two methods.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from selfctx.train.examples import IGNORE_INDEX


class Objective(Protocol):
    def targets(self, batch: dict[str, Any]) -> int:
        """Number of loss terms in the batch (the normaliser)."""
        ...

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Sum of the per-target losses (a scalar that backpropagates into the trainable parameters)."""
        ...


def _causal_lm(model: nn.Module) -> Any:
    """The transformers CausalLM inside a (possibly PEFT-wrapped) model."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


class CausalLMObjective:
    """Next-token cross-entropy on positions whose label is not -100.

    Logits are formed only for target positions and in chunks under activation checkpointing, so an 8K-token
    sequence over a 49K vocabulary never materialises its full (8K x 49K) fp32 logits.
    """

    def __init__(self, chunk_tokens: int = 1024) -> None:
        self.chunk_tokens = chunk_tokens

    def targets(self, batch: dict[str, Any]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        lm = _causal_lm(model)
        decoder = lm.get_decoder()
        head = lm.get_output_embeddings()
        hidden = decoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE_INDEX
        states = hidden[:, :-1][keep]
        targets = labels[keep]
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, targets.numel(), self.chunk_tokens):
            part = slice(start, start + self.chunk_tokens)
            total = total + checkpoint(_chunk_loss, head, states[part], targets[part], use_reentrant=False)
        return total


def _chunk_loss(head: nn.Module, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(states).float()
    return nn.functional.cross_entropy(logits, targets, reduction="sum")
