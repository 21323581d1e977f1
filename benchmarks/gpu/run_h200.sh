#!/usr/bin/env bash
# The second device call of benchmarks/gpu/experts_h200.py (see its docstring): rebuild the staged GGUF, make
# the gguf reader importable, then train and evaluate; everything it prints also lands in $OUT/log.
set -euo pipefail
cat ~/m/part00 .gpu-stage/part01 > .gpu-stage/smollm2.gguf
sha256sum -c .gpu-stage/sha256
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu-stage/whl/*.whl
export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 SELFCTX_PROGRESS=0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/log"
python3 benchmarks/gpu/experts_h200.py run --out "$OUT" "$@" 2>&1 | tee -a "$OUT/log"
