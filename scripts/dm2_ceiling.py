"""How well DM2's verification tells each concept from its anchor, before any erasing.

    python scripts/dm2_ceiling.py                      # every mini concept
    python scripts/dm2_ceiling.py --concepts purple,red

Draws DM2's pool pictures and anchor pictures as erase.py's DM2 does (same seeds, --pool pictures) and prints
erase.verify_ceiling: one half of the pool scored against the other half, the verify score s(c) of a mined embedding
that drew the concept as the original model does. A ceiling near DM2's threshold (0.2) means DM2 may stop on its
first loop without erasing (results/mini_v2/hard_concepts.md).
"""
import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
import data  # noqa: E402
import erase  # noqa: E402
import judges  # noqa: E402
import sd as sdlib  # noqa: E402

POOL = 12  # pool pictures (the quick profile's --dm2-pool)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concepts", type=data.mini_concepts_arg, default="all",
                   help="comma-separated mini-world concepts, or all")
    p.add_argument("--pool", type=int, default=POOL)
    p.add_argument("--anchors", nargs="+", default=[erase.DM2_ANCHOR, *erase.DM2_ANCHOR_FALLBACKS],
                   help="anchor prompts c0, one column each (default: those --dm2-anchor auto chooses from)")
    p.add_argument("--model", default=None, help="base model (default: the mini world)")
    a = p.parse_args(argv)
    names = a.concepts
    if a.pool < 2:
        sys.exit(f"--pool must be at least 2 (two halves), not {a.pool}")
    sd = sdlib.load(a.model, "cpu")

    def enc(x):
        return torch.from_numpy(judges.judge_features(x, judges.MINI_DIR)).float()

    n_ref = erase.DM2_VERIFY_IMAGES
    f_refs = [enc(erase.dm2_anchor_pictures(sd, anchor, n_ref)) for anchor in a.anchors]
    print(f"{a.pool} pool pictures, {n_ref} anchor pictures, threshold {erase.DM2_THRESHOLD}; ceiling s per anchor.\n")
    print("| concept | " + " | ".join(repr(x) for x in a.anchors) + " |\n|---" + "|---" * len(a.anchors) + "|")
    for name in names:
        f_pool = enc(erase.dm2_pool(sd, data.get_concept(name), a.pool)[1])
        print(f"| {name} | " + " | ".join(f"{erase.verify_ceiling(f_pool, f):.3f}" for f in f_refs) + " |", flush=True)


if __name__ == "__main__":
    main()
