"""`make_llm(backend, model, ...)`: the one place that turns CLI options into a ready backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from selfctx.checks import SynthBackend
from selfctx.errors import SelfctxError
from selfctx.llm.base import LLM

BACKENDS: tuple[str, ...] = (*get_args(SynthBackend), "echo")  # echo: the tests' model-free backend
DEFAULT_MODEL = "smollm2-135m"


def make_llm(
    backend: str,
    model: str = DEFAULT_MODEL,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    concurrency: int | None = None,
    timeout: float | None = None,
    max_retries: int | None = None,
    cache_dir: str | Path | None = None,
    **kw: Any,
) -> LLM:
    """Build a backend; with `cache_dir` it is wrapped in a persistent `CachedLLM`.

    backend: "llamacpp" (GGUF in-process; the CPU default), "hf" (transformers), "openai" (any
    OpenAI-compatible server at `base_url`), "echo" (deterministic, model-free; tests and dry runs).
    concurrency: requests in flight for openai; parallel llama.cpp instances for llamacpp; batch size for hf.
    api_key: for openai (default: the OPENAI_API_KEY environment variable, if set).
    Extra keywords go to the backend (hf: dtype, device; llamacpp: n_ctx, n_threads).
    """
    backend = backend.lower()
    if backend not in BACKENDS:
        raise SelfctxError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if concurrency is not None and concurrency < 1:
        raise SelfctxError(f"concurrency must be at least 1 (got {concurrency})")
    if backend != "openai" and (base_url or api_key):
        raise SelfctxError(f"--base-url/--api-key only apply to --backend openai, not {backend}: drop them")
    llm = _build(backend, model, base_url, api_key, concurrency, timeout, max_retries, kw)
    if cache_dir is not None:
        from selfctx.llm.cache import CachedLLM

        llm = CachedLLM(llm, cache_dir)
    return llm


def _build(
    backend: str,
    model: str,
    base_url: str | None,
    api_key: str | None,
    concurrency: int | None,
    timeout: float | None,
    max_retries: int | None,
    kw: dict[str, Any],
) -> LLM:
    if backend == "openai":
        if not base_url:
            raise SelfctxError(
                "--backend openai needs --base-url (e.g. http://localhost:8000/v1) and --model NAME as served"
            )
        from selfctx.llm.openai_backend import OpenAICompatLLM

        return OpenAICompatLLM(
            base_url,
            model,
            api_key=api_key,
            concurrency=concurrency or 8,
            timeout=timeout if timeout is not None else 120.0,
            max_retries=max_retries if max_retries is not None else 4,
            **kw,
        )
    if backend == "echo":
        from selfctx.llm.echo import EchoLLM

        return EchoLLM(model_id=f"echo:{model}", **kw)

    from selfctx.models import resolve_model

    spec = resolve_model(model)
    if backend == "llamacpp":
        if not spec.runs_on_llamacpp:
            raise SelfctxError(
                f"--backend llamacpp needs a .gguf model (with no adapter), and {model!r} is not one: pass "
                f"a .gguf file, the embedded {DEFAULT_MODEL}, or use --backend hf"
            )
        from selfctx.llm.llamacpp_backend import LlamaCppLLM

        return LlamaCppLLM(spec, instances=concurrency, **kw)
    from selfctx.llm.hf_backend import HFLLM

    return HFLLM.load(spec, batch_size=concurrency or 8, **kw)
