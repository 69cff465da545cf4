#!/usr/bin/env bash
# The README's results: the mini-world benchmark for "van gogh" (ESD-x, UCE, STEREO, AP, DM2) and for one shape,
# "triangle" (ESD-u, STEREO, AP, DM2), against CCE and UnlearnDiff. Cells are reused, so each line only runs what
# the one before has not. Usage: bash scripts/run_benchmarks.sh [SEEDS]   (SEEDS defaults to 1)
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-1}
python evaluate.py benchmark --concept "van gogh" --methods base,esd-x,uce --attacks all --seeds "$SEEDS"
python evaluate.py benchmark --concept triangle --methods base,esd-u --attacks all --seeds "$SEEDS"
python evaluate.py benchmark --concept "van gogh" --methods base,esd-x,uce,stereo,ap,dm2 --attacks all --seeds "$SEEDS"
python evaluate.py benchmark --concept triangle --methods base,esd-u,stereo,ap,dm2 --attacks all --seeds "$SEEDS"
