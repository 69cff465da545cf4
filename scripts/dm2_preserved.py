"""What do DM2's preserve terms keep? Circumventing keeps the original model's predictions for c0 ('a photo') and for
each mined embedding scaled by 0 and by -1 (0*c: L zero vectors in place of the tokens). If one of those draws
the concept on the original model, preserving it works against erasing. For a DM2 run: PICTURES pictures of each
on the original model, judged by the mini judge (the share its head calls the concept, and the style and shape
heads' counts). 0*c does not depend on what was mined: one row.

    python scripts/dm2_preserved.py runs/dm2_vangogh --out results/.../dm2_preserved.md

Mini world only (the judge is the mini judge).
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "scripts"))

import data  # noqa: E402
import dm2_mined  # noqa: E402
import erase  # noqa: E402
import mini  # noqa: E402
import sd as sdlib  # noqa: E402

PICTURES = 30  # pictures per conditioning (seeds 0..PICTURES-1)


def counts(hit, styles, shapes):
    return (f"{hit:.2f} | " + ", ".join(f"{n} {c}" for n, c in zip(data.STYLES, styles) if c) + " | "
            + ", ".join(f"{n} {c}" for n, c in zip(data.SHAPES, shapes) if c))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a DM2 run folder written by erase.py --method dm2")
    p.add_argument("--pictures", type=int, default=PICTURES)
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    a = p.parse_args(argv)
    cfg, emb, sd, concept, judge = dm2_mined.load_run(a.run, a.pictures, "dm2_preserved.py")
    first = next(iter(emb.values()))
    rows = {"0*c (any mined embedding)": 0 * first}
    for k, v in emb.items():
        rows[f"{k} (c)"] = v
        rows[f"-{k} (-c)"] = -v
    drawn = dm2_mined.shares(sd, rows, judge, concept, a.pictures, "original model")
    anchor = erase.DM2_ANCHOR
    pr = mini.judge_predict(judge, sdlib.generate(sd, [anchor] * a.pictures, list(range(a.pictures)), progress=False))
    want = data.ATTRIBUTES[concept.attribute].index(concept.value)
    c0 = (float((pr[concept.attribute] == want).mean()), np.bincount(pr["style"], minlength=len(data.STYLES)),
          np.bincount(pr["shape"], minlength=len(data.SHAPES)))
    lines = [f"# What DM2's preserve terms draw on the original model: {cfg['concept']!r}, seed {cfg['seed']}", "",
             f"`python scripts/dm2_preserved.py {a.run} --pictures {a.pictures}`: {a.pictures} pictures each on the "
             f"original model, judged by the mini judge ({concept.attribute} head for {concept.value!r}).", "",
             f"| conditioning | share {concept.value!r} | styles | shapes |", "|---|---|---|---|",
             f"| c0 = {anchor!r} | {counts(*c0)} |"]
    lines += [f"| {name} | {counts(*d)} |" for name, d in zip(rows, drawn)]
    print("\n".join(lines))
    if a.out:
        data.save_text("\n".join(lines) + "\n", a.out)


if __name__ == "__main__":
    main()
