#!/usr/bin/env bash
# Carry the battery's training state from one sitting to the next through the repository.
#
# runs/ is not tracked, and a sitting may start on a fresh checkout; train.sh resumes exactly only from the
# runs' latest checkpoints and regenerates its data exactly only from the model-call caches. `save` copies
# those (the latest checkpoint of every run, its log and settings, finished snapshots, the call caches) into
# benchmarks/experts/smollm2-cpu/carry/ to be committed; `restore` copies them back into runs/ before train.sh.
#
#   bash benchmarks/experts/smollm2-cpu/carry.sh save      # at the end of a sitting, training stopped
#   bash benchmarks/experts/smollm2-cpu/carry.sh restore   # at the start of the next, before train.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
carry="$here/carry"
runs="runs"
run_dirs=(experts-smollm2-cpu/r8 x8-stage2-long/r8 x4-stage3/r4 x16-stage4/r16)
snapshots=(snap-x8-stage1 snap-x8-stage2)
caches=(synth/cache pool/cache)

case "${1:-}" in
save)
    if pgrep -f "selfctx train" > /dev/null; then
        echo "carry.sh: a selfctx train is running: stop it first (its checkpoint may be mid-write)" >&2
        exit 1
    fi
    rm -rf "$carry.tmp" && mkdir -p "$carry.tmp"
    for run in "${run_dirs[@]}"; do
        src="$runs/$run"
        [ -f "$src/checkpoints/latest.json" ] || continue
        latest=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['path'])" "$src/checkpoints/latest.json")
        mkdir -p "$carry.tmp/$run/checkpoints"
        cp "$src"/*.json "$src"/*.jsonl "$carry.tmp/$run/" 2>/dev/null || true
        cp "$src/checkpoints/latest.json" "$carry.tmp/$run/checkpoints/"
        cp -r "$src/checkpoints/$latest" "$carry.tmp/$run/checkpoints/"
    done
    for snap in "${snapshots[@]}"; do
        [ -f "$runs/$snap/battery.json" ] && cp -r "$runs/$snap" "$carry.tmp/$snap"
    done
    for cache in "${caches[@]}"; do
        [ -d "$runs/$cache" ] || continue
        mkdir -p "$carry.tmp/$cache"
        for db in "$runs/$cache"/*.sqlite; do  # one file each: fold the write-ahead log in first
            python3 -c "import sqlite3,sys; sqlite3.connect(sys.argv[1]).execute('PRAGMA wal_checkpoint(TRUNCATE)')" "$db"
            cp "$db" "$carry.tmp/$cache/"
        done
    done
    rm -rf "$carry" && mv "$carry.tmp" "$carry"
    du -sh "$carry"
    ;;
restore)
    [ -d "$carry" ] || { echo "carry.sh: nothing to restore ($carry does not exist)" >&2; exit 1; }
    mkdir -p "$runs"
    (cd "$carry" && find . -type f) | while read -r file; do
        if [ -e "$runs/$file" ]; then
            echo "carry.sh: keeping $runs/$file (already there)"
        else
            mkdir -p "$(dirname "$runs/$file")" && cp "$carry/$file" "$runs/$file"
        fi
    done
    echo "restored into $runs/: now run benchmarks/experts/smollm2-cpu/train.sh"
    ;;
*)
    echo "usage: carry.sh save|restore (from the repository root)" >&2
    exit 2
    ;;
esac
