"""Local transformers backend: batched chat generation with left padding, per-request seeds and stops.

Sampling is done per row with the row's own `torch.Generator` seeded from `SamplingParams.seed` (a logits
processor draws the token and hands `generate` a one-hot choice), so a request's text does not depend on
which other requests share its batch. Stop strings and `max_tokens` are per row too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from selfctx.llm.base import LLM, ChatRequest, Completion, in_request_order
from selfctx.models import ModelSpec, load_causal_lm, resolve_model
from selfctx.sampling import eos_token_ids, nucleus_choice

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class _RowSampler:
    """Logits processor: temperature + top-p sampling, one generator per row; temperature 0 = greedy."""

    def __init__(self, requests: Sequence[ChatRequest], device: torch.device) -> None:
        import torch

        self.temps = [r.sampling.temperature for r in requests]
        self.top_ps = [r.sampling.top_p for r in requests]
        self.generators = []
        for r in requests:
            gen = torch.Generator(device=device)
            gen.manual_seed(r.sampling.seed)
            self.generators.append(gen)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        rows = [row for row, temp in enumerate(self.temps) if temp > 0]  # the others stay greedy (argmax)
        if not rows:
            return scores
        temps = torch.tensor([self.temps[row] for row in rows], device=scores.device).unsqueeze(1)
        probs = torch.softmax(scores[rows].float() / temps, dim=-1)
        out = scores.clone()
        for j, row in enumerate(rows):
            choice = nucleus_choice(probs[j], self.top_ps[row], self.generators[row])
            out[row] = torch.finfo(out.dtype).min
            out[row, choice] = 0
        return out


class _RowStop:
    """Stopping criterion: a row is done at its own max_tokens or when one of its stop strings appears."""

    def __init__(self, requests: Sequence[ChatRequest], prompt_len: int, tokenizer: Any) -> None:
        self.max_tokens = [r.sampling.max_tokens for r in requests]
        self.stops = [tuple(s for s in r.sampling.stop if s) for r in requests]
        self.prompt_len = prompt_len
        self.tokenizer = tokenizer

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        import torch

        n_new = input_ids.shape[1] - self.prompt_len
        done = [n_new >= m for m in self.max_tokens]
        for row, stops in enumerate(self.stops):
            if stops and not done[row]:
                tail_len = max(len(s) for s in stops) + 8  # a stop string spans at most this many tokens
                tail_ids = input_ids[row, -min(n_new, tail_len) :]
                tail = self.tokenizer.decode(tail_ids, skip_special_tokens=True)
                done[row] = any(s in tail for s in stops)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFLLM(LLM):
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        model_id: str,
        batch_size: int = 8,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.batch_size = batch_size
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.eos_ids = sorted(eos_token_ids(tokenizer, model.generation_config))

    @classmethod
    def load(
        cls, model: ModelSpec | str, *, batch_size: int = 8, dtype: str = "auto", device: str | None = None
    ) -> HFLLM:
        spec = resolve_model(model) if isinstance(model, str) else model
        lm, tokenizer = load_causal_lm(spec, dtype=dtype, device=device)
        return cls(lm, tokenizer, model_id=f"hf:{spec.name}", batch_size=batch_size)

    @property
    def preferred_batch_size(self) -> int:
        return self.batch_size

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        return in_request_order(self.generate_iter(requests), len(requests))

    def generate_iter(self, requests: Sequence[ChatRequest]) -> Iterator[tuple[int, Completion]]:
        """Yields each batch's completions as soon as that batch is done."""
        prompts: list[str] = [
            self.tokenizer.apply_chat_template(  # type: ignore[misc]
                r.as_openai_messages(), tokenize=False, add_generation_prompt=True
            )
            for r in requests
        ]
        lengths = [len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        # Similar lengths share a batch, so little compute goes to padding.
        order = sorted(range(len(requests)), key=lambda i: lengths[i], reverse=True)
        for start in range(0, len(order), self.batch_size):
            started = time.perf_counter()
            idx = order[start : start + self.batch_size]
            done = self._batch([requests[i] for i in idx], [prompts[i] for i in idx])
            self.stats.calls += len(done)
            self.stats.errors += sum(1 for c in done if not c.ok)
            self.stats.prompt_tokens += sum(c.prompt_tokens for c in done)
            self.stats.completion_tokens += sum(c.completion_tokens for c in done)
            self.stats.seconds += time.perf_counter() - started
            yield from zip(idx, done, strict=True)

    def _batch(self, requests: Sequence[ChatRequest], prompts: Sequence[str]) -> list[Completion]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        device = self.model.device
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(device)
        prompt_len = enc["input_ids"].shape[1]
        config = GenerationConfig(
            max_new_tokens=max(r.sampling.max_tokens for r in requests),
            do_sample=False,
            num_beams=1,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.eos_ids,
        )
        try:
            with torch.inference_mode():
                out = self.model.generate(  # type: ignore[operator]
                    **enc,
                    generation_config=config,
                    logits_processor=LogitsProcessorList([_RowSampler(requests, device)]),
                    stopping_criteria=StoppingCriteriaList([_RowStop(requests, prompt_len, self.tokenizer)]),
                )
        except (RuntimeError, ValueError) as exc:  # e.g. out of memory: fail these calls, not the run
            return [Completion("", finish_reason="error", error=f"transformers: {exc}") for _ in requests]
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        return [
            self._finish(r, out[row, prompt_len:].tolist(), int(prompt_tokens[row]))
            for row, r in enumerate(requests)
        ]

    def _finish(self, request: ChatRequest, new_tokens: list[int], prompt_tokens: int) -> Completion:
        finish = "length"
        for pos, token in enumerate(new_tokens):
            if token in self.eos_ids:
                new_tokens, finish = new_tokens[:pos], "stop"
                break
        new_tokens = new_tokens[: request.sampling.max_tokens]
        text = str(self.tokenizer.decode(new_tokens, skip_special_tokens=True))
        stops = [s for s in request.sampling.stop if s and s in text]
        if stops:
            text, finish = text[: min(text.index(s) for s in stops)], "stop"
            new_tokens = new_tokens[: self._tokens_until_stop(new_tokens, stops)]
        return Completion(text, prompt_tokens, len(new_tokens), finish_reason=finish)

    def _tokens_until_stop(self, tokens: list[int], stops: list[str]) -> int:
        """The fewest leading tokens whose text holds a stop (binary search: containment is monotone)."""
        lo, hi = 1, len(tokens)
        while lo < hi:
            mid = (lo + hi) // 2
            text = self.tokenizer.decode(tokens[:mid], skip_special_tokens=True)
            if any(s in text for s in stops):
                hi = mid
            else:
                lo = mid + 1
        return lo
