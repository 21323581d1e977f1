"""Text-generation backends for data synthesis behind one batch interface (`LLM.generate`).

    llm = make_llm("llamacpp", "smollm2-135m", cache_dir="runs/x/cache")
    completions = llm.generate([ChatRequest.user("Write a haiku about ferns.")])

Importing this package does not import torch or transformers (the hf backend loads them when built).
"""

from selfctx.llm.base import LLM, BackendStats, ChatRequest, Completion, Message, SamplingParams
from selfctx.llm.cache import CachedLLM, CallCache
from selfctx.llm.echo import EchoLLM
from selfctx.llm.factory import BACKENDS, DEFAULT_MODEL, make_llm

__all__ = [
    "BACKENDS",
    "DEFAULT_MODEL",
    "LLM",
    "BackendStats",
    "CachedLLM",
    "CallCache",
    "ChatRequest",
    "Completion",
    "EchoLLM",
    "Message",
    "SamplingParams",
    "make_llm",
]
