"""CompressedLM: a frozen causal LM that reads long inputs through compressed memory.

    lm = CompressedLM.from_pretrained("smollm2-135m", experts="runs/experts")  # window etc. as trained
    result = lm.generate(context=long_text, prompt="Who wrote the letter?", max_new_tokens=64)
    memory = lm.compress(long_text)                   # compress once ...
    answers = lm.generate(memory=memory, prompt=["Q1", "Q2"])   # ... answer many, as one batch
    memory.save("runs/mem"); Memory.load("runs/mem")  # reuse in another process

Every result reports the expert used, the requested and achieved ratio and the memory's bytes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from selfctx.compress.battery import ExpertBattery, Route, read_battery_meta, route
from selfctx.compress.config import (
    DEFAULT_RATIOS,
    DEFAULT_WINDOW,
    AttentionPattern,
    CompressorConfig,
    Kind,
    MemoryInput,
)
from selfctx.compress.decode import DecodeRow, decode_rows
from selfctx.compress.engine import (
    BaseParts,
    LayerMemory,
    cache_from_memory,
    compress_group,
    empty_memory,
    extend,
    sink_memory,
)
from selfctx.compress.memory import Memory, MemoryInfo
from selfctx.compress.train_loss import TeacherTargets, loss_terms
from selfctx.errors import SelfctxError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_SPLIT = "\u0000SELFCTX-PROMPT\u0000"


@dataclass
class GenerationResult:
    """Texts plus what it took: expert, ratios, memory size, token counts and timings."""

    texts: list[str]
    expert: str | None
    ratio: int
    requested_ratio: float
    achieved_ratio: float
    memory_bytes: int
    memory_entries: int
    context_tokens: int
    prompt_tokens: list[int]
    completion_tokens: list[int]
    memory_reused: bool = False
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.texts[0]


def untrained_ratios(window: int, ratios: tuple[int, ...] = DEFAULT_RATIOS) -> tuple[int, ...]:
    """The ratios an untrained battery gets for `window` (those that divide it)."""
    return tuple(r for r in ratios if window % r == 0 and r <= window)


def check_compression_args(
    experts: str | Path | None,
    *,
    window: int | None = None,
    native_context: int | None = None,
    ratio: int | None = None,
) -> None:
    """What `from_pretrained` and `compress(ratio=...)` would reject, checked before any model is loaded:
    the expert folder (battery.json), window/native context sizes, and that a forced ratio has an expert."""
    from selfctx.checks import check_positive

    check_positive(window, "--window")
    check_positive(native_context, "--native-context")
    meta = read_battery_meta(experts, "--experts") if experts is not None else None
    # an unset native context is the one the experts were trained under (as from_pretrained resolves it)
    trained_native = CompressorConfig.from_battery_json(meta).native_context if meta else None
    native = native_context if native_context is not None else trained_native
    if window is not None and native is not None and window >= int(native):
        where = (
            f"--native-context {native}"
            if native_context is not None
            else f"the native context {native} that {experts} was trained with"
        )
        raise SelfctxError(f"--window {window} must be smaller than {where}: lower --window")
    available = tuple(int(r) for r in meta["ratios"]) if meta else untrained_ratios(window or DEFAULT_WINDOW)
    if meta and window is not None:
        bad = [r for r in available if window % r]
        if bad:
            raise SelfctxError(
                f"--window {window} is not divisible by ratio {bad[0]} of the experts in {experts}: pick a "
                "multiple of every ratio (or leave --window unset: the window they were trained with)"
            )
    if ratio is not None and ratio != 1 and ratio not in available:
        raise SelfctxError(
            f"--ratio {ratio} has no expert: use 1 (no compression) or one of "
            f"{', '.join(map(str, available))}"
        )


LOSS_CHUNK = 1024  # labelled tokens per logits chunk in forward_train


@dataclass
class TrainOutput:
    loss: torch.Tensor  # mean next-token loss over the labelled ordinary tokens
    n_tokens: int  # labelled tokens that contributed
    loss_sum: torch.Tensor  # the summed loss (what a trainer normalising over a global batch needs)
    lm_sum: torch.Tensor  # (B,) summed next-token loss per row
    lm_count: torch.Tensor  # (B,) labelled tokens per row
    kl_sum: torch.Tensor  # (B,) summed KL from the teacher per row (0 without a teacher)
    kl_count: torch.Tensor  # (B,) distilled positions per row


class CompressedLM(nn.Module):
    """The frozen base model + an expert battery + the window/memory mechanism.

    The mechanism (window, native context, pattern, group size, sink) is the battery's config — what it was
    trained under — with the settings given here over it; `config` holds the result.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None,
        battery: ExpertBattery,
        *,
        window: int | None = None,
        native_context: int | None = None,
        pattern: AttentionPattern | None = None,
        group_tokens: int | None = None,
        sink: int | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        self.parts = BaseParts.from_model(model)
        self.model = model
        self.model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.battery = battery
        config = battery.config.override(
            window=window,
            native_context=native_context,
            pattern=pattern,
            group_tokens=group_tokens,
            sink=sink,
        )
        if config.native_context is None:  # the model's own
            config = dataclasses.replace(config, native_context=int(model.config.max_position_embeddings))
        self.config = config
        self.name = name or getattr(model.config, "_name_or_path", "") or model.config.model_type

    @property
    def window(self) -> int:
        return self.config.window

    @property
    def native_context(self) -> int:
        return int(self.config.native_context or 0)  # always set in __init__

    @property
    def pattern(self) -> AttentionPattern:
        return self.config.pattern

    @property
    def group_tokens(self) -> int:
        return self.config.group_tokens

    @property
    def sink(self) -> int:
        """The input's first `sink` tokens stay raw at positions 0.. (never compressed): a frozen reader
        parks spare attention on its first token, and loses it when that token is compressed away."""
        return self.config.sink

    # ---------------------------------------------------------------- construction
    @staticmethod
    def from_pretrained(
        base: str | PreTrainedModel,
        experts: str | Path | ExpertBattery | None = None,
        *,
        window: int | None = None,
        native_context: int | None = None,
        ratios: tuple[int, ...] = DEFAULT_RATIOS,
        tokenizer: PreTrainedTokenizerBase | None = None,
        dtype: str | torch.dtype | None = "auto",
        device: str | None = None,
        pattern: AttentionPattern | None = None,
        sink: int | None = None,
        kind: Kind = "lora",
        rank: int = 8,
        memory_input: MemoryInput = "shared",
    ) -> CompressedLM:
        """A model spec (or a loaded model) plus an expert folder. Without `experts`, untrained experts for
        `ratios` are created (zero LoRA: memory tokens read through the base weights; `memory_input` says
        what their memory tokens start from)."""
        if isinstance(base, str):
            from selfctx.models import load_causal_lm

            model, tokenizer = load_causal_lm(base, dtype=dtype, device=device)
            name = base
        else:
            model, name = base, getattr(base.config, "_name_or_path", "")
        if isinstance(experts, ExpertBattery):
            battery = experts
        elif experts is not None:
            battery = ExpertBattery.load(experts, model)
        else:
            width = window or DEFAULT_WINDOW
            untrained = CompressorConfig(
                kind=kind,
                ratios=untrained_ratios(width, ratios),
                rank=rank,
                memory_input=memory_input,
                window=width,
            )
            battery = ExpertBattery.create(model, config=untrained, base_model=name)
        battery.to(next(model.parameters()).device)
        # unset settings are those the battery was trained under (an untrained one: the library defaults)
        return CompressedLM(
            model,
            tokenizer,
            battery,
            window=window,
            native_context=native_context,
            pattern=pattern,
            sink=sink,
            name=name,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---------------------------------------------------------------- core
    def _group_windows(self, ratio: int) -> int:
        return max(1, self.group_tokens // (self.window + self.window // ratio))

    def compress_ids(
        self,
        ids: torch.Tensor,
        ratio: int,
        *,
        group_windows: int | None = None,
        memory: list[LayerMemory] | None = None,
        on_hidden: Any = None,
        checkpointing: bool = False,
    ) -> tuple[list[LayerMemory], torch.Tensor]:
        """Compress every full window of `ids` (B, N); return (memory, tail ids).

        A fresh compression (no `memory` given) first keeps the input's `sink` tokens raw as memory; the
        windows follow them, and the tail is what is left after the last full window.
        `on_hidden(start, hidden)` receives the final hidden states (B, T, D) of the sink and of each group's
        raw tokens, `start` being their offset in `ids` (for training); `group_windows` fixes how many windows
        share one forward (default: by token budget).
        """
        batch, n = ids.shape
        window = self.window
        start = 0
        if memory is None:
            start = min(self.sink, n)
            if start:
                memory, hidden = sink_memory(self.parts, ids[:, :start])
                if on_hidden is not None:
                    on_hidden(0, hidden)
            else:
                memory = empty_memory(self.parts, batch, self.parts.embed_tokens.weight)
        n_full = (n - start) // window
        adapter = self.battery.adapter_for(ratio)
        n_mem = window // ratio
        group = group_windows or self._group_windows(ratio)
        for first in range(0, n_full, group):
            last = min(n_full, first + group)
            chunk = ids[:, start + first * window : start + last * window]  # (B, G*W)
            memory, hidden = compress_group(
                self.parts, adapter, chunk, memory, window, n_mem, self.pattern, checkpointing=checkpointing
            )
            if on_hidden is not None:
                on_hidden(start + first * window, hidden)
        return memory, ids[:, start + n_full * window :]

    def logits(self, ids: torch.Tensor, ratio: int, *, group_windows: int | None = None) -> torch.Tensor:
        """Next-token logits (B, N, V) for every ordinary token of `ids`, reading earlier windows from memory.

        Tokens of the partial last window read the memory plus their raw predecessors."""
        pieces: list[tuple[int, torch.Tensor]] = []
        memory, tail = self.compress_ids(
            ids,
            ratio,
            group_windows=group_windows,
            on_hidden=lambda start, hidden: pieces.append((start, self.parts.lm_head(hidden))),
        )
        if tail.shape[1]:
            cache = cache_from_memory(self.parts, memory, ids.shape[0])
            tail_logits, _ = extend(
                self.parts,
                cache,
                tail,
                torch.ones_like(tail),
                logits_for="all",
                adapter=self.battery.adapter_for(ratio),
            )
            assert tail_logits is not None
            pieces.append((ids.shape[1] - tail.shape[1], tail_logits))
        return torch.cat([p for _, p in sorted(pieces, key=lambda item: item[0])], dim=1)

    def forward_train(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        ratio: int,
        *,
        checkpointing: bool = True,
        group_windows: int | None = None,
        teacher: TeacherTargets | None = None,
    ) -> TrainOutput:
        """Training terms of the student: the memory of earlier windows plus the raw current window.

        input_ids, labels (B, N); labels are -100 where no next-token loss is wanted (prompt tokens) and
        aligned with input_ids (the shift happens here). `teacher` adds the KL from the teacher's next-token
        distributions at its masked positions. Gradients flow through the memory across windows into the
        expert's parameters only (the base model is frozen). Terms are computed group by group, LOSS_CHUNK
        positions at a time (recomputed in the backward pass under checkpointing), so (tokens x vocabulary)
        logits never exist at once.
        """
        batch = input_ids.shape[0]
        targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)  # (B, N) next token
        sums = torch.zeros(2, batch, dtype=torch.float32, device=input_ids.device)  # (CE, KL) per row
        kl_where = teacher.mask if teacher is not None else torch.zeros_like(targets, dtype=torch.bool)

        def add_terms(start: int, hidden: torch.Tensor) -> None:
            nonlocal sums
            span = slice(start, start + hidden.shape[1])
            wanted_all, kl_all = targets[:, span], kl_where[:, span]  # (B, T)
            keep = (wanted_all != -100) | kl_all
            if not keep.any():
                return
            rows = keep.nonzero()[:, 0]  # (K,)
            states, wanted, kl_mask = hidden[keep], wanted_all[keep], kl_all[keep]  # (K, D), (K,), (K,)
            top_ids = teacher.ids[:, span][keep] if teacher is not None else None  # (K, k)
            top_lp = teacher.logprobs[:, span][keep] if teacher is not None else None
            for first in range(0, wanted.numel(), LOSS_CHUNK):
                part = slice(first, first + LOSS_CHUNK)
                args = (
                    self.parts.lm_head,
                    states[part],
                    wanted[part],
                    rows[part],
                    batch,
                    None if top_ids is None else top_ids[part],
                    None if top_lp is None else top_lp[part],
                    kl_mask[part],
                )
                if checkpointing and torch.is_grad_enabled():
                    piece = checkpoint(loss_terms, *args, use_reentrant=False)
                else:
                    piece = loss_terms(*args)
                sums = sums + piece

        memory, tail = self.compress_ids(
            input_ids, ratio, group_windows=group_windows, on_hidden=add_terms, checkpointing=checkpointing
        )
        if tail.shape[1]:
            cache = cache_from_memory(self.parts, memory, batch)
            hidden, _ = extend(
                self.parts,
                cache,
                tail,
                torch.ones_like(tail),
                logits_for="hidden",
                adapter=self.battery.adapter_for(ratio),
            )
            assert hidden is not None
            add_terms(input_ids.shape[1] - tail.shape[1], hidden)
        lm_count = (targets != -100).sum(1)  # (B,)
        count = int(lm_count.sum())
        return TrainOutput(
            loss=sums[0].sum() / max(1, count),
            n_tokens=count,
            loss_sum=sums[0].sum(),
            lm_sum=sums[0],
            lm_count=lm_count,
            kl_sum=sums[1],
            kl_count=kl_where.sum(1),
        )

    def trainable_parameters(self, ratio: int) -> list[nn.Parameter]:
        """The parameters one expert trains (its LoRA + memory embedding), with requires_grad switched on."""
        adapter = self.battery.adapter_for(ratio)
        adapter.requires_grad_(True)
        return list(adapter.parameters())

    # ---------------------------------------------------------------- text API
    def _require_tokenizer(self) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            raise SelfctxError("this CompressedLM has no tokenizer: pass tokenizer= to from_pretrained")
        return self.tokenizer

    def split_chat(self, context: str, prompt: str) -> tuple[str, str]:
        """Chat-format [user: context + blank line + prompt]; return (text up to the prompt, the rest)."""
        tokenizer = self._require_tokenizer()
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{context}{_SPLIT}\n\n{prompt}"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        head, tail = str(rendered).split(_SPLIT)
        return head, tail

    def _encode(self, text: str) -> list[int]:
        return list(self._require_tokenizer()(text, add_special_tokens=False)["input_ids"])

    def route_for(self, n_context_tokens: int, budget: int) -> Route:
        return route(
            n_context_tokens, budget, self.native_context, self.window, self.battery.ratios, self.sink
        )

    @torch.no_grad()
    def compress(
        self,
        context: str | list[int] | torch.Tensor,
        *,
        ratio: int | None = None,
        budget: int = 512,
        chat: bool = True,
        between_groups: Callable[[], None] | None = None,
    ) -> Memory:
        """Compress a context once (its full windows); the partial last window is kept as raw tail tokens.

        With chat=True a string context is placed in a user turn (the prompt is appended later). `ratio`
        forces an expert; otherwise the router picks the smallest one that fits with `budget` tokens of
        question + answer. `between_groups()` runs after the sink and after each group of windows: raising
        there stops the compression (a server drops work nobody waits for)."""
        if isinstance(context, str):
            head = self.split_chat(context, "")[0] if chat else context
            ids = self._encode(head)
        else:
            ids = context.tolist() if isinstance(context, torch.Tensor) else list(context)
        chosen = ratio if ratio is not None else self.route_for(len(ids), budget).ratio
        tensor = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, N)
        if chosen == 1:
            layers = empty_memory(self.parts, 1, self.parts.embed_tokens.weight)
            tail = tensor
        else:
            hook = None if between_groups is None else (lambda _start, _hidden: between_groups())
            layers, tail = self.compress_ids(tensor, chosen, on_hidden=hook)
        info = MemoryInfo(
            model_name=self.name,
            adapter=None if chosen == 1 else self.battery.adapter_name(chosen),
            ratio=chosen,
            window=self.window,
            n_context_tokens=len(ids),
            num_layers=len(self.parts.layers),
            num_kv_heads=self.parts.num_kv_heads,
            head_dim=self.parts.head_dim,
            dtype=str(self.parts.embed_tokens.weight.dtype).replace("torch.", ""),
            sink=0 if chosen == 1 else min(self.sink, len(ids)),
        )
        return Memory(layers=layers, tail_ids=tail[0], info=info)

    def check_memory(self, memory: Memory) -> None:
        info = memory.info
        if (info.num_layers, info.num_kv_heads, info.head_dim) != (
            len(self.parts.layers),
            self.parts.num_kv_heads,
            self.parts.head_dim,
        ):
            raise SelfctxError("this memory was made by a model of another shape: compress the context again")
        if info.window != self.window:
            raise SelfctxError(f"this memory used window {info.window}, the model uses {self.window}")
        if info.ratio > 1 and info.sink != min(self.sink, info.n_context_tokens):
            raise SelfctxError(
                f"this memory kept {info.sink} raw sink tokens, the model keeps {self.sink}: compress the "
                "context again"
            )

    @torch.no_grad()
    def generate(
        self,
        context: str | None = None,
        prompt: str | list[str] = "",
        *,
        memory: Memory | None = None,
        max_new_tokens: int = 128,
        ratio: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        chat: bool = True,
    ) -> GenerationResult:
        """Answer one prompt or a batch of prompts over a context (compressed here) or a given Memory."""
        self._require_tokenizer()
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        started = time.perf_counter()
        reused = memory is not None
        if memory is None:
            if context is None:
                raise SelfctxError("generate needs a context or a memory")
            longest = max(len(self._encode(p)) for p in prompts) + 16
            memory = self.compress(context, ratio=ratio, budget=longest + max_new_tokens, chat=chat)
        self.check_memory(memory)
        compressed_at = time.perf_counter()
        suffixes = [self.split_chat("", p)[1] if chat else p for p in prompts]
        prompt_ids = [self._encode(s) for s in suffixes]
        prompt_lengths = [len(ids) for ids in prompt_ids]
        raw = len(memory.tail_ids) + max(prompt_lengths)
        if memory.num_entries + raw + max_new_tokens > self.native_context:
            raise SelfctxError(
                f"memory ({memory.num_entries}) + tail and prompt ({raw}) + "
                f"{max_new_tokens} new tokens exceed the native context {self.native_context}: "
                "use a higher ratio or a shorter prompt"
            )
        rows = [  # row i samples from seed + i: identical prompts in one batch still draw apart
            DecodeRow(ids, max_new_tokens, temperature, top_p, None if seed is None else seed + i)
            for i, ids in enumerate(prompt_ids)
        ]
        decode_rows(self, memory, rows)
        finished = time.perf_counter()
        return GenerationResult(
            texts=[row.text for row in rows],
            expert=memory.info.adapter,
            ratio=memory.info.ratio,
            requested_ratio=self.route_for(
                memory.info.n_context_tokens, max(prompt_lengths) + max_new_tokens
            ).requested_ratio
            if memory.info.ratio > 1
            else 1.0,
            achieved_ratio=memory.achieved_ratio,
            memory_bytes=memory.nbytes,
            memory_entries=memory.num_entries,
            context_tokens=memory.info.n_context_tokens,
            prompt_tokens=prompt_lengths,
            completion_tokens=[len(row.token_ids) for row in rows],
            memory_reused=reused,
            seconds={"compress": compressed_at - started, "generate": finished - compressed_at},
        )

    @torch.no_grad()
    def continue_ids(
        self,
        memory: Memory,
        ids: list[int],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[int]:
        """Token ids generated after the memory, its raw tail and `ids` (no chat template, no re-encoding)."""
        self.check_memory(memory)
        row = memory.tail_ids.tolist() + list(ids)
        if not row:
            raise SelfctxError("nothing to continue from: give at least one token after the memory")
        if memory.num_entries + len(row) + max_new_tokens > self.native_context:
            raise SelfctxError(
                f"memory ({memory.num_entries}) + {len(row)} raw tokens + {max_new_tokens} new tokens exceed "
                f"the native context {self.native_context}: use a higher ratio or fewer new tokens"
            )
        decoded = DecodeRow(list(ids), max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        decode_rows(self, memory, [decoded])
        return decoded.token_ids
