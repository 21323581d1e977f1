"""Write a synthesized dataset: JSONL shards that `datasets` loads, a dataset card, histogram and manifest.

    writer = DatasetWriter(out_dir, formats=("jsonl", "parquet"))
    for sample in samples:
        writer.add(sample)                    # shards of `shard_size` rows, each written atomically
    writer.finalize(resolved_config, summary)  # README.md, length_histogram.png, config.yaml, manifest.json

Layout: out_dir/data/train-00000.jsonl ... (and out_dir/data_parquet/*.parquet when asked). Every row is
`messages` (user, assistant) plus the metadata columns in ROW_COLUMNS; `extra` is a JSON string because its
keys differ between tasks (Arrow needs one schema). `datasets.load_dataset(out_dir)` works through the
card's `configs:` header, `datasets.load_dataset("json", data_files=f"{out_dir}/data/*.jsonl")` directly.
A re-run into the same directory rewrites the shards; `finalize` removes shards the run did not write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import IO, Any

import yaml

from selfctx.fsutil import atomic_open, write_json_atomic, write_text_atomic
from selfctx.models import EMBEDDED_ALIASES, EMBEDDED_HUB_ID, EMBEDDED_MODEL
from selfctx.synth.lengths import BUCKETS
from selfctx.synth.types import Sample

# The columns of a dataset row, one source for the Parquet schema and the card's `dataset_info`.
FEATURES: tuple[tuple[str, str], ...] = (
    ("messages", "messages"),
    ("task", "string"),
    ("bucket", "string"),
    ("token_count", "int64"),
    ("target_tokens", "int64"),
    ("n_distractors", "int64"),
    ("gold_positions", "int64[]"),
    ("nouns", "string[]"),
    ("seed", "int64"),
    ("model", "string"),
    ("repeated_distractors", "bool"),
    ("extra", "string"),
)


def _arrow_type(kind: str) -> Any:
    import pyarrow as pa

    if kind == "messages":
        return pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    if kind.endswith("[]"):
        return pa.list_(_arrow_type(kind[:-2]))
    return {"string": pa.string(), "int64": pa.int64(), "bool": pa.bool_()}[kind]


# Models we know: (hub id, licence of their outputs). Others: their own name, "other" (their terms apply).
_KNOWN_MODELS = {EMBEDDED_MODEL: (EMBEDDED_HUB_ID, "apache-2.0")}


def model_identity(model_id: str) -> tuple[str, str]:
    """(base_model, license) for a card, from a backend's model id such as "llamacpp:smollm2-135m"."""
    name = model_id.split(":", 1)[-1]
    return _KNOWN_MODELS.get(EMBEDDED_MODEL if name.lower() in EMBEDDED_ALIASES else name, (name, "other"))


def card_features() -> list[dict[str, Any]]:
    """FEATURES as a Hugging Face dataset card's `dataset_info.features`."""
    out: list[dict[str, Any]] = []
    for name, kind in FEATURES:
        if kind == "messages":
            fields = [{"name": "role", "dtype": "string"}, {"name": "content", "dtype": "string"}]
            out.append({"name": name, "list": fields})
        elif kind.endswith("[]"):
            out.append({"name": name, "sequence": kind[:-2]})
        else:
            out.append({"name": name, "dtype": kind})
    return out


DATA_DIR = "data"
PARQUET_DIR = "data_parquet"
SHARD_NAME = "train-{index:05d}.{ext}"
ROW_COLUMNS = (
    "messages", "task", "bucket", "token_count", "target_tokens", "n_distractors", "gold_positions", "nouns",
    "seed", "model", "repeated_distractors", "extra",
)  # fmt: skip
FORMATS = ("jsonl", "parquet")


def sample_row(data: Mapping[str, Any]) -> dict[str, Any]:
    """A dataset row from Sample.to_json() (or the same metadata): fixed columns, `extra` as a JSON string."""
    row = {column: data.get(column) for column in ROW_COLUMNS}
    row["messages"] = [{"role": m["role"], "content": m["content"]} for m in data.get("messages", ())]
    row["gold_positions"] = [int(p) for p in data.get("gold_positions", ())]
    row["nouns"] = [str(n) for n in data.get("nouns", ())]
    extra = data.get("extra") or {}
    row["extra"] = extra if isinstance(extra, str) else json.dumps(extra, ensure_ascii=False, sort_keys=True)
    return row


def _sha256(path: Path) -> tuple[str, int, int]:
    """sha256, byte size and line count of a file, read in chunks."""
    digest, size, lines = hashlib.sha256(), 0, 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
    return digest.hexdigest(), size, lines


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("selfctx", "transformers", "tokenizers", "datasets", "torch", "llama_cpp_python"):
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            versions[package] = importlib_metadata.version(package.replace("_", "-"))
    return versions


class DatasetWriter:
    """Writes Sample rows to atomic JSONL shards; on finalize, the card, histogram, config and manifest."""

    def __init__(
        self, out_dir: str | Path, *, shard_size: int = 1000, formats: Iterable[str] = ("jsonl",)
    ) -> None:
        self.out_dir = Path(out_dir)
        self.formats = tuple(formats)
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise ValueError(f"formats must be among {FORMATS}, got {self.formats}")
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        self.shard_size = shard_size
        self._buffer: list[dict[str, Any]] = []
        self._shards: list[Path] = []
        self._stats: list[dict[str, Any]] = []  # light metadata per row, for the card
        (self.out_dir / DATA_DIR).mkdir(parents=True, exist_ok=True)

    @property
    def n_rows(self) -> int:
        return len(self._stats)

    def _next_shard(self) -> Path:
        path = self.out_dir / DATA_DIR / SHARD_NAME.format(index=len(self._shards), ext="jsonl")
        self._shards.append(path)
        return path

    def record(self, metadata: Mapping[str, Any]) -> None:
        """Note a row's metadata for the card (add() does this; streamed rows call it themselves)."""
        self._stats.append(
            {
                key: metadata.get(key)
                for key in ("task", "bucket", "token_count", "target_tokens", "n_distractors")
            }
            | {"repeated_distractors": bool(metadata.get("repeated_distractors"))}
        )

    def add(self, sample: Sample | Mapping[str, Any]) -> None:
        data = sample.to_json() if isinstance(sample, Sample) else sample
        row = sample_row(data)
        self._buffer.append(row)
        self.record(row)
        if len(self._buffer) >= self.shard_size:
            self.flush()

    def add_many(self, samples: Iterable[Sample | Mapping[str, Any]]) -> None:
        for sample in samples:
            self.add(sample)

    def flush(self) -> None:
        """Write buffered rows as one shard (atomically)."""
        if not self._buffer:
            return
        with atomic_open(self._next_shard(), "w") as handle:
            for row in self._buffer:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._buffer = []

    @contextlib.contextmanager
    def stream_shard(self) -> Iterator[IO[Any]]:
        """A shard of its own for rows written piece by piece (e.g. assemble.stream_sample); atomic.

        Call record(metadata) for each row written, so the card counts it.
        """
        self.flush()
        with atomic_open(self._next_shard(), "w") as handle:
            yield handle

    # ---- finalize -------------------------------------------------------------------------------------

    def finalize(self, resolved_config: Mapping[str, Any], summary: Mapping[str, Any]) -> Path:
        """Write README.md (dataset card), length_histogram.png, config.yaml, manifest.json; return out_dir.

        `summary` may hold: command (str), model, seed, filters ({name: dropped}), backend_stats (dict),
        and any other scalar figures (shown in the card's run table).
        """
        self.flush()
        self._remove_stale_shards()
        parquet = self._write_parquet() if "parquet" in self.formats else []
        if "jsonl" not in self.formats:
            for shard in self._shards:
                shard.unlink()
        write_text_atomic(
            self.out_dir / "config.yaml", yaml.safe_dump(_plain(resolved_config), sort_keys=False)
        )
        self._write_histogram(self.out_dir / "length_histogram.png")
        write_text_atomic(self.out_dir / "README.md", self._card(resolved_config, summary))
        files = ([*self._shards] if "jsonl" in self.formats else []) + parquet
        self._write_manifest(files, resolved_config, summary)
        return self.out_dir

    def _remove_stale_shards(self) -> None:
        keep = set(self._shards)
        for folder, ext in ((DATA_DIR, "jsonl"), (PARQUET_DIR, "parquet")):
            for path in (
                (self.out_dir / folder).glob(f"train-*.{ext}") if (self.out_dir / folder).is_dir() else []
            ):
                if ext == "jsonl" and path not in keep:
                    path.unlink()
                elif ext == "parquet":
                    path.unlink()  # rewritten from the JSONL shards below

    def _write_parquet(self) -> list[Path]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([(name, _arrow_type(kind)) for name, kind in FEATURES])
        written = []
        for index, shard in enumerate(self._shards):
            path = self.out_dir / PARQUET_DIR / SHARD_NAME.format(index=index, ext="parquet")
            with shard.open(encoding="utf-8") as handle:
                rows = [json.loads(line) for line in handle if line.strip()]
            table = pa.Table.from_pylist(rows, schema=schema)
            with atomic_open(path, "wb") as out:
                pq.write_table(table, out)
            written.append(path)
        return written

    def _data_glob(self) -> str:
        return f"{DATA_DIR}/*.jsonl" if "jsonl" in self.formats else f"{PARQUET_DIR}/*.parquet"

    def _write_histogram(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        by_task: dict[str, list[int]] = defaultdict(list)
        for stat in self._stats:
            by_task[str(stat["task"])].append(int(stat["token_count"]))
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        counts = [c for values in by_task.values() for c in values]
        if counts:
            import numpy as np

            lo, hi = max(min(counts), 1), max(counts)
            bins = list(np.geomspace(lo * 0.95, hi * 1.05, 40)) if hi > lo * 1.2 else 20
            ax.hist(list(by_task.values()), bins=bins, stacked=True, label=list(by_task))
            if hi > lo * 1.2:
                ax.set_xscale("log")
            for edge in {b for _, b in BUCKETS.values()} | {a for a, _ in BUCKETS.values()}:
                if lo * 0.95 <= edge <= hi * 1.05:
                    ax.axvline(edge, color="grey", lw=0.6, ls="--")
            ax.legend(fontsize=8)
        ax.set_xlabel("tokens per sample (target tokenizer, whole chat sample)")
        ax.set_ylabel("samples")
        ax.set_title(f"Sample lengths ({len(counts)} samples; dashed lines: bucket edges)")
        fig.tight_layout()
        with atomic_open(path, "wb") as handle:
            fig.savefig(handle, format="png")
        plt.close(fig)

    def _card(self, config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
        n = len(self._stats)
        model = summary.get("model", config.get("model", "?"))
        base_model, license_id = model_identity(str(model))
        header = {
            "license": license_id,
            "language": ["en"],
            "base_model": base_model,  # the model that wrote every passage, question and answer
            "configs": [
                {"config_name": "default", "data_files": [{"split": "train", "path": self._data_glob()}]}
            ],
            "dataset_info": {"features": card_features(), "splits": [{"name": "train", "num_examples": n}]},
            "task_categories": ["text-generation"],
            "tags": ["long-context", "synthetic", "selfctx"],
            "size_categories": ["n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K"],
        }
        seed = summary.get("seed", config.get("seed", "?"))
        lines = [
            "---",
            yaml.safe_dump(header, sort_keys=False).strip(),
            "---",
            "",
            "# selfctx synthetic long-context dataset",
            "",
        ]
        lines += [
            f"{n} chat samples written by **{model}** about its own passages (seed {seed}), padded with "
            "distractor passages to their target length under the model's tokenizer (by `selfctx synth`).",
            "",
        ]
        if summary.get("command"):
            lines += ["Command:", "", "```", str(summary["command"]), "```", ""]
        lines += [
            'Load it with `datasets.load_dataset("<this folder>")` or '
            f'`datasets.load_dataset("json", data_files="<this folder>/{DATA_DIR}/*.jsonl")`'
            + (f" (Parquet copies in `{PARQUET_DIR}/`)." if "parquet" in self.formats else "."),
            "",
            "Columns: `messages` (user = passages + instruction + question, assistant = answer), `task`, "
            "`bucket`, `token_count` (measured, whole chat sample), `target_tokens`, `n_distractors`, "
            "`gold_positions` (1-based passage indices of the relevant passages), `nouns`, `seed`, `model`, "
            "`repeated_distractors`, `extra` (JSON string).",
            "",
            "## Samples per task and length bucket",
            "",
        ]
        lines += self._count_table()
        lines += ["", "## Token lengths", "", "![length histogram](length_histogram.png)", ""]
        lines += self._length_table()
        filters = summary.get("filters") or {}
        lines += ["", "## Quality filters (what was dropped)", ""]
        if filters:
            lines += ["| filter | dropped |", "|---|---:|"]
            lines += [f"| {name} | {count} |" for name, count in filters.items()]
        else:
            lines += ["No filter counts were reported for this run."]
        stats = summary.get("backend_stats") or {}
        if stats:
            lines += ["", "## Generation backend", "", "| figure | value |", "|---|---|"]
            lines += [f"| {key} | {_fmt(value)} |" for key, value in stats.items()]
        other = {
            k: v
            for k, v in summary.items()
            if k not in ("command", "filters", "backend_stats", "model", "seed")
        }
        if other:
            lines += ["", "## Run", "", "| figure | value |", "|---|---|"]
            lines += [f"| {key} | {_fmt(value)} |" for key, value in other.items()]
        lines += [
            "",
            "The resolved configuration is in `config.yaml`; files and checksums in `manifest.json`.",
            "",
        ]
        return "\n".join(lines)

    def _count_table(self) -> list[str]:
        counts = Counter((str(s["task"]), str(s["bucket"])) for s in self._stats)
        tasks = sorted({t for t, _ in counts})
        order = list(BUCKETS)
        buckets = sorted({b for _, b in counts}, key=lambda b: order.index(b) if b in order else len(order))
        if not tasks:
            return ["No samples."]
        rows = ["| task | " + " | ".join(buckets) + " | total |", "|---|" + "---:|" * (len(buckets) + 1)]
        for task in tasks:
            cells = [str(counts[(task, b)]) for b in buckets]
            rows.append(
                f"| {task} | " + " | ".join(cells) + f" | {sum(counts[(task, b)] for b in buckets)} |"
            )
        totals = [str(sum(counts[(t, b)] for t in tasks)) for b in buckets]
        rows.append("| **total** | " + " | ".join(totals) + f" | {len(self._stats)} |")
        return rows

    def _length_table(self) -> list[str]:
        by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for stat in self._stats:
            by_task[str(stat["task"])].append(stat)
        if not by_task:
            return []
        rows = [
            "| task | samples | min | median | mean | max | max abs(count - target)/target | repeated |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for task, stats in [*sorted(by_task.items()), ("**all**", self._stats)]:
            counts = [int(s["token_count"]) for s in stats]
            errors = [abs(int(s["token_count"]) - int(s["target_tokens"])) / int(s["target_tokens"])
                      for s in stats if s.get("target_tokens")]  # fmt: skip
            rows.append(
                f"| {task} | {len(counts)} | {min(counts):,} | {int(statistics.median(counts)):,} | "
                f"{statistics.fmean(counts):,.0f} | {max(counts):,} | "
                f"{(max(errors) * 100 if errors else 0):.2f}% | "
                f"{sum(s['repeated_distractors'] for s in stats)} |"
            )
        return rows

    def _write_manifest(
        self, files: list[Path], config: Mapping[str, Any], summary: Mapping[str, Any]
    ) -> None:
        entries = []
        for path in [*files, self.out_dir / "README.md", self.out_dir / "length_histogram.png",
                     self.out_dir / "config.yaml"]:  # fmt: skip
            digest, size, lines = _sha256(path)
            entry: dict[str, Any] = {
                "path": path.relative_to(self.out_dir).as_posix(),
                "bytes": size,
                "sha256": digest,
            }
            if path.suffix == ".jsonl":
                entry["rows"] = lines
            elif path.suffix == ".parquet":
                import pyarrow.parquet as pq

                entry["rows"] = pq.ParquetFile(path).metadata.num_rows
            entries.append(entry)
        write_json_atomic(
            self.out_dir / "manifest.json",
            {
                "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "rows": len(self._stats),
                "model": summary.get("model", config.get("model")),
                "seed": summary.get("seed", config.get("seed")),
                "command": summary.get("command", " ".join(sys.argv)),
                "counts": {
                    f"{t}/{b}": c
                    for (t, b), c in sorted(
                        Counter((str(s["task"]), str(s["bucket"])) for s in self._stats).items()
                    )
                },
                "versions": _versions(),
                "files": entries,
            },
        )


def _plain(value: Any) -> Any:
    """Config values as YAML-safe plain data."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")
