"""The method interface every evaluation runs through, and its implementations.

A method answers requests whose text is split at the end of the long context:

    head = everything up to and including the context (chat template already applied where wanted)
    tail = the rest (question, instructions, assistant header)

Plain models read head + tail; a compressed model compresses `head` and reads `tail` as ordinary tokens.
`input_limit` tells the runner how many prompt tokens the method accepts (the runner middle-truncates to
it, as LongBench's pred.py does); `memory_bytes` is the state held when generation starts, so methods are
compared on the same memory budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from selfctx.errors import SelfctxError
from selfctx.sampling import eos_token_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from selfctx.checks import MemoryInput


@dataclass(frozen=True)
class Request:
    head: str
    tail: str
    max_new_tokens: int
    add_special_tokens: bool = True  # False when the chat template already wrote the special tokens
    stop_at_newline: bool = False  # LongBench samsum: "\n" ends the answer, at least one token first


@dataclass(frozen=True)
class Prediction:
    text: str
    input_tokens: int  # tokens the method was given (before any compression)
    memory_bytes: int  # KV state (or compressed memory + raw tokens) held when generation starts
    info: dict[str, Any] | None = None


@runtime_checkable
class Method(Protocol):
    name: str

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase: ...

    def input_limit(self, max_new_tokens: int) -> int | None:
        """The most prompt tokens this method takes for a generation budget (None: no limit of its own)."""
        ...

    def generate(self, requests: list[Request]) -> list[Prediction]: ...

    def memory_bytes(self, n_tokens: int) -> int:
        """Bytes of state this method holds for a prompt of n_tokens."""
        ...


def kv_bytes_per_token(model: PreTrainedModel) -> int:
    """Keys + values over all layers for one token, in the model's dtype."""
    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    element = next(model.parameters()).element_size()
    return 2 * config.num_hidden_layers * kv_heads * head_dim * element


def model_positions(model: PreTrainedModel) -> int:
    """The model's own position limit (what `truncate` cuts prompts to)."""
    return int(model.config.max_position_embeddings)


class HFMethod:
    """A transformers causal LM with greedy decoding. `limit="native"` truncates prompts to the native
    window minus the generation budget and the chat template's own tokens ("truncate"); `limit=None`
    leaves truncation to the runner's configured maximum ("full attention")."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        limit: str | int | None = None,
        batch_size: int = 1,
    ) -> None:
        self.model = model
        self._tokenizer = tokenizer
        self.name = name
        self.limit = limit
        self.batch_size = max(1, batch_size)
        self._per_token = kv_bytes_per_token(model)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    def _template_overhead(self) -> int:
        if not getattr(self._tokenizer, "chat_template", None):
            return 0
        rendered = self._tokenizer.apply_chat_template(
            [{"role": "user", "content": ""}], tokenize=False, add_generation_prompt=True
        )
        return len(self._tokenizer(str(rendered), add_special_tokens=False)["input_ids"])

    def input_limit(self, max_new_tokens: int) -> int | None:
        if self.limit is None:
            return None
        window = model_positions(self.model) if self.limit == "native" else int(self.limit)
        room = window - max_new_tokens - self._template_overhead()
        if room < 16:
            raise SelfctxError(
                f"{self.name}: a window of {window} leaves no room for a prompt and "
                f"{max_new_tokens} new tokens: use a larger window or fewer new tokens"
            )
        return room

    def memory_bytes(self, n_tokens: int) -> int:
        return n_tokens * self._per_token

    def generate(self, requests: list[Request]) -> list[Prediction]:
        out: list[Prediction] = []
        for start in range(0, len(requests), self.batch_size):
            out.extend(self._generate_batch(requests[start : start + self.batch_size]))
        return out

    def _stop_ids(self, stop_at_newline: bool) -> list[int]:
        ids = eos_token_ids(self._tokenizer, self.model.generation_config)
        if stop_at_newline:
            ids.add(self._tokenizer.encode("\n", add_special_tokens=False)[-1])
        return sorted(ids)

    def _generate_batch(self, batch: list[Request]) -> list[Prediction]:
        import torch

        if len({(r.max_new_tokens, r.add_special_tokens, r.stop_at_newline) for r in batch}) != 1:
            return [p for r in batch for p in self._generate_batch([r])]
        first = batch[0]
        encoded = self._tokenizer(
            [r.head + r.tail for r in batch],
            add_special_tokens=first.add_special_tokens,
            padding=True,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        input_ids = encoded["input_ids"].to(device)
        attention_mask = encoded["attention_mask"].to(device)
        with torch.no_grad():
            output = self.model.generate(  # type: ignore[operator]
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=first.max_new_tokens,
                do_sample=False,
                num_beams=1,
                temperature=None,
                top_p=None,
                top_k=None,
                min_new_tokens=1 if first.stop_at_newline else None,
                eos_token_id=self._stop_ids(first.stop_at_newline),
                pad_token_id=self._tokenizer.pad_token_id,
            )
        width = input_ids.shape[1]
        predictions = []
        for row, mask in zip(output, attention_mask, strict=True):
            n_input = int(mask.sum())
            text = str(self._tokenizer.decode(row[width:], skip_special_tokens=True))
            predictions.append(
                Prediction(text=text, input_tokens=n_input, memory_bytes=self.memory_bytes(n_input))
            )
        return predictions


class CompressedMethod:
    """A selfctx.compress.CompressedLM: the head is compressed (the router picks the expert unless `ratio`
    forces one), the tail is read as ordinary tokens. Memory = compressed memory + raw tail/prompt KV."""

    def __init__(
        self,
        compressed: Any,
        *,
        name: str = "compressed",
        ratio: int | None = None,
        experts: str | None = None,
    ) -> None:
        self.compressed = compressed
        self.name = name
        self.ratio = ratio
        self.experts = experts  # the battery folder (None: untrained experts)
        self._per_token = kv_bytes_per_token(compressed.model)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.compressed._require_tokenizer()

    def input_limit(self, max_new_tokens: int) -> int | None:
        return None

    def memory_bytes(self, n_tokens: int) -> int:
        """An estimate before compressing: n_tokens / ratio memory entries (the router's choice is only
        known per context; `generate` reports the measured figure)."""
        ratio = self.ratio or 1
        return (n_tokens // ratio) * self._per_token

    def generate(self, requests: list[Request]) -> list[Prediction]:
        out = []
        for request in requests:
            budget = len(self.tokenizer(request.tail, add_special_tokens=False)["input_ids"]) + 16
            memory = self.compressed.compress(
                request.head, ratio=self.ratio, budget=budget + request.max_new_tokens, chat=False
            )
            result = self.compressed.generate(
                prompt=request.tail, memory=memory, max_new_tokens=request.max_new_tokens, chat=False
            )
            text = result.texts[0]
            if (
                request.stop_at_newline
            ):  # emulate "\n" as a stop token (the scorer keeps the first line anyway)
                text = text.split("\n", 1)[0] if text.strip("\n") else text
            raw_tokens = int(memory.tail_ids.numel()) + result.prompt_tokens[0]
            out.append(
                Prediction(
                    text=text,
                    input_tokens=result.context_tokens + result.prompt_tokens[0],
                    memory_bytes=result.memory_bytes + raw_tokens * self._per_token,
                    info={
                        "expert": result.expert,
                        "ratio": result.ratio,
                        "achieved_ratio": result.achieved_ratio,
                        "memory_entries": result.memory_entries,
                    },
                )
            )
        return out


class LlamaCppMethod:
    """A GGUF model through llama.cpp (greedy, temperature 0): several times faster than transformers on
    CPU. The HF tokenizer of the same model measures and truncates prompts, llama.cpp re-tokenizes the text
    (special tokens parsed). samsum's "at least one token" rule cannot be enforced here: a completion that
    starts with a newline ends empty."""

    def __init__(
        self,
        gguf_path: str,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        limit: str | int | None = "native",
        n_ctx: int | None = None,
        n_threads: int | None = None,
    ) -> None:
        import os

        from selfctx.models import llama_class

        Llama = llama_class()  # noqa: N806 (llama.cpp's class)

        self._tokenizer = tokenizer
        self.name = name
        self.limit = limit
        probe = Llama(model_path=gguf_path, n_ctx=256, vocab_only=True, verbose=False)
        meta = probe.metadata
        arch = meta.get("general.architecture", "llama")
        self.native = int(meta[f"{arch}.context_length"])
        heads = int(meta[f"{arch}.attention.head_count"])
        kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
        head_dim = int(meta[f"{arch}.embedding_length"]) // heads
        self.kv_bytes_per_token = 2 * int(meta[f"{arch}.block_count"]) * kv_heads * head_dim * 2  # f16 cache
        del probe
        self.llm = Llama(
            model_path=gguf_path,
            n_ctx=n_ctx or self.native,
            n_threads=n_threads or max(1, (os.cpu_count() or 2) // 2),  # spinning threads collapse under load
            verbose=False,
        )

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    def input_limit(self, max_new_tokens: int) -> int | None:
        window = self.llm.n_ctx() if self.limit in ("native", None) else int(self.limit)
        return window - max_new_tokens - 64  # 64: room for the chat template around the prompt

    def memory_bytes(self, n_tokens: int) -> int:
        return n_tokens * self.kv_bytes_per_token

    def generate(self, requests: list[Request]) -> list[Prediction]:
        out = []
        for request in requests:
            text = request.head + request.tail
            n_input = len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
            self.llm.reset()
            result = self.llm.create_completion(
                prompt=text,
                max_tokens=request.max_new_tokens,
                temperature=0.0,
                top_k=1,
                stop=["\n"] if request.stop_at_newline else [],
                seed=0,
            )
            completion = str(result["choices"][0]["text"])
            out.append(
                Prediction(text=completion, input_tokens=n_input, memory_bytes=self.memory_bytes(n_input))
            )
        return out


METHOD_KINDS = ("truncate", "full", "compressed")


def truncation_limit(kind: str) -> str | int | None:
    """The prompt limit a method name asks for: "native" for `truncate`, N for `truncate-N` (the capped
    native window a battery was trained under, say), None for anything else; a bad N raises."""
    if kind == "truncate":
        return "native"
    if not kind.startswith("truncate-"):
        return None
    digits = kind.removeprefix("truncate-")
    if not digits.isdigit() or int(digits) < 1:
        raise SelfctxError(
            f"--method {kind}: write truncate-N with N a positive number of tokens (truncate-1024)"
        )
    return int(digits)


def build_method(
    kind: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    experts: str | None = None,
    window: int | None = None,
    ratio: int | None = None,
    batch_size: int = 1,
    label: str | None = None,
    native_context: int | None = None,
    sink: int | None = None,
    memory_input: MemoryInput = "shared",
) -> Method:
    """One method over an already loaded model (several methods can share it).

    truncate    the model's native window (prompt middle-truncated to fit with the generation budget);
                truncate-N the same at N tokens
    full        full attention up to the runner's maximum (LongBench: 15,500 tokens)
    compressed  selfctx.compress.CompressedLM: trained experts from `experts`, or untrained (zero-LoRA)
                experts when none are given (memory tokens read through the base weights); `window`
                None = the window the experts were trained with (1024 for untrained ones); `label` names
                the method instead of "experts" (several batteries in one run); `native_context` and
                `sink` None = as trained; `memory_input` is what untrained experts' memory tokens start
                from (trained ones keep the input they learned with)
    """
    limit = truncation_limit(kind)
    if limit is not None:
        size = model_positions(model) if limit == "native" else limit
        return HFMethod(model, tokenizer, name=f"truncate-{size}", limit=limit, batch_size=batch_size)
    if kind == "full":
        return HFMethod(model, tokenizer, name="full", limit=None, batch_size=batch_size)
    if kind == "compressed":
        from selfctx.compress import CompressedLM

        compressed = CompressedLM.from_pretrained(
            model,
            experts=experts,
            window=window,
            tokenizer=tokenizer,
            native_context=native_context,
            sink=sink,
            memory_input=memory_input,
        )
        label = label or ("experts" if experts else "compressed-untrained")
        name = f"{label}-w{compressed.window}" + (f"-r{ratio}" if ratio else "")
        return CompressedMethod(compressed, name=name, ratio=ratio, experts=experts)
    raise SelfctxError(f"unknown method {kind!r}: pick one of {', '.join(METHOD_KINDS)}")


def describe(method: Method) -> dict[str, Any]:
    """What the report needs to know about a method (written to run.json)."""
    info: dict[str, Any] = {"name": method.name, "kind": type(method).__name__}
    model = getattr(method, "model", None) or getattr(getattr(method, "compressed", None), "model", None)
    if isinstance(method, LlamaCppMethod):
        info.update(
            kv_bytes_per_token=method.kv_bytes_per_token, native_context=method.native, backend="llamacpp"
        )
    elif model is not None:
        info["kv_bytes_per_token"] = kv_bytes_per_token(model)
        info["native_context"] = model_positions(model)
        info["model"] = getattr(model.config, "_name_or_path", "") or model.config.model_type
    if isinstance(method, CompressedMethod):  # the mechanism as resolved: a folder never mixes two
        info["compressor"] = method.compressed.config.to_json()
    return info
