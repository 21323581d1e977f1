"""`selfctx bench probe`: can an expert learn, in minutes, to carry a fact through its memory?

Each item is [sink][window 1: chat header, filler, "The passkey is N.", filler][gap: `gap` windows of
filler][raw tail: filler, the question][answer N]: the passkey is only in a compressed window, so the answer
can come from nowhere but the memory; `gap` sets how far back it lies. One expert is trained for a few minutes
per seed (the real training loop and objective) — or a trained battery is loaded (`--battery`) — then the
answer's negative log-likelihood per token is measured on held-out items four ways:

- right: the item's own memory (what the expert should make informative);
- wrong: another item's memory, same tail (the memory is read, but it holds another passkey);
- none:  no compressed memory at all (the sink and the tail only);
- full:  the whole item read raw with full attention (what the memory should approach).

A memory that carries the passkey gives right << wrong; untrained memory gives right ~ wrong. Settings
(memory input, sink, objective, ratio, window, learning rate) are options, so each choice of the expert recipe
is decided by this measurement; benchmarks/BENCHMARKS.md records each setting tried.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from selfctx.errors import SelfctxError

_QUESTION = "\n\nWhat is the passkey? Answer with the number only."


@dataclass(frozen=True)
class ProbeItem:
    context: tuple[int, ...]  # everything before the answer
    answer: tuple[int, ...]


class ProbeTask:
    """Token-level construction of probe items, so the passkey provably sits in the first full window."""

    def __init__(
        self,
        tokenizer: Any,
        filler_texts: list[str],
        window: int,
        sink: int,
        digits: int = 5,
        gap: int = 0,
    ) -> None:
        self.tokenizer = tokenizer
        self.window = window
        self.sink = sink
        self.digits = digits
        self.gap = gap
        stream: list[int] = []
        for text in filler_texts:
            stream.extend(self._ids(text + "\n\n"))
            if len(stream) > 200_000:
                break
        need = (4 + gap) * window
        if len(stream) < need:
            raise SelfctxError(f"the filler holds {len(stream)} tokens, need >= {need}: give more text")
        self.stream = stream
        head, rest = str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": "\u0000"}], tokenize=False, add_generation_prompt=True
            )
        ).split("\u0000")
        self.head = self._ids(head)
        self.question_end = self._ids(_QUESTION + rest)
        # the raw tail (filler + question) must stay shorter than a window, or it would be compressed too
        self.tail_room = window - len(self.question_end) - 1
        if len(self.head) + 24 > sink + window or self.tail_room < 8:
            raise SelfctxError(
                f"window {window} is too small for the chat header ({len(self.head)} tokens), a passkey and "
                f"the question ({len(self.question_end)} tokens): use a larger --window"
            )

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _filler(self, rng: random.Random, n: int) -> list[int]:
        start = rng.randrange(0, len(self.stream) - n)
        return self.stream[start : start + n]

    def item(self, rng: random.Random) -> ProbeItem:
        key = str(rng.randrange(10 ** (self.digits - 1), 10**self.digits))
        fact = self._ids(f" The passkey is {key}. ")
        room = self.sink + self.window - len(self.head) - len(fact)  # filler tokens in window 1
        before = rng.randint(0, room)
        first = self.head + self._filler(rng, before) + fact + self._filler(rng, room - before)
        first += self._filler(rng, self.gap * self.window)
        tail = self._filler(rng, rng.randint(self.tail_room // 2, self.tail_room))
        return ProbeItem(tuple(first + tail + self.question_end), tuple(self._ids(key)))


class _ProbeBatches:
    """Fresh seeded items for every micro-batch (the loop's BatchSource protocol)."""

    def __init__(self, task: ProbeTask, batch: int, seed: int, pad_id: int) -> None:
        self.task, self.batch, self.seed, self.pad_id = task, batch, seed, pad_id

    def samples_per_step(self, world: int) -> int:
        return self.batch * world

    def micro_batches(self, step: int, rank: int, world: int, device: Any) -> list[dict[str, Any]]:
        from selfctx.train.data import collate
        from selfctx.train.examples import IGNORE_INDEX, Example

        rng = random.Random(f"probe-train-{self.seed}-{step}-{rank}")
        examples = []
        for _ in range(self.batch):
            item = self.task.item(rng)
            ids = item.context + item.answer
            labels = (IGNORE_INDEX,) * len(item.context) + item.answer
            examples.append(Example(ids, labels, "probe"))
        return [collate(examples, self.pad_id, device)]


def _answer_nll(
    lm: Any, layers: Any, raw: list[int], answer: tuple[int, ...], adapter: Any
) -> tuple[float, bool]:
    """(mean NLL per answer token, every answer token the argmax) reading `raw` + answer over `layers`."""
    import torch
    import torch.nn.functional as F

    from selfctx.compress.engine import cache_from_memory, extend

    cache = cache_from_memory(lm.parts, layers, 1)
    ids = torch.tensor([raw + list(answer[:-1])], device=lm.device)
    logits, _ = extend(lm.parts, cache, ids, torch.ones_like(ids), logits_for="all", adapter=adapter)
    assert logits is not None
    wanted = torch.tensor(answer, device=lm.device)
    scores = logits[0, len(raw) - 1 :].float()  # (len(answer), V)
    nll = F.cross_entropy(scores, wanted, reduction="mean")
    return float(nll), bool((scores.argmax(-1) == wanted).all())


def evaluate(lm: Any, ratio: int, items: list[ProbeItem]) -> dict[str, dict[str, float]]:
    """Mean answer NLL per token (with its standard error) and exact rate for right/wrong/none/full, and the
    paired difference right - wrong per item."""
    import torch

    from selfctx.compress.engine import LayerMemory, empty_memory

    adapter = lm.battery.adapter_for(ratio)
    compressed = []
    empty = empty_memory(lm.parts, 1, lm.parts.embed_tokens.weight)
    with torch.no_grad():
        for item in items:
            ids = torch.tensor([item.context], device=lm.device)
            layers, tail = lm.compress_ids(ids, ratio)
            # the raw sink is the head of every compressed memory: "no memory" keeps just that
            sink_layers = [LayerMemory(m.keys[:, :, : lm.sink], m.values[:, :, : lm.sink]) for m in layers]
            compressed.append((layers, tail[0].tolist(), sink_layers))
        results: dict[str, list[tuple[float, bool]]] = {k: [] for k in ("right", "wrong", "none", "full")}
        for i, item in enumerate(items):
            layers, tail, sink_layers = compressed[i]
            other = compressed[(i + 1) % len(items)][0]
            results["right"].append(_answer_nll(lm, layers, tail, item.answer, adapter))
            results["wrong"].append(_answer_nll(lm, other, tail, item.answer, adapter))
            results["none"].append(_answer_nll(lm, sink_layers, tail, item.answer, adapter))
            results["full"].append(_answer_nll(lm, empty, list(item.context), item.answer, None))
    summary = {}
    for name, rows in results.items():
        mean, stderr = _mean_stderr([r[0] for r in rows])
        summary[name] = {"nll": mean, "nll_stderr": stderr, "exact": sum(r[1] for r in rows) / len(rows)}
    # paired per item (same tail, same answer): the memory's own effect, free of the items' spread
    gaps = [r[0] - w[0] for r, w in zip(results["right"], results["wrong"], strict=True)]
    mean, stderr = _mean_stderr(gaps)
    summary["right_minus_wrong"] = {"nll": mean, "nll_stderr": stderr}
    return summary


def _mean_stderr(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((x - mean) ** 2 for x in values) / max(1, len(values) - 1)
    return mean, math.sqrt(var / len(values))


def _filler_texts(path: Path) -> list[str]:
    from selfctx.train.data import text_documents

    texts = text_documents(path)
    random.Random(0).shuffle(texts)
    return texts


def command(
    filler: Annotated[
        Path, typer.Option(help="Filler text: a `selfctx synth` pool folder, .txt/.jsonl files or a folder.")
    ],
    model: Annotated[str, typer.Option(help="Model spec.")] = "smollm2-135m",
    battery: Annotated[
        Path | None,
        typer.Option(help="Evaluate this trained battery instead of training (its window and sink)."),
    ] = None,
    ratio: Annotated[int, typer.Option(help="The expert's compression ratio.")] = 4,
    window: Annotated[int, typer.Option(help="Compression window W (the passkey sits in the first).")] = 64,
    gap: Annotated[int, typer.Option(help="Filler windows between the passkey and the raw tail.")] = 0,
    task: Annotated[
        str,
        typer.Option(
            help="passkey (the probe's items) | recall (held-out samples of the training recall source: "
            "facts among the filler, keys to match; with --battery)"
        ),
    ] = "passkey",
    lengths: Annotated[
        str, typer.Option(help="Token range of --task recall items, e.g. 600-2000.")
    ] = "600-2000",
    sink: Annotated[int, typer.Option(help="Raw sink tokens kept at position 0.")] = 1,
    memory_input: Annotated[str, typer.Option(help="shared | span_last")] = "span_last",
    objective: Annotated[str, typer.Option(help="lm | distill | mix")] = "mix",
    steps: Annotated[int, typer.Option(help="Optimizer steps per seed (0: the untrained expert).")] = 150,
    batch: Annotated[int, typer.Option(help="Items per optimizer step.")] = 4,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds, one trained expert each.")] = "0,1,2",
    items: Annotated[int, typer.Option(help="Held-out items per seed.")] = 32,
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16")] = "float32",
    out: Annotated[Path | None, typer.Option(help="Also write the results as JSON here.")] = None,
) -> None:
    """Train an expert for a few minutes per seed (or load one); answer NLL with the right, a wrong, no
    memory, full attention."""
    if memory_input not in ("shared", "span_last"):
        raise SelfctxError(f"--memory-input must be shared or span_last, got {memory_input!r}")
    if objective not in ("lm", "distill", "mix"):
        raise SelfctxError(f"--objective must be lm, distill or mix, got {objective!r}")
    if task not in ("passkey", "recall"):
        raise SelfctxError(f"--task must be passkey or recall, got {task!r}")
    if task == "recall" and battery is None:
        raise SelfctxError("--task recall scores a trained battery: pass --battery DIR")
    low, _, high = lengths.partition("-")
    if not (low.isdigit() and high.isdigit() and 0 < int(low) <= int(high)):
        raise SelfctxError(f"--lengths must look like 600-2000, got {lengths!r}")
    if gap < 0 or steps < 0:
        raise SelfctxError(f"--gap and --steps must be >= 0, got {gap} and {steps}")
    if battery is not None:
        trained = _battery_settings(battery, ratio)
        window, sink = trained["window"], trained["sink"]
    if window % ratio:
        raise SelfctxError(f"--window {window} is not divisible by --ratio {ratio}")
    seed_list = [int(s) for s in seeds.split(",") if s.strip()] if battery is None else [0]
    if not filler.exists():
        raise SelfctxError(f"--filler {filler} does not exist: pass a passage pool or a text folder")
    texts = _filler_texts(filler)

    import torch

    from selfctx.compress.battery import ExpertBattery
    from selfctx.compress.model import CompressedLM
    from selfctx.models import load_causal_lm

    base, tokenizer = load_causal_lm(model, dtype=dtype)
    probe_task = ProbeTask(tokenizer, texts, window, sink, gap=gap)
    if task == "recall":
        held_out = recall_items(tokenizer, texts, items, int(low), int(high))
    else:
        eval_rng = random.Random("probe-eval")
        held_out = [probe_task.item(eval_rng) for _ in range(items)]
    rows = []
    for seed in seed_list:
        torch.manual_seed(seed)
        if battery is not None:
            lm = CompressedLM.from_pretrained(base, battery, tokenizer=tokenizer)
            seconds = 0.0
            final_loss = None
        else:
            experts = ExpertBattery.create(
                base,
                (ratio,),
                rank=rank,
                base_model=model,
                memory_input=memory_input,  # type: ignore[arg-type]
            )
            experts.for_training(base.device)
            lm = CompressedLM(base, tokenizer, experts, window=window, native_context=1024, sink=sink)
            started = time.perf_counter()
            losses = _train(lm, probe_task, model, ratio, objective, steps, batch, lr, seed) if steps else []
            seconds = time.perf_counter() - started
            final_loss = losses[-1] if losses else None
        lm.eval()
        summary = evaluate(lm, ratio, held_out)
        rows.append({"seed": seed, "train_seconds": round(seconds, 1), "final_loss": final_loss, **summary})
        lm.battery.requires_grad_(False)
        r, w = summary["right"], summary["wrong"]
        typer.echo(
            f"seed {seed}: NLL/token right {r['nll']:.2f}±{r['nll_stderr']:.2f} wrong {w['nll']:.2f} "
            f"(paired right-wrong {summary['right_minus_wrong']['nll']:+.2f}"
            f"±{summary['right_minus_wrong']['nll_stderr']:.2f}) "
            f"none {summary['none']['nll']:.2f} full {summary['full']['nll']:.2f} | exact right "
            f"{r['exact']:.2f} wrong {w['exact']:.2f} full {summary['full']['exact']:.2f} ({seconds:.0f} s)"
        )
    settings: dict[str, Any] = {"model": model, "task": task, "ratio": ratio, "window": window, "sink": sink}
    settings.update({"lengths": lengths} if task == "recall" else {"gap": gap})
    if battery is not None:
        settings["battery"] = str(battery)
    else:
        settings.update(
            memory_input=memory_input, objective=objective, steps=steps, batch=batch, lr=lr, rank=rank
        )
    settings.update(items=items, dtype=dtype)
    result = {"settings": settings, "seeds": rows}
    if out is not None:
        from selfctx.fsutil import write_json_atomic

        write_json_atomic(out, result)
    typer.echo(json.dumps(result["settings"]))


def recall_items(tokenizer: Any, texts: list[str], n: int, low: int, high: int) -> list[ProbeItem]:
    """Held-out samples of the training `recall` source (seed 1; training draws seed 0): 1-3 facts hidden
    among `texts`, a question about one; the item's answer is the value's tokens."""
    from selfctx.train.examples import IGNORE_INDEX
    from selfctx.train.recall import recall_examples

    special = set(tokenizer.all_special_ids)
    out = []
    for example in recall_examples(tokenizer, n, low, high, seed=1, passages=texts):
        first = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
        pairs = zip(example.input_ids, example.labels, strict=True)
        answer = [token for token, label in pairs if label != IGNORE_INDEX]
        # score the value's own tokens, as the passkey task does: not the turn's closing tokens, nearly free
        while answer and (answer[-1] in special or not tokenizer.decode([answer[-1]]).strip()):
            answer.pop()
        out.append(ProbeItem(tuple(example.input_ids[:first]), tuple(answer)))
    if len(out) < 2:
        raise SelfctxError(f"--task recall made {len(out)} items of {low}-{high} tokens: widen --lengths")
    return out


def _battery_settings(folder: Path, ratio: int) -> dict[str, int]:
    """Window and sink a battery folder was trained with; a clear error before any model loads."""
    from selfctx.compress.battery import read_battery_meta
    from selfctx.compress.config import CompressorConfig

    meta = read_battery_meta(folder, "--battery")
    if ratio not in meta.get("ratios", []):
        have = meta.get("ratios")
        raise SelfctxError(f"--battery {folder} has no x{ratio} expert (it has {have}): pick one of those")
    if "compressor" not in meta and "window" not in (meta.get("mechanism") or {}):
        raise SelfctxError(f"--battery {folder} does not record its window: retrain or snapshot it again")
    trained = CompressorConfig.from_battery_json(meta)
    return {"window": trained.window, "sink": trained.sink}


def _train(
    lm: Any,
    task: ProbeTask,
    model: str,
    ratio: int,
    objective: str,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
) -> list[float]:
    """A few minutes of the real training loop and objective on fresh probe items; the losses per step."""
    from selfctx.train.config import LoopConfig, OptimConfig
    from selfctx.train.experts import CompressionObjective, ExpertModule, ObjectiveSettings
    from selfctx.train.loop import Trainer
    from selfctx.train.teacher import Teacher

    tokenizer = lm.tokenizer
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    settings = ObjectiveSettings(kind=objective, normalise="sample")  # type: ignore[arg-type]
    teacher = Teacher(lm.model, model, settings.top_k) if objective != "lm" else None
    module = ExpertModule(lm)
    module.select(ratio)
    with tempfile.TemporaryDirectory() as tmp:
        loop = LoopConfig(
            output_dir=tmp,
            max_steps=steps,
            micro_batch_size=batch,
            seed=seed,
            save_every=steps,
            keep_checkpoints=1,
            optim=OptimConfig(lr=lr, warmup_steps=max(1, steps // 20), scheduler="cosine"),
        )
        obj = CompressionObjective(ratio, False, settings, teacher, (lm.sink, lm.window))
        trainer = Trainer(loop, module, obj, _ProbeBatches(task, batch, seed, pad_id))
        return list(trainer.train().losses)
