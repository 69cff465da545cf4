"""Compare two benchmark reports of the same concept cell by cell (e.g. the quick profile against the full one):
for every method both have, the concept rate, preservation and every ASR side by side, the largest gap, and
whether the two tables order the methods the same way by mean ASR; each method's erase cost in UNet evaluations
(the compared one's as a fraction of the reference's); plus the wall time of each.

    python scripts/compare_profiles.py results/benchmark/van_gogh results/benchmark/van_gogh_quick \
        --out results/benchmark/van_gogh_quick/vs_full.md
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402


def load(folder):
    path = os.path.join(folder, "metrics.json")
    if not os.path.exists(path):
        sys.exit(f"error: {path} not found (run benchmark.py first)")
    return json.load(open(path))


def cell_minutes(m):
    """The sum of every cell's recorded wall time over the report's methods (one seed's worth per seed)."""
    total = 0.0
    for method in m["methods"]:
        s = m["summary"][method]
        total += sum(v["mean"] or 0.0 for k, v in s.items() if k.startswith("cell_seconds_")) * len(m["seeds"])
    return total / 60


def mean_asr(s, attacks):
    return float(np.mean([s[f"asr_{at}"]["mean"] for at in attacks]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reference", help="benchmark report folder (e.g. the full profile's)")
    p.add_argument("other", help="benchmark report folder to compare with it (e.g. the quick profile's)")
    p.add_argument("--labels", nargs=2, default=["full", "quick"])
    p.add_argument("--out", default=None, help="write the comparison here as Markdown (default: print only)")
    a = p.parse_args(argv)
    ref, oth = load(a.reference), load(a.other)
    if ref["concept"] != oth["concept"]:
        sys.exit(f"error: the reports erase different concepts ({ref['concept']!r}, {oth['concept']!r})")
    methods = [x for x in ref["methods"] if x in oth["methods"]]
    attacks = [x for x in ref["attacks"] if x in oth["attacks"]]
    if not methods or not attacks:
        sys.exit("error: the reports have no method or no attack in common")
    r, o = a.labels
    cols = ["concept_rate", "preservation"] + [f"asr_{at}" for at in attacks]
    names = ["concept rate", "preservation"] + [f"ASR {at}" for at in attacks]
    head = ["method"] + names + ["largest gap", "erase UNet evals (fraction)"]
    lines = [f"Each cell: {r} / {o}. Reference: {ref['command']}. Compared: {oth['command']}.", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    gaps = []
    for method in methods:
        s1, s2 = ref["summary"][method], oth["summary"][method]
        row, worst = [method], (0.0, "")
        for c, n in zip(cols, names):
            v1, v2 = s1[c]["mean"], s2[c]["mean"]
            if v1 is None or v2 is None:
                row.append("-")
                continue
            row.append(f"{v1:.2f} / {v2:.2f}")
            if abs(v2 - v1) > worst[0]:
                worst = (abs(v2 - v1), n)
        gaps.append(worst[0])
        row.append(f"{worst[0]:.2f} ({worst[1]})" if worst[1] else "0.00")
        e1, e2 = (s.get("erase_unet_evals", {}).get("mean") for s in (s1, s2))
        row.append(f"{e1:,.0f} / {e2:,.0f} ({e2 / e1:.2f})" if e1 and e2 is not None else "-")
        lines.append("| " + " | ".join(row) + " |")
    cells = [abs(ref["summary"][m][c]["mean"] - oth["summary"][m][c]["mean"]) for m in methods for c in cols
             if ref["summary"][m][c]["mean"] is not None and oth["summary"][m][c]["mean"] is not None]
    order_r = sorted(methods, key=lambda m: mean_asr(ref["summary"][m], attacks))
    order_o = sorted(methods, key=lambda m: mean_asr(oth["summary"][m], attacks))
    from itertools import combinations
    pairs = list(combinations(methods, 2))
    agree = sum(np.sign(mean_asr(ref["summary"][x], attacks) - mean_asr(ref["summary"][y], attacks))
                == np.sign(mean_asr(oth["summary"][x], attacks) - mean_asr(oth["summary"][y], attacks))
                for x, y in pairs)
    lines += ["", f"Cells within 0.05: {sum(g <= 0.05 + 1e-9 for g in cells)} of {len(cells)}; within 0.10: "
              f"{sum(g <= 0.10 + 1e-9 for g in cells)}; median gap {float(np.median(cells)):.3f}.",
              f"Methods by mean ASR over the {len(attacks)} attacks, most robust first: {r}: {', '.join(order_r)}; "
              f"{o}: {', '.join(order_o)} ({agree} of {len(pairs)} pairs ordered the same way, ties counting as "
              "an order).",
              f"Sum of every recorded cell wall time in each report (cells made outside the benchmark have none): {r} {cell_minutes(ref):.0f} min, {o} "
              f"{cell_minutes(oth):.0f} min.", ""]
    text = "\n".join(lines)
    print(text)
    if a.out:
        data.save_text(text, a.out)


if __name__ == "__main__":
    main()
