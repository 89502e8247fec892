#!/usr/bin/env bash
# Two more training seeds of each demo model with the shipped recipe (the demo-weights target),
# for the spread across seeds that the studies report (docs/studies.md). Not shipped: the models
# land in build/seeds/SEED/final/. About 26 minutes per model on a 2-core CPU, so every step is
# resumable: a finished step leaves a .done marker and is skipped; an interrupted training
# continues from its last finished epoch (train --resume). Usage: bash scripts/study-seeds.sh
# [SEED ...] (default: 1 2); VENV selects the virtual environment (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
SEEDS=("$@")
[ ${#SEEDS[@]} -gt 0 ] || SEEDS=(1 2)

step() {  # step MARKER COMMAND...: run COMMAND unless MARKER exists, then create MARKER
    local marker=$1
    shift
    if [ -f "$marker" ]; then
        echo "study-seeds: done already: $marker"
        return
    fi
    "$@"
    mkdir -p "$(dirname "$marker")"
    touch "$marker"
}

# the shipped models' data: scenes are a pure function of seed, split and index
step build/scenes/.done "$BIN/simam-viz" scenes build/scenes --seed 0 --size 128
step build/scenes_more/.done "$BIN/simam-viz" scenes build/scenes_more --seed 1 --size 128 \
    --train 18000 --val 480 --test 120
for seed in "${SEEDS[@]}"; do
    out="build/seeds/$seed"
    step "$out/stage1/.done" "$BIN/simam-viz" train --data build/scenes --out "$out/stage1" \
        --epochs 28 --size 129 --device cpu --seed "$seed" --resume
    step "$out/final/.done" "$BIN/simam-viz" train --data build/scenes_more --out "$out/final" \
        --init "$out/stage1" --epochs 3 --lr 0.02 --warmup-epochs 0.2 --size 129 \
        --test-size 161 --device cpu --seed "$seed" --resume
done
echo "study-seeds: seeds ${SEEDS[*]} trained in build/seeds/"
