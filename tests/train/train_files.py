"""Training-data folders for the train tests (importable by test modules, unlike conftest)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from selfctx.config import load_config
from selfctx.train.config import FinetuneConfig

WORDS = ["apple", "river", "stone", "cloud", "maple", "harbor", "lantern", "violet", "copper", "meadow"]


def write_synth_dir(root: Path, n: int = 12, seed: int = 0) -> Path:
    """A folder shaped like `selfctx synth` output: DIR/data/*.jsonl rows with chat messages + metadata."""
    rng = random.Random(seed)
    (root / "data").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        key = rng.choice(WORDS)
        context = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 40)))
        rows.append(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": f"{context}\nThe secret word is {key}. What is the secret word?",
                    },
                    {"role": "assistant", "content": key},
                ],
                "task": "qa",
                "bucket": "1k",
                "token_count": 100,
                "seed": i,
            }
        )
    for shard in range(2):
        with (root / "data" / f"shard-{shard:05d}.jsonl").open("w") as handle:
            for row in rows[shard::2]:
                handle.write(json.dumps(row) + "\n")
    return root


def write_text_dir(root: Path, n_docs: int = 3, seed: int = 1) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        (root / f"doc{i}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(120)))
    return root


def tiny_yarn_finetune(output_dir: Path, synth: Path, steps: int) -> FinetuneConfig:
    """A LoRA fine-tune of the tiny model with YaRN x4 over a 64-token window (so 256 positions)."""
    return load_config(
        FinetuneConfig,
        None,
        [
            "model.name=tiny",
            f"loop.output_dir={output_dir}",
            f"loop.max_steps={steps}",
            f"loop.save_every={steps}",
            f"data.sources=[{{kind: synth, path: {synth}}}]",
            "data.max_tokens=512",
            "lora.r=8",
            "loop.optim.lr=1e-2",
            "rope.type=yarn",
            "rope.factor=4",
            "rope.original_max_position_embeddings=64",
        ],
    )
