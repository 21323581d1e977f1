#!/bin/sh
# The comparison of issues 4/5/8 at CPU scale, then the short finetune run and its row in the same report.
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)" && . .venv/bin/activate
H=${HAYSTACK:-../shared/data/paul_graham_essays}  # the needle haystack beside the checkout
echo "=== compare $(date -u +%H:%M:%S) $(uptime)"
python benchmarks/compare_methods.py --haystack $H --out runs/compare \
  --experts synth=runs/experts-cpu-synth/experts --experts nosynth=runs/experts-cpu-nosynth/experts \
  --experts clone=runs/experts-cpu-clone/experts --untrained --truncate 1024 --full
echo "=== finetune $(date -u +%H:%M:%S) $(uptime)"
selfctx train --method finetune --preset smollm2-cpu --config configs/finetune-cpu-short.yaml
echo "=== compare finetune $(date -u +%H:%M:%S) $(uptime)"
python benchmarks/compare_methods.py --haystack $H --out runs/compare \
  --experts synth=runs/experts-cpu-synth/experts --experts nosynth=runs/experts-cpu-nosynth/experts \
  --experts clone=runs/experts-cpu-clone/experts --untrained --truncate 1024 --full \
  --finetune runs/finetune-cpu-short/final
echo "=== done $(date -u +%H:%M:%S)"
