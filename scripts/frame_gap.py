"""How far each concept's frames move the original model's noise prediction from the unconditional one.

    python scripts/frame_gap.py                       # the mini world's concepts, base model

Prints, per concept, ||e(x_t, frame) - e(x_t, '')|| / ||e(x_t, '')|| averaged over its first FRAMES frames (one
seeded noise latent each) at each of TIMESTEPS, and the mean over them: the size of what ESD's negative guidance
pushes against. Used in results/mini_v2/colours.md to ask whether a colour's push is smaller than a style's.
"""
import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
import data  # noqa: E402
import sd as sdlib  # noqa: E402

CONCEPTS = ["van gogh", "stripes", "dots", "triangle", "square", "purple", "red", "blue"]  # each kind, two or more
FRAMES = 8  # the concept's first frames, one latent each
TIMESTEPS = [100, 300, 500, 700, 900]
SEED = 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concepts", type=data.mini_concepts_arg, default=",".join(CONCEPTS),
                   help="comma-separated mini-world concepts")
    p.add_argument("--model", default=None, help="base model (default: the mini world)")
    p.add_argument("--frames", type=int, default=FRAMES)
    p.add_argument("--seed", type=int, default=SEED)
    a = p.parse_args(argv)
    names = a.concepts
    if a.frames < 1:
        sys.exit(f"--frames must be at least 1, not {a.frames}")
    sd = sdlib.load(a.model, "cpu")
    gen = torch.Generator().manual_seed(a.seed)
    print("| concept | attribute | " + " | ".join(f"t={t}" for t in TIMESTEPS) + " | mean |")
    print("|---" * (len(TIMESTEPS) + 3) + "|")
    for name in names:
        frames = data.get_concept(name).frames[:a.frames]
        with torch.no_grad():
            cond, uncond = sdlib.encode(sd, frames), sdlib.encode(sd, [""] * len(frames))
            gaps = []
            for t in TIMESTEPS:
                z = torch.randn((len(frames), *sd.latent_shape), generator=gen).to(sd.device, sd.dtype)
                e_c, e_0 = sdlib.eps(sd, sd.unet, z, t, cond), sdlib.eps(sd, sd.unet, z, t, uncond)
                gaps.append(((e_c - e_0).flatten(1).norm(dim=1) / e_0.flatten(1).norm(dim=1)).mean().item())
        print(f"| {name} | {data.VALUE_ATTRIBUTE[name]} | " + " | ".join(f"{g:.3f}" for g in gaps) +
              f" | {sum(gaps) / len(gaps):.3f} |", flush=True)


if __name__ == "__main__":
    main()
