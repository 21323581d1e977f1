#!/bin/sh
# The CPU-scale method comparison (needle grid), then the short finetune run and its row in the same report.
# The committed results were made at 870ee1c by the since-removed benchmarks/compare_methods.py (folders
# experts-NAME-r8 there, NAME-w256-r8 here); these are the same runs as `selfctx eval` calls.
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)" && . .venv/bin/activate
H=${HAYSTACK:-../shared/data/paul_graham_essays}  # the needle haystack beside the checkout
GRID="--haystack $H --out runs/compare/needle --lengths 2000,4000 --depths 0.1,0.5,0.9 --dtype float32"
EXP="--experts synth=runs/experts-cpu-synth/experts --experts nosynth=runs/experts-cpu-nosynth/experts \
  --experts clone=runs/experts-cpu-clone/experts --experts untrained= --window 256 --native-context 1024 --ratio 8"
echo "=== compare $(date -u +%H:%M:%S) $(uptime)"
selfctx eval needle $GRID --method truncate-1024,full,compressed $EXP || exit 1
echo "=== finetune $(date -u +%H:%M:%S) $(uptime)"
selfctx train --method finetune --preset smollm2-cpu --config configs/finetune-cpu-short.yaml || exit 1
echo "=== compare finetune $(date -u +%H:%M:%S) $(uptime)"
selfctx eval needle $GRID --method full --model runs/finetune-cpu-short/final || exit 1
selfctx eval report runs/compare/needle/* --out runs/compare/report
echo "=== done $(date -u +%H:%M:%S)"
