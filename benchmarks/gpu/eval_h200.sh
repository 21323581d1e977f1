#!/usr/bin/env bash
# One device call that scores a battery trained elsewhere (the CPU runs) on one H200: the 4K needle as 4-way
# choice for the experts, full attention, truncation and the untrained expert (100 items, all on the same
# items); the kvpress presses on those same items at the battery's first ratio; kv-retrieval (generated
# answers) for the experts, truncation and full attention. Every stage has its own time box, so a slow one
# cannot starve the rest; everything lands in $OUT/log and $OUT/results.tar.gz.
#
# Here (CPU), once: ../shared/tools/stage-smollm2; python benchmarks/gpu/experts_h200.py prepare;
#   bash benchmarks/gpu/stage_eval.sh; copy the battery to .gpu-stage/battery
# Device call 1 (carry .gpu-stage/part00 and .gpu-stage/kvwhl-a):
#   mkdir -p ~/m && cp -r .gpu-stage/part00 .gpu-stage/kvwhl-a ~/m/
# Device call 2, within ~30 s (carry .gpu-stage/part01, sha256, whl, data, kvwhl-b, battery):
#   bash benchmarks/gpu/eval_h200.sh [ITEMS] [RATIO] [OTHER_RATIOS] [SKIP]
# OTHER_RATIOS (e.g. 4,16): presses also at these, after everything else at RATIO; SKIP: needle methods
# already scored on the same items elsewhere (e.g. untrained).
set -uo pipefail
items=${1:-100}
ratio=${2:-8}
other_ratios=${3:-}
skip=${4:-}
stage=.gpu-stage
work=/tmp/selfctx-eval
mkdir -p "$work"
log="$OUT/log"
cat ~/m/part00 "$stage/part01" > "$stage/smollm2.gguf" && sha256sum -c "$stage/sha256" || exit 1
python3 -m pip install -q --no-index --no-deps --target /tmp/site "$stage"/whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --target /tmp/kvsite ~/m/kvwhl-a/*.whl "$stage"/kvwhl-b/*.whl \
    || echo "kvpress wheels did not install: the press stage will fail" | tee -a "$log"
export PYTHONUNBUFFERED=1 SELFCTX_PROGRESS=0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$log"

pack() { tar czf "$OUT/results.tar.gz" -C "$work" . 2>/dev/null; }

echo "== needle as 4-way choice, 4K, $items items" | tee -a "$log"
PYTHONPATH=/tmp/site:src timeout 170 python3 benchmarks/gpu/experts_h200.py run --battery "$stage/battery" \
    --data "$stage/data" --haystack "$stage/data/haystack" --out "$work/needle-mc" --work "$work" \
    --dtype float32 --lengths 4000 --items "$items" --eval-seconds 130 --skip "$skip" 2>&1 | tee -a "$log"
pack

presses() {  # RATIOS SECONDS: the presses on the needle items, each row resumable
    echo "== kvpress presses at x$1 on the same items" | tee -a "$log"
    PYTHONPATH=/tmp/kvsite:/tmp/site timeout "$2" python3 benchmarks/kvpress/run_presses.py \
        --gguf "$stage/smollm2.gguf" --out "$work/kvpress" --items "$work/items-4000.jsonl" --device cuda \
        --presses streaming_llm,snapkv,expected_attention,kvzip,snapkv_question,none --ratios "$1" \
        2>&1 | grep -v " item [0-9]*:" | tee -a "$log"
    pack
}
presses "$ratio" 150

echo "== kv-retrieval, 4K, 30 items" | tee -a "$log"
PYTHONPATH=/tmp/site:src timeout 110 python3 -m selfctx eval synthetic --model "$stage/smollm2.gguf" \
    --pool "$stage/data/pool" --out "$work/kv-retrieval" --checks kv-retrieval --lengths 4000 --depths 0.5 \
    --samples 30 --method compressed,truncate-1024,full --experts "$stage/battery" --dtype float32 --device cuda \
    2>&1 | tee -a "$log"
pack
[ -n "$other_ratios" ] && presses "$other_ratios" 70
ls -R "$work" | head -60 >> "$log"
