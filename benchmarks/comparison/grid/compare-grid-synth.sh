#!/bin/sh
# Held-out synthetic checks at 8K and 16K (depth 0.5) for the grid's methods, then one report of everything.
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)" && . .venv/bin/activate
while pgrep -f compare-grid.sh > /dev/null; do sleep 20; done
COMMON="--pool runs/pool-seed0 --exclude-from runs/synth-train --out runs/compare-grid/synthetic --depths 0.5 --dtype float32"
EXP="--experts synth=runs/experts-cpu-synth/experts --experts nosynth=runs/experts-cpu-nosynth/experts \
  --experts clone=runs/experts-cpu-clone/experts --experts untrained= --window 256 --native-context 8192 --ratio 8"
echo "=== synthetic 8000,16000 $(date -u +%H:%M:%S) $(uptime)"
selfctx eval synthetic $COMMON --lengths 8000,16000 --method truncate-1024,compressed $EXP || exit 1
echo "=== full 8000 $(date -u +%H:%M:%S) $(uptime)"
selfctx eval synthetic $COMMON --lengths 8000 --method full || exit 1
echo "=== report $(date -u +%H:%M:%S)"
selfctx eval report runs/compare-grid/needle/* runs/compare-grid/synthetic/* --out runs/compare-grid/report
echo "=== done $(date -u +%H:%M:%S)"
