"""lm-evaluation-harness adapter: any lm-eval task, read through selfctx's compressed memory.

    pip install "selfctx[harness]"
    python -m selfctx.eval.harness --model selfctx \\
        --model_args pretrained=smollm2-135m,experts=runs/experts --tasks hellaswag --limit 20

or from Python, with a model already loaded:

    import lm_eval
    from selfctx.eval.harness import SelfctxLM
    lm_eval.simple_evaluate(model=SelfctxLM(lm=compressed_lm), tasks=["hellaswag"])

`python -m selfctx.eval.harness` is lm-eval's own command line with the `selfctx` model registered (lm-eval
finds models only through its registry, which our import fills). model_args: pretrained (a model spec,
default smollm2-135m), experts (an expert folder; untrained experts without it), window, native_context,
ratio (force one expert; default: the router picks from each input's length, and inputs that fit natively
are not compressed), answer_budget (tokens the router keeps free after a context, default 128; longer
continuations or max_gen_toks widen it), dtype, device, batch_size, max_gen_toks.

Requests are answered the way `selfctx generate` answers: loglikelihood compresses the context's full windows
and reads its tail and the continuation raw (one compression per distinct context); loglikelihood_rolling
predicts every token from the memory of earlier windows plus its own window; generate_until decodes greedily
(or samples, when the task asks) after the compressed context and cuts at the first stop string.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import torch

from selfctx.compress.likelihood import middle_truncate, score_continuations, sequence_logprob
from selfctx.compress.memory import Memory
from selfctx.compress.model import CompressedLM
from selfctx.errors import SelfctxError

_MISSING = "lm-evaluation-harness is not installed: pip install 'selfctx[harness]' (or lm-eval>=0.4.9)"
try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as exc:  # the optional extra
    if __name__ == "__main__":  # the command line: one line, exit 2
        print(f"error: {_MISSING}", file=sys.stderr)
        sys.exit(2)
    raise SelfctxError(_MISSING) from exc


@register_model("selfctx")
class SelfctxLM(TemplateLM):
    """lm-eval's LM interface over a CompressedLM."""

    def __init__(
        self,
        pretrained: str = "smollm2-135m",
        experts: str | None = None,
        window: int | None = None,
        native_context: int | None = None,
        ratio: int | None = None,
        dtype: str = "auto",
        device: str | None = None,
        batch_size: int | str = 8,
        max_gen_toks: int = 256,
        answer_budget: int = 128,
        max_batch_size: int | None = None,  # lm-eval passes it; batches here are per shared context
        truncate: int | None = None,
        lm: CompressedLM | None = None,
    ) -> None:
        super().__init__()
        if device and device.startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command line asks for cuda unless told otherwise; a CPU machine still runs
            warnings.warn(f"device {device} is not available here: running on the CPU", stacklevel=2)
            device = None
        if lm is None:
            lm = CompressedLM.from_pretrained(
                pretrained, experts, window=window, native_context=native_context, dtype=dtype, device=device
            )
        if lm.tokenizer is None:
            raise SelfctxError("the CompressedLM has no tokenizer: build it with tokenizer=")
        if ratio is not None and ratio != 1 and ratio not in lm.battery.ratios:
            raise SelfctxError(
                f"ratio {ratio} has no expert (trained: {', '.join(map(str, lm.battery.ratios))}): "
                "pick one of those"
            )
        if truncate is not None and (ratio or 1) != 1:
            raise SelfctxError("truncate reads the kept tokens raw: use it with ratio 1 (or no ratio)")
        if truncate is not None and truncate <= answer_budget:
            raise SelfctxError(
                f"truncate {truncate} leaves no room beside the {answer_budget}-token answer budget"
            )
        if str(batch_size).startswith("auto"):
            batch_size = 8  # continuations of one context are short; no memory probing needed
        self.lm = lm
        self.tokenizer = lm.tokenizer
        self.ratio = ratio
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.answer_budget = int(answer_budget)
        # the truncation baseline: a context longer than `truncate` minus the answer budget keeps its first
        # and last halves (LongBench's middle truncation) and is read raw
        self.truncate = truncate
        self._device = lm.device

    # ------------------------------------------------------------ tokenization (TemplateLM's contract)
    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return int(bos) if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return list(self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"])

    def tok_decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "") or self.lm.name).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) if chat_template else None

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        return str(
            self.tokenizer.apply_chat_template(
                chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        )

    # ------------------------------------------------------------ requests
    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
        disable_tqdm: bool = False,
        **_kwargs: Any,
    ) -> list[tuple[float, bool]]:
        by_context: dict[tuple[int, ...], list[int]] = {}  # insertion-ordered
        for index, (_strings, context, _continuation) in enumerate(requests):
            by_context.setdefault(self._truncated(context), []).append(index)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for context, indices in _progress(by_context.items(), "loglikelihood", disable_tqdm):
            scored = score_continuations(
                self.lm,
                list(context),
                [requests[i][2] for i in indices],
                ratio=1 if self.truncate else self.ratio,
                budget=self.answer_budget,
                batch_size=self.batch_size,
            )
            for index, result in zip(indices, scored, strict=True):
                results[index] = result
                self.cache_hook.add_partial("loglikelihood", requests[index][0], result)
        return [r for r in results if r is not None]

    def _truncated(self, context: list[int]) -> tuple[int, ...]:
        if self.truncate is None:
            return tuple(context)
        return tuple(middle_truncate(context, self.truncate - self.answer_budget))

    def _no_truncation(self, kind: str) -> None:
        if self.truncate is not None:
            raise SelfctxError(f"truncate is the baseline for loglikelihood tasks only, not {kind}: drop it")

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        self._no_truncation("loglikelihood_rolling")
        results = []
        for request in _progress(requests, "loglikelihood_rolling", disable_tqdm):
            (text,) = request.args
            ids = [self.prefix_token_id, *self.tok_encode(text)]
            total = sequence_logprob(self.lm, ids, ratio=self.ratio)
            results.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return results

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        self._no_truncation("generate_until")
        outputs = []
        for request in _progress(requests, "generate_until", disable_tqdm):
            context, gen_kwargs = request.args
            text = self._generate_one(context, dict(gen_kwargs))
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return outputs

    def _generate_one(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
        sample = bool(gen_kwargs.pop("do_sample", False))
        temperature = float(gen_kwargs.pop("temperature", 0.0)) if sample else 0.0
        ids = self.tok_encode(context) or [self.prefix_token_id]
        memory = self._memory_for(ids, max_new)  # the context's last token stays raw, after the memory
        tokens = self.lm.continue_ids(
            memory,
            ids[-1:],
            max_new_tokens=max_new,
            temperature=temperature,
            top_p=float(gen_kwargs.pop("top_p", 1.0)),
            seed=gen_kwargs.pop("seed", None),
        )
        return _cut_at_stop(self.tok_decode(tokens), until)

    def _memory_for(self, ids: list[int], max_new: int) -> Memory:
        budget = max(self.answer_budget, max_new + 1)
        ratio = self.ratio if self.ratio is not None else self.lm.route_for(len(ids), budget).ratio
        return self.lm.compress(ids[:-1], ratio=ratio, chat=False)


def _cut_at_stop(text: str, until: list[str]) -> str:
    cut = min((text.index(s) for s in until if s and s in text), default=len(text))
    return text[:cut]


def _progress(items: Any, what: str, disable: bool) -> Any:
    from selfctx.progress import progress

    return items if disable else progress(items, desc=f"selfctx {what}")


def main() -> None:
    """lm-eval's command line, with `--model selfctx` available."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
