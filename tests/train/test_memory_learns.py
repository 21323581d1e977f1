"""A trained expert carries a secret through its memory: memorizing answers cannot pass this.

Each sample holds a secret token only inside its compressed window; the question sits in the raw tail. After
training, the answer is scored with the sample's own memory and with another sample's memory (same tail):
only a memory that carries the secret makes the first much more likely than the second."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from selfctx.compress import CompressedLM, ExpertBattery
from selfctx.compress.engine import cache_from_memory, extend
from selfctx.tiny import tiny_llama
from selfctx.train.config import LoopConfig, OptimConfig
from selfctx.train.data import collate
from selfctx.train.examples import IGNORE_INDEX, Example
from selfctx.train.experts import CompressionObjective, ExpertModule, ObjectiveSettings
from selfctx.train.loop import Trainer

WINDOW, RATIO, SINK, BATCH = 16, 4, 1, 16
SECRETS = list(range(10, 18))
QUESTION = 5


def secret_sample(rng: random.Random) -> Example:
    secret = rng.choice(SECRETS)
    window = [rng.randrange(40, 250) for _ in range(WINDOW)]
    window[rng.choice((3, 7))] = secret  # the last token of a span: where span_last starts its memory token
    ids = [1, *window, *(rng.randrange(40, 250) for _ in range(5)), QUESTION, secret]
    return Example(tuple(ids), (IGNORE_INDEX,) * (len(ids) - 1) + (secret,), "secret")


class SecretBatches:
    def samples_per_step(self, world: int) -> int:
        return BATCH * world

    def micro_batches(self, step: int, rank: int, world: int, device: Any) -> list[dict[str, Any]]:
        rng = random.Random(f"secret-{step}-{rank}")
        return [collate([secret_sample(rng) for _ in range(BATCH)], 0, device)]


def answer_nll(lm: CompressedLM, memory_ids: tuple[int, ...], own: Example) -> float:
    with torch.no_grad():
        memory, _ = lm.compress_ids(torch.tensor([memory_ids]), RATIO)
        tail = torch.tensor([own.input_ids[SINK + WINDOW : -1]])
        cache = cache_from_memory(lm.parts, memory, 1)
        logits, _ = extend(
            lm.parts, cache, tail, torch.ones_like(tail), adapter=lm.battery.adapter_for(RATIO)
        )
    assert logits is not None
    return float(-torch.log_softmax(logits[0].float(), -1)[own.input_ids[-1]])


def test_a_trained_expert_answers_from_its_own_memory_not_anothers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_llama(seed=0, initializer_range=0.2)
    battery = ExpertBattery.create(model, (RATIO,), memory_input="span_last")
    lm = CompressedLM(model, None, battery, window=WINDOW, native_context=256, sink=SINK)
    module = ExpertModule(lm)
    module.select(RATIO)
    loop = LoopConfig(
        output_dir=str(tmp_path), max_steps=60, micro_batch_size=BATCH, save_every=60,
        optim=OptimConfig(lr=1e-2, warmup_steps=3),
    )  # fmt: skip
    objective = CompressionObjective(RATIO, False, ObjectiveSettings(kind="lm"), None, (SINK, WINDOW))
    Trainer(loop, module, objective, SecretBatches()).train()
    rng = random.Random("held-out")
    items = [secret_sample(rng) for _ in range(32)]
    head = SINK + WINDOW
    right = [answer_nll(lm, item.input_ids[:head], item) for item in items]
    wrong = [answer_nll(lm, items[(i + 1) % 32].input_ids[:head], item) for i, item in enumerate(items)]
    # another sample's memory usually holds another secret: a memory that carries it must lose there
    differs = [i for i, item in enumerate(items) if item.input_ids[-1] != items[(i + 1) % 32].input_ids[-1]]
    mean_right = sum(right[i] for i in differs) / len(differs)
    mean_wrong = sum(wrong[i] for i in differs) / len(differs)
    assert mean_right < 0.5 * mean_wrong, (mean_right, mean_wrong)
