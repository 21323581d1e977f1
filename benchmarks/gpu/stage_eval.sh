#!/usr/bin/env bash
# What benchmarks/gpu/eval_h200.sh needs beyond ../shared/tools/stage-smollm2 (run that first):
# - the GGUF parts re-split at 51,000,000 bytes, so that call 1 (part00 + kvwhl-a + the tree) and call 2
#   (part01 + data + kvwhl-b + the battery + the tree) each stay under the 64 MiB a device call carries;
# - packages the H200 image (Python 3.12, transformers 5.17, tokenizers 0.23, no registry) lacks: rouge
#   (selfctx's ROUGE-L scorer) beside the gguf wheel in .gpu-stage/whl; kvpress 0.5.5 with the transformers it
#   pins (5.2) and what `import kvpress` needs, installed there with `pip install --target` and put first on
#   PYTHONPATH for the press stage only (kvwhl-a rides with part00, kvwhl-b with part01).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
stage=.gpu-stage
cat "$stage"/part0* > "$stage/smollm2.gguf.tmp"
[ "$(sha256sum < "$stage/smollm2.gguf.tmp" | cut -d' ' -f1)" = "$(cut -d' ' -f1 "$stage/sha256")" ] \
    || { echo "the staged parts do not rebuild the GGUF: rerun ../shared/tools/stage-smollm2" >&2; exit 1; }
rm -f "$stage"/part0*
split -b 51000000 -d "$stage/smollm2.gguf.tmp" "$stage/part"
rm -f "$stage/smollm2.gguf.tmp"
get() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$@"
}
rm -rf "$stage/kvwhl-a" "$stage/kvwhl-b"
get "$stage/kvwhl-a" transformers==5.2.0
# fire 0.6 (kvpress's pin) has no wheel; 0.7.1 serves the one import that needs it
get "$stage/kvwhl-b" kvpress==0.5.5 tokenizers==0.22.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
    fire==0.7.1 termcolor==3.3.0 cachetools==5.5.2
get "$stage/whl" rouge==1.0.1
ls -l "$stage"/part0*; du -sh "$stage/kvwhl-a" "$stage/kvwhl-b" "$stage/whl"
