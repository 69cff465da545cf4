"""What ESD's target draws: the concept rate of a perfectly trained ESD, with no training.

    python scripts/esd_ideal.py                        # every mini concept, eta 1 and 2, base model
    python scripts/esd_ideal.py --concepts purple,red --etas 1,2,3

ESD trains e'(x_t, c) toward e(x_t, 0) - eta (e(x_t, c) - e(x_t, 0)) under the original model. A model that met
that target exactly would sample, at guidance g, e(0) + g (e'(c) - e(0)) = e(0) - g eta (e(c) - e(0)): the original
model at guidance -g * eta. So this script draws each concept's prompts from the ORIGINAL model at that negative
guidance and asks the judge how many still show the concept. A rate well above zero means ESD toward the
unconditional cannot erase the concept at that eta however long it trains: what lies opposite the concept, seen
from the unconditional, still looks like it to the judge. Beside it, the rate of the unconditional itself ('' at
guidance 1): how often the model draws the concept when asked for nothing.

Columns per concept: the unconditional's rate, then per eta the ideal rate on the concept's frames (ESD's default
erase prompts) and on its named scene prompts. Used in results/mini_v2/esd_ideal.md.
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
import data  # noqa: E402
import judges  # noqa: E402
import sd as sdlib  # noqa: E402

ETAS = [1.0, 2.0]  # ESD's negative guidance: 1 is the paper's (and ours)
GUIDANCE = 5.0  # the sampling guidance of every evaluation in this project (sd.generate's default)
PICTURES = 40  # pictures per prompt set (prompts cycled, one seed each)
UNCOND_PICTURES = 96  # pictures of '' (one set shared by every concept)
SEED = 0


def rate(judge, pictures):
    return float(np.mean(judge(pictures)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concepts", type=data.mini_concepts_arg, default="all",
                   help="comma-separated mini-world concepts, or all")
    p.add_argument("--etas", default=",".join(f"{e:g}" for e in ETAS), help="comma-separated eta values")
    p.add_argument("--pictures", type=int, default=PICTURES)
    p.add_argument("--model", default=None, help="base model (default: the mini world)")
    p.add_argument("--seed", type=int, default=SEED)
    a = p.parse_args(argv)
    names = a.concepts
    try:
        etas = [float(e) for e in a.etas.split(",") if e.strip()]
    except ValueError:
        sys.exit(f"--etas: numbers separated by commas, not {a.etas!r}")
    if not etas or min(etas) <= 0:
        sys.exit(f"--etas: one or more positive numbers, not {a.etas!r}")
    if a.pictures < 1:
        sys.exit(f"--pictures must be at least 1, not {a.pictures}")
    sd = sdlib.load(a.model, "cpu")
    seeds = [a.seed + i for i in range(a.pictures)]
    uncond = sdlib.generate(sd, [""] * UNCOND_PICTURES, [a.seed + i for i in range(UNCOND_PICTURES)],
                            guidance=1.0, progress=False)
    print(f"Base model, {a.pictures} pictures per set, sampling guidance {GUIDANCE:g} (ideal ESD: -{GUIDANCE:g} eta), "
          f"judge: the mini judge's head for the concept's attribute.\n")
    print("| concept | kind | unconditional | " +
          " | ".join(f"ideal ESD eta {e:g}: frames | eta {e:g}: named prompts" for e in etas) + " |")
    print("|---" * (3 + 2 * len(etas)) + "|")
    for name in names:
        concept = data.get_concept(name)
        judge = judges.MiniJudge(concept, judges.MINI_DIR)
        cells = [f"{rate(judge, uncond):.2f}"]
        for eta in etas:
            for texts in (concept.frames, concept.prompts):
                prompts = [texts[i % len(texts)] for i in range(a.pictures)]
                cells.append(f"{rate(judge, sdlib.generate(sd, prompts, seeds, guidance=-GUIDANCE * eta, progress=False)):.2f}")
        print(f"| {name} | {concept.attribute} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
