"""Training-data folders for the train tests (importable by test modules, unlike conftest)."""

from __future__ import annotations

import json
import random
from pathlib import Path

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
