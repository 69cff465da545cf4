#!/usr/bin/env bash
# results/README.md's tables (mini world v1): the mini-world benchmark for "van gogh" (every method but DM2 x every attack) and for one
# shape, "triangle". Cells are reused, so each line only runs what the lines before have not.
# Usage: bash scripts/run_benchmarks.sh [SEEDS] (default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-1}
# the shape: naive erasure (ESD-u, as the ESD paper does for objects) and the two attacks of the demonstration
python evaluate.py benchmark --concept triangle --methods base,esd-u --attacks cce,unlearndiff --seeds "$SEEDS"
# the style: every method x every attack (DM2 left out: it does not erase van gogh yet, see docs/methods.md)
python evaluate.py benchmark --concept "van gogh" --methods base,esd-x,uce,advunlearn,rece,ap,stereo --attacks all \
    --seeds "$SEEDS"
# AdvUnlearn at a learning rate between its default (2e-5: does not erase) and 2e-4 (wrecks the shapes)
python evaluate.py benchmark --concept "van gogh" --methods advunlearn --attacks all --seeds "$SEEDS" \
    --erase-args "--lr 6e-5" --work work/benchmark/van_gogh_advunlearn_lr6e-5 \
    --out results/benchmark/van_gogh/ablation_advunlearn_lr6e-5
# the quick profile (every cell shorter, two cells at a time) from scratch, and how far its table is from the above
python evaluate.py benchmark --concept "van gogh" --methods all --attacks all --seeds "$SEEDS" --profile quick --jobs 2
python scripts/compare_profiles.py results/benchmark/van_gogh results/benchmark/van_gogh_quick \
    --out results/benchmark/van_gogh_quick/vs_full.md
# the laptop profile (quick cut further, aiming at 30 minutes on 2 cores) from scratch, and its distance from the full
python evaluate.py benchmark --concept "van gogh" --methods all --attacks all --seeds "$SEEDS" --profile laptop --jobs 2
python scripts/compare_profiles.py results/benchmark/van_gogh results/benchmark/van_gogh_laptop --labels full laptop \
    --out results/benchmark/van_gogh_laptop/vs_full.md
# AdvUnlearn at the learning rate it used to have (its own cells: the settings differ from the default's)
python evaluate.py benchmark --concept "van gogh" --methods advunlearn --attacks cce,unlearndiff --seeds "$SEEDS" \
    --erase-args "--lr 2e-4" --work work/benchmark/van_gogh_advunlearn_lr2e-4 \
    --out results/benchmark/van_gogh/ablation_advunlearn_lr2e-4
# issue 4: the seed methods (STEREO, AP, DM2) against ESD and UCE under CCE and UnlearnDiff, several seeds, for the
# style and for the shape, in the quick profile (seed 0 of van gogh reuses the quick-profile cells above). What the
# results/README.md shows: seeds 0-2 of each.
python evaluate.py benchmark --concept "van gogh" --methods base,esd-x,uce,stereo,ap,dm2 --attacks cce,unlearndiff \
    --profile quick --seeds 3 --jobs 2 --out results/benchmark/van_gogh_quick_seeds
python evaluate.py benchmark --concept triangle --methods base,esd-u,uce,stereo,ap,dm2 --attacks cce,unlearndiff \
    --profile quick --seeds 3 --jobs 2 --out results/benchmark/triangle_quick_seeds
# DM2 with its circumvent x_t drawn by partial sampling (a probe: results/benchmark/van_gogh_quick/dm2_probes)
python evaluate.py benchmark --concept "van gogh" --methods dm2 --attacks cce,unlearndiff --profile quick --seeds 3 \
    --jobs 2 --erase-args "--dm2-xt sample" --work work/benchmark/van_gogh_quick_dm2_xt_sample \
    --out results/benchmark/van_gogh_quick_seeds/dm2_xt_sample
# DM2 at the circumvent schedule that finishes (batch 4, 300 steps, lr 3e-3; the default since 2026-12-01, the
# --erase-args say it for the cells made before), with mining at CCE's lr, and with ten loops (seed 0)
python evaluate.py benchmark --concept "van gogh" --methods dm2 --attacks cce,unlearndiff --profile quick --seeds 3 \
    --jobs 2 --erase-args "--dm2-batch 4 --dm2-circumvent-steps 300 --dm2-lr 3e-3" \
    --work work/benchmark/van_gogh_quick_dm2_b4 --out results/benchmark/van_gogh_quick_seeds/dm2_b4_s300_lr3e-3
python evaluate.py benchmark --concept "van gogh" --methods dm2 --attacks cce,unlearndiff --profile quick --seeds 3 \
    --jobs 2 --erase-args "--dm2-batch 4 --dm2-circumvent-steps 300 --dm2-lr 3e-3 --dm2-mine-lr 0.005 --dm2-mine-lr-end 0.0005" \
    --work work/benchmark/van_gogh_quick_dm2_b4_minelr --out results/benchmark/van_gogh_quick_seeds/dm2_b4_minelr0.005
python evaluate.py benchmark --concept triangle --methods dm2 --attacks cce,unlearndiff --profile quick --seeds 3 \
    --jobs 2 --erase-args "--dm2-batch 4 --dm2-circumvent-steps 300 --dm2-lr 3e-3" \
    --work work/benchmark/triangle_quick_dm2_b4 --out results/benchmark/triangle_quick_seeds/dm2_b4_s300_lr3e-3
python evaluate.py benchmark --concept "van gogh" --methods dm2 --attacks cce,unlearndiff --profile quick --seeds 1 \
    --erase-args "--dm2-max-loops 10" --work work/benchmark/van_gogh_quick_dm2_b4_loops10 \
    --out results/benchmark/van_gogh_quick_seeds/dm2_b4_loops10
python evaluate.py benchmark --concept "van gogh" --methods dm2 --attacks cce,unlearndiff --profile quick --seeds 1 \
    --erase-args "--dm2-lora-on values+cross-keys" --work work/benchmark/van_gogh_quick_dm2_cross_keys \
    --out results/benchmark/van_gogh_quick_seeds/dm2_cross_keys
# the same on 3 seeds (seed 0 reused), the mined tokens in captions (stopped after 2 seeds: --seeds 2 writes its
# report), and without DM2's 0*c preserve term; the scripts behind the probes report's last sections
python evaluate.py benchmark --concept "van gogh" --methods dm2 --attacks cce,unlearndiff --profile quick --seeds 3 \
    --jobs 2 --erase-args "--dm2-lora-on values+cross-keys" --work work/benchmark/van_gogh_quick_dm2_cross_keys \
    --out results/benchmark/van_gogh_quick_seeds/dm2_cross_keys
python evaluate.py benchmark --concept "van gogh" --methods dm2 --attacks cce,unlearndiff --profile quick --seeds 2 \
    --jobs 2 --erase-args "--dm2-mine-in caption" --work work/benchmark/van_gogh_quick_dm2_caption \
    --out results/benchmark/van_gogh_quick_seeds/dm2_caption
python evaluate.py benchmark --concept "van gogh" --methods dm2 --attacks cce,unlearndiff --profile quick --seeds 3 \
    --jobs 2 --erase-args "--dm2-preserve c0+neg" --work work/benchmark/van_gogh_quick_dm2_no_zero \
    --out results/benchmark/van_gogh_quick_seeds/dm2_no_zero
python evaluate.py benchmark --concept triangle --methods dm2 --attacks cce,unlearndiff --profile quick --seeds 1 \
    --erase-args "--dm2-preserve c0+neg" --work work/benchmark/triangle_quick_dm2_no_zero \
    --out results/benchmark/triangle_quick_seeds/dm2_no_zero
python scripts/dm2_preserved.py work/benchmark/van_gogh_quick_dm2_b4/runs/dm2_s0 \
    --out results/benchmark/van_gogh_quick/dm2_probes/preserved.md
python scripts/dm2_preserved.py work/benchmark/triangle_quick_dm2_b4/runs/dm2_s0 \
    --out results/benchmark/triangle_quick_seeds/dm2_b4_s300_lr3e-3/preserved.md
python scripts/anchor_sdedit.py --concept "van gogh" --anchors "a photo" "a" "<guide>" \
    --out results/benchmark/van_gogh_quick/dm2_probes/anchor_sdedit.md
python scripts/anchor_sdedit.py --concept triangle --anchors "a photo" "a" "<guide>" \
    --out results/benchmark/van_gogh_quick/dm2_probes/anchor_sdedit_triangle.md
python scripts/dm2_subspace.py work/benchmark/van_gogh_quick_dm2_b4 work/benchmark/van_gogh_quick_dm2_cross_keys \
    --concept "van gogh" --out results/benchmark/van_gogh_quick/dm2_probes/subspace.md
python scripts/dm2_subspace.py work/benchmark/triangle_quick_dm2_b4 --concept triangle \
    --out results/benchmark/triangle_quick_seeds/dm2_b4_s300_lr3e-3/subspace.md
# bench_batching's ceiling alone (results/batching/ceiling.md); the attack table: without --attacks none
python scripts/bench_batching.py --attacks none
# issue 6: the paper-length schedules of STEREO (the public code's step counts) and AP (1000 iterations) against the
# defaults of the van gogh table above (seed 0, full-profile attacks), and AP at 400 iterations
python evaluate.py benchmark --concept "van gogh" --methods stereo,ap --attacks cce,unlearndiff --seeds 1 --jobs 2 \
    --erase-args "--iterations 1000 --ste-iterations 200 --ti-steps 375 --reo-iterations 200" \
    --work work/benchmark/van_gogh_paper --out results/benchmark/van_gogh_paper
python scripts/compare_profiles.py results/benchmark/van_gogh_paper results/benchmark/van_gogh \
    --labels paper-length default --out results/benchmark/van_gogh_paper/vs_default.md
python evaluate.py benchmark --concept "van gogh" --methods ap --attacks cce,unlearndiff --seeds 1 \
    --erase-args "--iterations 400" --work work/benchmark/van_gogh_ap400 --out results/benchmark/van_gogh_ap400
python scripts/compare_profiles.py results/benchmark/van_gogh_paper results/benchmark/van_gogh_ap400 \
    --labels paper-length 400-iterations --out results/benchmark/van_gogh_ap400/vs_paper.md
# when the mini world decides a concept (switching the prompt after K of 25 DDIM steps)
python scripts/switch_prompts.py --concept "van gogh" --out results/diagnostics/switch_van_gogh.md
python scripts/switch_prompts.py --concept triangle --out results/diagnostics/switch_triangle.md
