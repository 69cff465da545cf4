#!/usr/bin/env bash
# The demonstration: ESD and UCE erase, CCE and UnlearnDiff bring the concept back, one evaluation measures both.
# Mini world, CPU. Usage: bash scripts/show_the_problem.sh [SEED]   (about 40 minutes on 2 cores)
# Heavy outputs (run weights, attack images) go to work/show_the_problem; the report and grids to results/.
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:-0}
W=work/show_the_problem/seed$SEED
R=results/show_the_problem
mkdir -p "$W" "$R"
erase() {  # name, then erase.py arguments
  [ -d "$W/runs/$1" ] || python erase.py --seed "$SEED" --out "$W/runs/$1" "${@:2}"
}
erase esd-x_vangogh --method esd --concept "van gogh" --train-method esd-x
erase uce_vangogh --method uce --concept "van gogh"
erase esd-u_triangle --method esd --concept triangle --train-method esd-u
for spec in "base:van gogh" "esd-x_vangogh:van gogh" "uce_vangogh:van gogh" "base:triangle" "esd-u_triangle:triangle"; do
  run=${spec%%:*}; concept=${spec#*:}; tag=${run}_${concept// /}
  weights=(); [ "$run" = base ] || weights=(--weights "$W/runs/$run")
  for at in cce unlearndiff; do
    [ -d "$W/attacks/${tag}_$at" ] || python attack.py --attack $at --concept "$concept" "${weights[@]}" \
      --seed "$SEED" --out "$W/attacks/${tag}_$at"
  done
  [ -d "$W/eval/$tag" ] || python evaluate.py evaluate --concept "$concept" "${weights[@]}" --seed "$SEED" \
    --attacks "$W/attacks/${tag}_cce" "$W/attacks/${tag}_unlearndiff" --out "$W/eval/$tag"
done
{
  echo "Mini world, seed $SEED; regenerate with: bash scripts/show_the_problem.sh $SEED"
  echo
  python evaluate.py table "$W/eval/base_vangogh" "$W/eval/esd-x_vangogh_vangogh" "$W/eval/uce_vangogh_vangogh" \
    --labels "base model (van gogh)" "ESD-x van gogh" "UCE van gogh"
  echo
  python evaluate.py table "$W/eval/base_triangle" "$W/eval/esd-u_triangle_triangle" \
    --labels "base model (triangle)" "ESD-u triangle"
} > "$R/report_seed$SEED.md"
for run in esd-x_vangogh uce_vangogh esd-u_triangle; do cp "$W/runs/$run/before_after.png" "$R/${run}_before_after.png"; done
for tag in esd-x_vangogh_vangogh uce_vangogh_vangogh esd-u_triangle_triangle; do
  for at in cce unlearndiff; do cp "$W/attacks/${tag}_$at/grid.png" "$R/${tag}_${at}_grid.png"; done
done
cat "$R/report_seed$SEED.md"
