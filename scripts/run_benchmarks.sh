#!/usr/bin/env bash
# The README's results: the mini-world benchmark for "van gogh" and for one shape, "triangle". Cells are reused,
# so each line only runs what the lines before have not. Usage: bash scripts/run_benchmarks.sh [SEEDS] (default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-1}
# naive erasure and the two attacks of the demonstration
python evaluate.py benchmark --concept "van gogh" --methods base,esd-x,uce --attacks cce,unlearndiff --seeds "$SEEDS"
python evaluate.py benchmark --concept triangle --methods base,esd-u --attacks cce,unlearndiff --seeds "$SEEDS"
# the robust methods beside them (DM2, AdvUnlearn and RECE are not in the README table yet: see its text)
python evaluate.py benchmark --concept "van gogh" --methods base,esd-x,uce,ap,stereo --attacks cce,unlearndiff --seeds "$SEEDS"
# AdvUnlearn at the learning rate it used to have (its own cells: the settings differ from the default's)
python evaluate.py benchmark --concept "van gogh" --methods advunlearn --attacks cce,unlearndiff --seeds "$SEEDS" \
    --erase-args "--lr 2e-4" --work work/benchmark/van_gogh_advunlearn_lr2e-4 \
    --out results/benchmark/van_gogh/ablation_advunlearn_lr2e-4
# Ring-A-Bell against the naive methods and STEREO (its own report, so the table above keeps its columns)
python evaluate.py benchmark --concept "van gogh" --methods base,esd-x,uce,stereo --attacks cce,ringabell-continuous,ringabell --seeds "$SEEDS" --out results/benchmark/van_gogh_ringabell
