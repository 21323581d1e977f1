#!/bin/sh
# The held-out synthetic checks for the same seven methods (the needle rows are already in runs/compare).
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)" && . .venv/bin/activate
SYN="--pool runs/pool-seed0 --exclude-from runs/synth-train --out runs/compare/synthetic --lengths 1000,4000 \
  --depths 0.5 --dtype float32"
EXP="--experts synth=runs/experts-cpu-synth/experts --experts nosynth=runs/experts-cpu-nosynth/experts \
  --experts clone=runs/experts-cpu-clone/experts --experts untrained= --window 256 --native-context 1024 --ratio 8"
echo "=== compare synthetic $(date -u +%H:%M:%S) $(uptime)"
selfctx eval synthetic $SYN --method truncate-1024,full,compressed $EXP || exit 1
selfctx eval synthetic $SYN --method full --model runs/finetune-cpu-short/final || exit 1
selfctx eval report runs/compare/needle/* runs/compare/synthetic/* --out runs/compare/report
echo "=== done $(date -u +%H:%M:%S)"
