#!/usr/bin/env bash
# The kvpress baselines' own environment: benchmarks/kvpress/.venv (gitignored by the repo's `.venv/` rule).
#
# kvpress 0.5.5 pins transformers < 5.3 and selfctx needs >= 5.17, so the presses cannot run in the main venv.
# This venv holds kvpress with its pinned transformers, the same torch CPU wheel as the main venv and gguf
# (to dequantize the embedded SmolLM2 GGUF). `run_presses.py` runs in it and never imports selfctx.
#
#     bash benchmarks/kvpress/setup_env.sh            # idempotent: an existing venv is reused
#
# KVPRESS_PYTHON picks the interpreter (default python3, 3.10+). KVPRESS_TORCH overrides the torch
# requirement: `torch==2.13.0` resolves to the local CPU wheel where pip's find-links has it; elsewhere point
# pip at PyTorch's CPU index (PIP_EXTRA_INDEX_URL) or an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
python="${KVPRESS_PYTHON:-python3}"
torch_spec="${KVPRESS_TORCH:-torch==2.13.0}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
# torch first and alone, so the resolver never swaps it for a CUDA build to satisfy kvpress
"$venv/bin/python" -m pip install --quiet "$torch_spec"
"$venv/bin/python" -m pip install --quiet \
    "$torch_spec" \
    "kvpress==0.5.5" \
    "transformers==5.2.0" \
    "gguf>=0.10" \
    "sentencepiece" \
    "protobuf"
"$venv/bin/python" - <<'EOF'
import kvpress, torch, transformers
print(f"kvpress env ready: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"kvpress {kvpress.__name__} from {kvpress.__file__}")
EOF
