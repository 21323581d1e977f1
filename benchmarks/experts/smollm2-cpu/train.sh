#!/usr/bin/env bash
# The commands that make the smollm2-cpu battery on a 2-core CPU, in order. Every step resumes: rerun this
# script after any stop and it continues where the last one ended (the data from the call cache, training from
# the run's latest checkpoint, snapshots are rewritten from finished runs).
#
#   bash benchmarks/experts/smollm2-cpu/train.sh            # from the repository root, in the project's venv
#
# Stage 1 of the x8 is the smollm2-cpu preset (400 steps, recall lengths in characters, as it was measured);
# stage 2 continues it on long recall samples (configs/stage2-x8-long.yaml); stage 3 trains x4 from it and
# stage 4 x16, each carrying the experts before it, so runs/x16-stage4/experts holds the whole battery.
# Hours per stage are in this folder's README.
set -euo pipefail
export SELFCTX_PROGRESS="${SELFCTX_PROGRESS:-0}"
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

log "data: the model's synthetic task samples and its passage pool (llama.cpp)"
selfctx synth --out runs/synth --uniform 1k-6k --per-task 10 --seed 1
selfctx synth --out runs/pool --length 80k --tasks summarization --per-task 1 --seed 2

log "x8 stage 1: the preset"
selfctx train --method experts --preset smollm2-cpu --set "experts.ratios=[8]"
selfctx train --method experts --preset smollm2-cpu --set "experts.ratios=[8]" --snapshot runs/snap-x8-stage1

log "x8 stage 2: long recall samples"
selfctx train --method experts --preset smollm2-cpu --config configs/stage2-x8-long.yaml
selfctx train --method experts --preset smollm2-cpu --config configs/stage2-x8-long.yaml --snapshot runs/snap-x8-stage2

log "x4 (stage 3) from the stage-2 x8"
selfctx train --method experts --preset smollm2-cpu --config configs/stage3-x4.yaml

log "x16 (stage 4) from the x8, carrying x4 and x8"
selfctx train --method experts --preset smollm2-cpu --config configs/stage4-x16.yaml
log "done: runs/x16-stage4/experts"
