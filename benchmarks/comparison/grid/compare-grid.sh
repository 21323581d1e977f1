#!/bin/sh
# Issue 5's 4K-32K needle grid, all methods, one out folder; phases by length so a stop keeps whole rows.
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)" && . .venv/bin/activate
H=${HAYSTACK:-../shared/data/paul_graham_essays}  # the needle haystack beside the checkout
COMMON="--haystack $H --out runs/compare-grid --depths 0.1,0.5,0.9 --native-context 8192 --ratio 8"
EXP="--experts synth=runs/experts-cpu-synth/experts --experts nosynth=runs/experts-cpu-nosynth/experts --experts clone=runs/experts-cpu-clone/experts --untrained --truncate 1024"
for L in 4000,8000 4000,8000,16000 4000,8000,16000,32000; do
  echo "=== lengths $L $(date -u +%H:%M:%S) $(uptime)"
  python benchmarks/compare_methods.py $COMMON --lengths $L $EXP || exit 1
done
# full attention only where it fits SmolLM2's 8K positions; the other methods' folders join its report
echo "=== full 4000,8000 $(date -u +%H:%M:%S) $(uptime)"
python benchmarks/compare_methods.py $COMMON --lengths 4000,8000 $EXP --full --only full || exit 1
echo "=== done $(date -u +%H:%M:%S)"
