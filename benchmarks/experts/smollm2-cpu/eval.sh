#!/usr/bin/env bash
# The battery's evaluations: the needle as 4-way choice (lm-eval), 100 items a length, depths uniform, every
# method on the same items so benchmarks/paired_mc.py can pair them. Each step resumes (a scored method is
# skipped) and runs only once its expert exists, so this can follow train.sh at any point:
#
#   bash benchmarks/experts/smollm2-cpu/eval.sh           # from the repository root, in the project's venv
#
#   x8  at 4K: the stage-2 snapshot, on the items of the committed rows (seed 0), paired with them (--prior)
#   x4  at 2K and x16 at 8K: the final battery beside full attention, truncation to the 1K native window and
#       the untrained expert of the same mechanism (window 64, one sink token, span_last memory input)
set -euo pipefail
HAYSTACK="${HAYSTACK:-../shared/data/paul_graham_essays}"
BATTERY=runs/x16-stage4/experts
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
if [ ! -d "$HAYSTACK" ]; then
    echo "error: no haystack at $HAYSTACK: set HAYSTACK to the Paul Graham essays folder" >&2
    exit 2
fi
mc() { python benchmarks/harness_needle_mc.py --haystack "$HAYSTACK" --items 100 --native-context 8192 "$@"; }
untrained=(--untrained --untrained-sink 1 --untrained-memory-input span_last --window 64)

if [ -f runs/snap-x8-stage2/battery.json ]; then
    log "x8 at 4K (paired with the committed stage-1 and stage-2 rows)"
    mc --out runs/mc-4k-w64-s240 --length 4000 --ratio 8 --experts rebuilt=runs/snap-x8-stage2 \
        --prior benchmarks/progress/mc-4k-x8-step400/results.json \
        --prior benchmarks/progress/mc-4k-x8-stage2/stage2-results.json
    python benchmarks/paired_mc.py runs/mc-4k-w64-s240 --reference experts-rebuilt-r8
else
    log "x8: no runs/snap-x8-stage2 yet (train.sh writes it after stage 2)"
fi

if [ -f "$BATTERY/battery.json" ]; then
    log "x4 at 2K"
    mc --out runs/mc-2k --length 2000 --ratio 4 --experts battery="$BATTERY" "${untrained[@]}" --full --truncate 1024
    python benchmarks/paired_mc.py runs/mc-2k --reference experts-battery-r4
    log "x16 at 8K"
    mc --out runs/mc-8k --length 8000 --ratio 16 --experts battery="$BATTERY" "${untrained[@]}" --full --truncate 1024
    python benchmarks/paired_mc.py runs/mc-8k --reference experts-battery-r16
else
    log "x4, x16: no $BATTERY yet (train.sh writes it after stage 4)"
fi
