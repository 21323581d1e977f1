#!/bin/sh
# The 4K-32K needle grid, all methods, one out folder (the runs resume cell by cell after a stop).
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)" && . .venv/bin/activate
H=${HAYSTACK:-../shared/data/paul_graham_essays}  # the needle haystack beside the checkout
COMMON="--haystack $H --out runs/compare-grid/needle --depths 0.1,0.5,0.9 --dtype float32"
EXP="--experts synth=runs/experts-cpu-synth/experts --experts nosynth=runs/experts-cpu-nosynth/experts \
  --experts clone=runs/experts-cpu-clone/experts --experts untrained= --window 256 --native-context 8192 --ratio 8"
echo "=== needle $(date -u +%H:%M:%S) $(uptime)"
selfctx eval needle $COMMON --lengths 4000,8000,16000,32000 --method truncate-1024,compressed $EXP || exit 1
# full attention only where it fits SmolLM2's 8K positions; its folder joins the same report
echo "=== full 4000,8000 $(date -u +%H:%M:%S) $(uptime)"
selfctx eval needle $COMMON --lengths 4000,8000 --method full || exit 1
echo "=== done $(date -u +%H:%M:%S)"
