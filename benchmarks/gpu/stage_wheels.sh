#!/usr/bin/env bash
# Packages the H200 image lacks for benchmarks/gpu/eval_h200.sh. rouge (selfctx's ROUGE-L scorer) joins the
# gguf wheel in .gpu-stage/whl. And the kvpress runner's packages for the image (Python 3.12, transformers 5.17, tokenizers 0.23, no
# registry): kvpress 0.5.5 with the transformers it pins (5.2) and what `import kvpress` needs that the image
# lacks. Installed there with `pip install --target` and put first on PYTHONPATH for the press stage only.
# Split in two so each device call stays under its 64 MiB (kvwhl-a rides with the model's first part).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
get() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$@"
}
rm -rf .gpu-stage/kvwhl-a .gpu-stage/kvwhl-b
get .gpu-stage/kvwhl-a transformers==5.2.0
# fire 0.6 (kvpress's pin) has no wheel; 0.7.1 serves the one import that needs it
get .gpu-stage/kvwhl-b kvpress==0.5.5 tokenizers==0.22.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
    fire==0.7.1 termcolor==3.3.0 cachetools==5.5.2
get .gpu-stage/whl rouge==1.0.1
du -sh .gpu-stage/kvwhl-a .gpu-stage/kvwhl-b .gpu-stage/whl
