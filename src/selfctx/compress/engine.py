"""The compressor's forward math, driven through the HF model's own submodules (no forked modeling code).

Layout of one window (W raw tokens, n = W / r memory tokens appended after them):

    positions:   0 .. M-1        M .. M+W-1          M+W .. M+W+n-1
    keys:        [memory so far] [raw window tokens] [the window's new memory tokens]

Attention ("full coverage", the default): a raw token sees all memory plus the raw tokens before it; a memory
token sees all memory, the whole raw window and the window's earlier memory tokens — i.e. plain causal
attention over [raw, new memory] with the old memory as a fully visible prefix. "segmentation" lets memory
token i see only raw tokens [i*r, (i+1)*r); "step-expansion" lets it see raw tokens [0, (i+1)*r).
After the window only the new memory tokens' keys/values are kept; they become memory entries M .. M+n-1.
The input's first `sink` tokens may be kept raw as the first memory entries (`sink_memory`), and a memory
token's input embedding is either one shared learned vector or its span's last token plus a learned offset
(`memory_inputs`).
Keys are stored before RoPE and rotated to their position at each use, so memory is re-positioned every
window and no position ever exceeds M + W + n (kept within the native context by the router).

Several windows go through one forward: within a layer, every token's key/value depends only on that layer's
input, so a group of G windows is projected in one matmul; attention then runs window by window (window j sees
the memory of earlier windows of the same group, computed a moment before at this same layer); o_proj and the
MLP again run on the whole group. The result equals the window-by-window computation (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from selfctx.compress.adapters import MemoryAdapter
from selfctx.compress.config import AttentionPattern
from selfctx.errors import SelfctxError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, hd); cos/sin (B or 1, T, hd) -> x rotated to those positions.

    The same rotation as transformers' `x * cos + rotate_half(x) * sin`, with rotate_half's sign folded into
    the (small, head-shared) sin table, so the per-head work is one roll and one fused multiply-add instead of
    two slices, a negation and a concatenation (elementwise passes are a large share of CPU prefill)."""
    half = x.shape[-1] // 2
    sin_signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1).unsqueeze(1)
    return torch.addcmul(x * cos.unsqueeze(1), x.roll(half, dims=-1), sin_signed)


@dataclass
class BaseParts:
    """The frozen HF model's pieces this module drives, plus the shapes it needs."""

    embed_tokens: nn.Embedding
    layers: nn.ModuleList
    norm: nn.Module
    lm_head: nn.Module
    rotary_emb: nn.Module
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float

    @staticmethod
    def from_model(model: Any) -> BaseParts:  # a transformers PreTrainedModel (dynamic attributes)
        config = model.config
        model_type = getattr(config, "model_type", "?")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise SelfctxError(
                f"model type {model_type!r} is not supported by the compressor: "
                "use a Llama, Mistral or Qwen2 family causal LM"
            )
        inner = model.model
        attn = inner.layers[0].self_attn
        if hasattr(attn, "q_norm") or hasattr(attn, "k_norm"):
            raise SelfctxError(f"{model_type} models with q/k norms are not supported yet")
        sliding = getattr(config, "sliding_window", None)
        if sliding and getattr(config, "use_sliding_window", True) and model_type == "mistral":
            raise SelfctxError("Mistral models with sliding-window attention are not supported yet")
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return BaseParts(
            embed_tokens=inner.embed_tokens,
            layers=inner.layers,
            norm=inner.norm,
            lm_head=model.lm_head,
            rotary_emb=inner.rotary_emb,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads,
            head_dim=head_dim,
            scaling=float(getattr(attn, "scaling", head_dim**-0.5)),
        )

    def rope(self, like: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, T, hd) for integer positions (B, T)."""
        return self.rotary_emb(like, positions)


def _split_heads(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    b, t, _ = x.shape
    return x.view(b, t, heads, head_dim).transpose(1, 2)  # (B, H, T, hd)


def _attend(
    parts: BaseParts, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """q (B, Hq, Tq, hd), k/v (B, Hkv, Tk, hd), mask (B or 1, 1, Tq, Tk) bool -> (B, Tq, Hq*hd)."""
    # enable_gqa lets SDPA share each KV head across its query heads without materialising the copies.
    gqa = parts.num_heads != parts.num_kv_heads
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=parts.scaling, enable_gqa=gqa
    )  # (B, Hq, Tq, hd)
    b, h, t, d = out.shape
    return out.transpose(1, 2).reshape(b, t, h * d)


def window_mask(
    window: int, n_mem: int, memory_len: int, pattern: AttentionPattern, device: torch.device
) -> torch.Tensor:
    """Bool mask (W+n, M+W+n): True = may attend. Rows: raw then memory tokens; columns: memory, raw, new."""
    size = window + n_mem
    own = torch.ones(size, size, dtype=torch.bool, device=device).tril()  # causal over [raw, new memory]
    if pattern != "full-coverage" and n_mem:
        step = window // n_mem
        raw_cols = torch.arange(window, device=device)  # (W,)
        mem_idx = torch.arange(n_mem, device=device)[:, None]  # (n, 1)
        hi = (mem_idx + 1) * step
        lo = mem_idx * step if pattern == "segmentation" else torch.zeros_like(mem_idx)
        own[window:, :window] = (raw_cols >= lo) & (raw_cols < hi)
    prefix = torch.ones(size, memory_len, dtype=torch.bool, device=device)
    return torch.cat([prefix, own], dim=1)


@dataclass
class LayerMemory:
    """Memory of one layer: pre-RoPE keys and values, (B, Hkv, M, hd) each."""

    keys: torch.Tensor
    values: torch.Tensor


@dataclass
class GroupPlan:
    """What every layer of one group shares: RoPE tables for all its positions and each window's mask."""

    cos: torch.Tensor  # (1, M + (G-1)*n + W + n, hd), by position
    sin: torch.Tensor
    cos_own: torch.Tensor  # (1, G*(W+n), hd): each token of the group at its position in its own window
    sin_own: torch.Tensor
    masks: list[torch.Tensor]  # window j: (1, 1, W+n, M + j*n + W+n) bool

    @staticmethod
    def build(
        parts: BaseParts,
        like: torch.Tensor,
        memory_len: int,
        window: int,
        n_mem: int,
        n_windows: int,
        pattern: AttentionPattern,
    ) -> GroupPlan:
        total = memory_len + (n_windows - 1) * n_mem + window + n_mem
        positions = torch.arange(total, device=like.device)[None]  # (1, total)
        cos, sin = parts.rope(like, positions)
        size = window + n_mem
        # Window j's own block [raw, new memory] sits at positions M + j*n .. M + j*n + size - 1.
        starts = memory_len + n_mem * torch.arange(n_windows, device=like.device)[:, None]  # (G, 1)
        own = (starts + torch.arange(size, device=like.device)).reshape(-1)  # (G*size,)
        masks = [
            window_mask(window, n_mem, memory_len + j * n_mem, pattern, like.device)[None, None]
            for j in range(n_windows)
        ]
        return GroupPlan(cos, sin, cos[:, own], sin[:, own], masks)


def empty_memory(parts: BaseParts, batch: int, like: torch.Tensor) -> list[LayerMemory]:
    shape = (batch, parts.num_kv_heads, 0, parts.head_dim)
    return [LayerMemory(like.new_zeros(shape), like.new_zeros(shape)) for _ in range(len(parts.layers))]


class _SeenKV:
    """The rotated memory keys/values a window attends to, growing by n entries per window of a group.

    With autograd on, pieces are concatenated afresh for each window (tensors saved for backward must not be
    written again). Without it, one buffer per layer holds [memory | new memory so far | current block]: each
    window writes only its own block and then its n memory entries over the block's start, instead of copying
    the whole memory again."""

    def __init__(
        self, keys: list[torch.Tensor], values: list[torch.Tensor], length: int, buffered: bool
    ) -> None:
        self.keys, self.values, self.length, self.buffered = keys, values, length, buffered

    @staticmethod
    def start(keys: torch.Tensor, values: torch.Tensor, room: int) -> _SeenKV:
        if torch.is_grad_enabled():
            return _SeenKV([keys], [values], keys.shape[2], buffered=False)
        b, h, m, d = keys.shape
        key_buf = keys.new_empty(b, h, m + room, d)
        value_buf = values.new_empty(b, h, m + room, d)
        key_buf[:, :, :m] = keys
        value_buf[:, :, :m] = values
        return _SeenKV([key_buf], [value_buf], m, buffered=True)

    def with_block(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.buffered:
            end = self.length + keys.shape[2]
            self.keys[0][:, :, self.length : end] = keys
            self.values[0][:, :, self.length : end] = values
            return self.keys[0][:, :, :end], self.values[0][:, :, :end]
        return torch.cat([*self.keys, keys], dim=2), torch.cat([*self.values, values], dim=2)

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        if self.buffered:
            end = self.length + keys.shape[2]
            self.keys[0][:, :, self.length : end] = keys
            self.values[0][:, :, self.length : end] = values
        else:
            self.keys.append(keys)
            self.values.append(values)
        self.length += keys.shape[2]


def _group_layer(
    parts: BaseParts,
    adapter: MemoryAdapter,
    layer_idx: int,
    x: torch.Tensor,
    mem_keys: torch.Tensor,
    mem_values: torch.Tensor,
    window: int,
    n_mem: int,
    n_windows: int,
    memory_rows: torch.Tensor,
    plan: GroupPlan,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoder layer over a group of windows.

    x (B, G*(W+n), D); mem_keys/values (B, Hkv, M, hd) pre-RoPE memory before the group.
    Returns the layer output (B, G*(W+n), D) and the group's new memory keys/values (B, Hkv, G*n, hd).
    """
    layer: Any = parts.layers[layer_idx]
    attn = layer.self_attn
    size = window + n_mem
    h = layer.input_layernorm(x)  # (B, G*size, D)
    q = _split_heads(
        adapter.project(layer_idx, "q_proj", attn.q_proj, h, memory_rows), parts.num_heads, parts.head_dim
    )  # (B, Hq, G*size, hd)
    k = _split_heads(
        adapter.project(layer_idx, "k_proj", attn.k_proj, h, memory_rows), parts.num_kv_heads, parts.head_dim
    )  # (B, Hkv, G*size, hd) pre-RoPE
    v = _split_heads(
        adapter.project(layer_idx, "v_proj", attn.v_proj, h, memory_rows), parts.num_kv_heads, parts.head_dim
    )  # (B, Hkv, G*size, hd)
    cos, sin = plan.cos, plan.sin  # (1, positions, hd)
    m0 = mem_keys.shape[2]
    # Memory entry i always sits at position i, so each entry is rotated once, not at every window.
    seen = _SeenKV.start(
        apply_rope(mem_keys, cos[:, :m0], sin[:, :m0]), mem_values, (n_windows - 1) * n_mem + size
    )
    # Every window's queries and own keys rotated in one pass each (positions differ per window, see plan).
    q_rot = apply_rope(q, plan.cos_own, plan.sin_own)  # (B, Hq, G*size, hd)
    k_rot = apply_rope(k, plan.cos_own, plan.sin_own)  # (B, Hkv, G*size, hd)
    outputs = []
    new_keys, new_values = [], []
    for j in range(n_windows):
        block = slice(j * size, (j + 1) * size)
        m = m0 + j * n_mem
        keys, values = seen.with_block(k_rot[:, :, block], v[:, :, block])  # (B, Hkv, M_j+size, hd)
        outputs.append(_attend(parts, q_rot[:, :, block], keys, values, plan.masks[j]))  # (B, size, Hq*hd)
        k_mem_new = k[:, :, block][:, :, window:]  # (B, Hkv, n, hd) pre-RoPE
        v_mem_new = v[:, :, block][:, :, window:]
        new_keys.append(k_mem_new)
        new_values.append(v_mem_new)
        if j + 1 < n_windows:
            seen.append(apply_rope(k_mem_new, cos[:, m : m + n_mem], sin[:, m : m + n_mem]), v_mem_new)
    attn_out = adapter.project(layer_idx, "o_proj", attn.o_proj, torch.cat(outputs, dim=1), memory_rows)
    x = x + attn_out  # (B, G*size, D)
    x = x + layer.mlp(layer.post_attention_layernorm(x))
    return x, torch.cat(new_keys, dim=2), torch.cat(new_values, dim=2)


def memory_inputs(adapter: MemoryAdapter, raw: torch.Tensor, n_mem: int) -> torch.Tensor:
    """Input embeddings of each window's memory tokens: raw (B, G, W, D) -> (B, G, n, D).

    "shared": every memory token is the adapter's one learned embedding, so at initialisation the n tokens of
    a window are identical and only their positions tell them apart (their values start nearly collinear).
    "span_last": token i is the embedding of the last raw token of its span [i*r, (i+1)*r) plus the learned
    embedding (an offset, zero at the start), so each memory token starts distinct and tied to its span."""
    batch, n_windows, window, _ = raw.shape
    learned = adapter.memory_embedding.to(raw.dtype)  # (D,)
    if adapter.config.memory_input == "span_last" and n_mem:
        step = window // n_mem
        return raw[:, :, step - 1 :: step] + learned  # (B, G, n, D)
    return learned.expand(batch, n_windows, n_mem, -1)


def sink_memory(parts: BaseParts, ids: torch.Tensor) -> tuple[list[LayerMemory], torch.Tensor]:
    """The input's first tokens (B, s) kept raw as the first memory entries (the attention sink).

    They go through the frozen base weights as full attention would read them (positions 0..s-1; under the
    `lora_on: all` ablation raw window tokens get the LoRA and the sink does not),
    so every later window still sees the token the model dumps its spare attention on. Returns per-layer
    pre-RoPE keys/values (B, Hkv, s, hd) and their normed final hidden states (B, s, D)."""
    batch, s = ids.shape
    cache = cache_from_memory(parts, empty_memory(parts, batch, parts.embed_tokens.weight), batch)
    hidden, cache = extend(parts, cache, ids, torch.ones_like(ids), logits_for="hidden")
    assert hidden is not None
    positions = torch.arange(s, device=ids.device)[None]  # (1, s)
    cos, sin = parts.rope(hidden, positions)
    # extend stores rotated keys; rotating by the opposite angle gives them back in memory's pre-RoPE form
    layers = [LayerMemory(apply_rope(k, cos, -sin), v) for k, v in zip(cache.keys, cache.values, strict=True)]
    return layers, hidden


def compress_group(
    parts: BaseParts,
    adapter: MemoryAdapter,
    ids: torch.Tensor,
    memory: list[LayerMemory],
    window: int,
    n_mem: int,
    pattern: AttentionPattern = "full-coverage",
    checkpointing: bool = False,
) -> tuple[list[LayerMemory], torch.Tensor]:
    """Run G full windows (ids (B, G*W)) through every layer.

    Returns the memory extended by the group's G*n entries per layer and the final hidden states of the raw
    tokens (B, G*W, D) (normed, ready for the LM head).
    """
    batch, total = ids.shape
    n_windows = total // window
    size = window + n_mem
    raw = parts.embed_tokens(ids).view(batch, n_windows, window, -1)  # (B, G, W, D)
    mem = memory_inputs(adapter, raw, n_mem)  # (B, G, n, D)
    x = torch.cat([raw, mem], dim=2).reshape(batch, n_windows * size, -1)  # (B, G*size, D)
    offsets = torch.arange(n_windows, device=ids.device)[:, None] * size
    memory_rows = (offsets + window + torch.arange(n_mem, device=ids.device)).reshape(-1)  # (G*n,)
    plan = GroupPlan.build(parts, x, memory[0].keys.shape[2], window, n_mem, n_windows, pattern)
    new_memory = []
    for layer_idx, layer_mem in enumerate(memory):
        fn: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = _group_layer
        args = (
            parts,
            adapter,
            layer_idx,
            x,
            layer_mem.keys,
            layer_mem.values,
            window,
            n_mem,
            n_windows,
            memory_rows,
            plan,
        )
        if checkpointing and torch.is_grad_enabled():
            x, k_new, v_new = checkpoint(fn, *args, use_reentrant=False)
        else:
            x, k_new, v_new = fn(*args)
        new_memory.append(
            LayerMemory(
                torch.cat([layer_mem.keys, k_new], dim=2), torch.cat([layer_mem.values, v_new], dim=2)
            )
        )
    hidden = x.view(batch, n_windows, size, -1)[:, :, :window].reshape(batch, n_windows * window, -1)
    return new_memory, parts.norm(hidden)


@dataclass
class KVCache:
    """Rotated keys/values for decoding over memory.

    (B, Hkv, T, hd) per layer, plus which columns are real.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor  # (B, T) bool: False for left-padding columns
    next_position: torch.Tensor  # (B,) position of the next token of each row

    @property
    def length(self) -> int:
        return int(self.valid.shape[1])


def cache_from_memory(parts: BaseParts, memory: list[LayerMemory], batch: int) -> KVCache:
    """Rotate pre-RoPE memory keys to positions 0..M-1 once; expand a single memory over `batch` rows."""
    m = memory[0].keys.shape[2]
    like = memory[0].keys
    device = like.device
    positions = torch.arange(m, device=device)[None]  # (1, M)
    cos, sin = parts.rope(like, positions)
    keys, values = [], []
    for layer_mem in memory:
        k = apply_rope(layer_mem.keys, cos, sin)  # (Bm, Hkv, M, hd)
        keys.append(k.expand(batch, -1, -1, -1) if k.shape[0] == 1 else k)
        values.append(layer_mem.values.expand(batch, -1, -1, -1) if k.shape[0] == 1 else layer_mem.values)
    valid = torch.ones(batch, m, dtype=torch.bool, device=device)
    return KVCache(keys, values, valid, torch.full((batch,), m, dtype=torch.long, device=device))


def extend(
    parts: BaseParts,
    cache: KVCache,
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_for: Literal["last", "all", "none", "hidden"] = "last",
    adapter: MemoryAdapter | None = None,
) -> tuple[torch.Tensor | None, KVCache]:
    """Append ordinary tokens (B, T) (left-padded where attention_mask is 0) to the cache.

    Ordinary tokens use the base weights; only an adapter whose LoRA applies everywhere (the ablation
    switch) changes them.

    Each row's tokens take positions next_position, next_position+1, ...; they attend to every valid cache
    column and causally to themselves. Returns logits (B, V) of the last token, or (B, T, V), or None, or
    ("hidden") the normed final hidden states (B, T, D).
    """
    batch, t = ids.shape
    real = attention_mask.bool()  # (B, T)
    positions = cache.next_position[:, None] + (real.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
    x = parts.embed_tokens(ids)  # (B, T, D)
    cos, sin = parts.rope(x, positions)  # (B, T, hd)
    causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()  # (T, T)
    own = causal[None] & real[:, None, :]  # (B, T, T)
    old = cache.valid[:, None, :].expand(batch, t, -1)  # (B, T, Tc)
    mask = torch.cat([old, own], dim=2)  # (B, T, Tc+T)
    mask = mask | ~real[:, :, None]  # padding rows attend to something (their output is ignored)
    mask = mask[:, None]  # (B, 1, T, Tc+T)
    new_keys, new_values = [], []
    everywhere = adapter is not None and adapter.applies_everywhere

    def project(layer_idx: int, name: str, linear: nn.Linear, h: torch.Tensor) -> torch.Tensor:
        return adapter.project(layer_idx, name, linear, h, None) if everywhere else linear(h)  # type: ignore[union-attr]

    layer: Any
    for layer_idx, layer in enumerate(parts.layers):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = _split_heads(project(layer_idx, "q_proj", attn.q_proj, h), parts.num_heads, parts.head_dim)
        k = _split_heads(project(layer_idx, "k_proj", attn.k_proj, h), parts.num_kv_heads, parts.head_dim)
        v = _split_heads(project(layer_idx, "v_proj", attn.v_proj, h), parts.num_kv_heads, parts.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # (B, Hq|Hkv, T, hd)
        keys = torch.cat([cache.keys[layer_idx], k], dim=2)  # (B, Hkv, Tc+T, hd)
        values = torch.cat([cache.values[layer_idx], v], dim=2)
        x = x + project(layer_idx, "o_proj", attn.o_proj, _attend(parts, q, keys, values, mask))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        new_keys.append(keys)
        new_values.append(values)
    new_cache = KVCache(
        new_keys,
        new_values,
        torch.cat([cache.valid, real], dim=1),
        cache.next_position + real.long().sum(1),
    )
    if logits_for == "none":
        return None, new_cache
    hidden = parts.norm(x[:, -1] if logits_for == "last" else x)
    if logits_for == "hidden":
        return hidden, new_cache
    return parts.lm_head(hidden), new_cache
