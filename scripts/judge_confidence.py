"""How sure the mini judge is when it says an erased model still draws the concept.

    python scripts/judge_confidence.py --concept square --weights RUN [RUN ...]

Draws the concept's named prompts (one seed each) from the base model and from each run, and prints the concept
rate, quantiles of the judge's probability for the concept, and the median of its top probability. A rate carried
by pictures the judge reads at probability near 1 is the concept drawn, not a closed-set classifier forced to pick
the nearest class for a picture that shows none (results/mini_v2/hard_concepts.md).
"""
import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
import data  # noqa: E402
import judges  # noqa: E402
import sd as sdlib  # noqa: E402

QUANTILES = [10, 50, 90]  # percentiles of p(concept) printed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concept", required=True, choices=data.MINI_CONCEPTS)
    p.add_argument("--weights", nargs="+", required=True, help="erase.py run folders")
    p.add_argument("--model", default=None, help="base model (default: the mini world)")
    a = p.parse_args(argv)
    missing = [w for w in a.weights if not os.path.exists(os.path.join(w, sdlib.RUN_WEIGHTS))]
    if missing:
        sys.exit(f"--weights: no {sdlib.RUN_WEIGHTS} in {', '.join(missing)}")
    concept = data.get_concept(a.concept)
    judge = judges.load_judge()
    index = data.ATTRIBUTES[concept.attribute].index(concept.value)
    seeds = list(range(len(concept.prompts)))
    print(f"| model | {a.concept} rate | p({a.concept}) " + " / ".join(f"p{q}" for q in QUANTILES) +
          " | median top probability |\n|---|---|---|---|")
    for w in [None, *a.weights]:
        sd = sdlib.load(a.model, "cpu", weights=w)
        pictures = sdlib.generate(sd, concept.prompts, seeds, progress=False)
        with torch.no_grad():
            probs = torch.softmax(judge(judges.to_tensor(pictures))[concept.attribute], 1)
        mine = probs[:, index].numpy()
        print(f"| {w or 'base'} | {(probs.argmax(1) == index).float().mean().item():.2f} | "
              f"{' / '.join(f'{v:.2f}' for v in np.percentile(mine, QUANTILES))} | "
              f"{np.median(probs.max(1).values.numpy()):.2f} |", flush=True)


if __name__ == "__main__":
    main()
