#!/bin/sh
# The held-out synthetic checks for the same seven methods (the needle rows are already in runs/compare).
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)" && . .venv/bin/activate
H=${HAYSTACK:-../shared/data/paul_graham_essays}  # the needle haystack beside the checkout
echo "=== compare synthetic $(date -u +%H:%M:%S) $(uptime)"
python benchmarks/compare_methods.py --haystack $H --out runs/compare \
  --experts synth=runs/experts-cpu-synth/experts --experts nosynth=runs/experts-cpu-nosynth/experts \
  --experts clone=runs/experts-cpu-clone/experts --untrained --truncate 1024 --full \
  --finetune runs/finetune-cpu-short/final \
  --synthetic runs/pool-seed0 --exclude-from runs/synth-train --synthetic-lengths 1000,4000 --synthetic-depths 0.5
echo "=== done $(date -u +%H:%M:%S)"
