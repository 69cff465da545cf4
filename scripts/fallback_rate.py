"""How often the model draws a concept in its own scenes when the prompt leaves it unsaid: the concept's fallback rate.

    python scripts/fallback_rate.py                        # every mini concept, base model
    python scripts/fallback_rate.py --concepts square,purple --weights runs/esdx_square

For each named prompt of a concept ('a striped red square') the same scene with the concept left unsaid: a shape
becomes the noun 'thing' ('a striped red thing'), a colour is dropped ('a striped square'), a style becomes plain
('a red square'). The judge reads how many of those pictures still show the concept. An erasure that only removes
the concept's word leaves the model to fill the gap with what it draws for the unsaid scene, so a concept whose
fallback rate is high comes back wherever its word is weakened (results/mini_v2/fallback.md). The named rate is
printed beside it; one picture per prompt (seeds --seed, --seed + 1, ...), prompts cycled to --pictures.
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

PICTURES = 48  # pictures per prompt set (the concept's 20-24 named prompts cycled twice)
SEED = 0
UNSAID_SHAPE = "thing"  # the noun the captions use when they do not name the shape (data._NOUNS)


def scenes(name):
    """(named prompt, the same scene with the concept unsaid) for every scene of a mini concept."""
    attribute = data.VALUE_ATTRIBUTE[name]
    if attribute == "shape":
        return [(data.prompt_for(name, c, st), data.prompt_for(UNSAID_SHAPE, c, st))
                for c in data.COLOR_NAMES for st in data.STYLES]
    if attribute == "color":
        return [(data.prompt_for(s, name, st), data.prompt_for(s, "", st))
                for s in data.SHAPES for st in data.STYLES]
    return [(data.prompt_for(s, c, name), data.prompt_for(s, c, "plain"))
            for s in data.SHAPES for c in data.COLOR_NAMES]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concepts", type=data.mini_concepts_arg, default="all",
                   help="comma-separated mini-world concepts, or all")
    p.add_argument("--pictures", type=int, default=PICTURES)
    p.add_argument("--model", default=None, help="base model (default: the mini world)")
    p.add_argument("--weights", default=None, help="an erase.py run folder to load over the model")
    p.add_argument("--seed", type=int, default=SEED)
    a = p.parse_args(argv)
    names = a.concepts
    if a.pictures < 1:
        sys.exit(f"--pictures must be at least 1, not {a.pictures}")
    sd = sdlib.load(a.model, "cpu", weights=a.weights)
    seeds = [a.seed + i for i in range(a.pictures)]
    print(f"{a.weights or a.model or 'base mini model'}: {a.pictures} pictures per set, sampling guidance 5\n")
    print("| concept | kind | named prompts | concept unsaid | example unsaid prompt |\n|---|---|---|---|---|")
    for name in names:
        concept = data.get_concept(name)
        judge = judges.MiniJudge(concept, judges.MINI_DIR)
        cells = []
        pairs = scenes(name)
        for texts in zip(*pairs):
            prompts = [texts[i % len(texts)] for i in range(a.pictures)]
            cells.append(f"{float(np.mean(judge(sdlib.generate(sd, prompts, seeds, progress=False)))):.2f}")
        print(f"| {name} | {concept.attribute} | {cells[0]} | {cells[1]} | {pairs[1][1]!r} |",
              flush=True)


if __name__ == "__main__":
    main()
