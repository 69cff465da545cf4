"""What the base model draws for prompts that name nothing: the judge's reading of each attribute.

    python scripts/prompt_draws.py                        # '', 'a thing', DM2's anchor 'a photo' and other heads
    python scripts/prompt_draws.py --prompts "a photo" "an image"

Per prompt, the share of pictures (one seed each, sampling guidance --guidance, 5 by default) whose shape, colour,
style and background the mini judge reads as each value. A value that such a prompt draws often is the model's
fallback when a caption leaves that attribute unsaid (results/mini_v2/hard_concepts.md).
"""
import argparse
import collections
import os
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
import data  # noqa: E402
import judges  # noqa: E402
import sd as sdlib  # noqa: E402

PROMPTS = ["", "a thing", "a photo", "a picture", "an image", "a painting"]
PICTURES = 48  # per prompt
GUIDANCE = 5.0  # sampling guidance: every evaluation's (sd.generate's default); 1 is the conditional model alone
SEED = 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", nargs="+", default=PROMPTS)
    p.add_argument("--pictures", type=int, default=PICTURES)
    p.add_argument("--model", default=None, help="base model (default: the mini world)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--guidance", type=float, default=GUIDANCE)
    a = p.parse_args(argv)
    if a.pictures < 1:
        sys.exit(f"--pictures must be at least 1, not {a.pictures}")
    sd = sdlib.load(a.model, "cpu")
    judge = judges.load_judge()
    print("| prompt | " + " | ".join(data.ATTRIBUTES) + " |\n|---" + "|---" * len(data.ATTRIBUTES) + "|")
    for prompt in a.prompts:
        pictures = sdlib.generate(sd, [prompt] * a.pictures, [a.seed + i for i in range(a.pictures)],
                                  guidance=a.guidance, progress=False)
        read = judges.judge_predict(judge, pictures)
        cells = []
        for attribute, values in data.ATTRIBUTES.items():
            counts = collections.Counter(values[i] for i in read[attribute])
            cells.append(", ".join(f"{v} {n / a.pictures:.2f}" for v, n in counts.most_common()))
        print(f"| {prompt!r} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
