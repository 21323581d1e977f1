"""make_llm: backends, clear errors for bad combinations, and a torch-free import of the package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from selfctx.errors import SelfctxError
from selfctx.llm import CachedLLM, ChatRequest, EchoLLM, make_llm
from selfctx.llm.openai_backend import OpenAICompatLLM


def test_unknown_backend() -> None:
    with pytest.raises(SelfctxError, match="unknown backend 'vllm'.*hf, llamacpp, openai"):
        make_llm("vllm")


def test_openai_needs_base_url() -> None:
    with pytest.raises(SelfctxError, match="needs --base-url"):
        make_llm("openai", "my-model")


def test_base_url_only_for_openai() -> None:
    with pytest.raises(SelfctxError, match="only apply to --backend openai"):
        make_llm("llamacpp", base_url="http://localhost:8000/v1")


def test_bad_base_url_and_concurrency() -> None:
    with pytest.raises(SelfctxError, match="not an http"):
        make_llm("openai", "m", base_url="localhost:8000")
    with pytest.raises(SelfctxError, match="at least 1"):
        make_llm("openai", "m", base_url="http://localhost:8000/v1", concurrency=0)


def test_llamacpp_rejects_non_gguf_model(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(SelfctxError, match="needs a .gguf model"):
        make_llm("llamacpp", str(tmp_path))


def test_missing_model_file() -> None:
    with pytest.raises(SelfctxError, match="does not exist"):
        make_llm("llamacpp", "/nonexistent/model.gguf")


def test_openai_and_echo_and_cache(tmp_path: Path) -> None:
    llm = make_llm("openai", "served-name", base_url="http://127.0.0.1:1/v1", cache_dir=tmp_path)
    assert isinstance(llm, CachedLLM) and isinstance(llm.inner, OpenAICompatLLM)
    assert llm.model_id == "openai:served-name"
    llm.close()
    echo = make_llm("echo", cache_dir=tmp_path / "c")
    assert isinstance(echo, CachedLLM) and isinstance(echo.inner, EchoLLM)
    assert echo.generate([ChatRequest.user("x")])[0].ok
    assert (tmp_path / "c" / "llm_calls.sqlite").is_file()


def test_package_and_openai_backend_import_without_torch() -> None:
    code = (
        "import sys, selfctx.llm, selfctx.llm.openai_backend, selfctx.llm.cache\n"
        "bad = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == ""
