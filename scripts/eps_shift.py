"""What an erasure did to a style's conditional shift, measured in noise-prediction space.

    python erase.py --method esd --train-method esd-x --concept "van gogh" --out runs/esdx
    python scripts/eps_shift.py --weights runs/esdx

The shift of a conditioning is eps(x, cond) - eps(x, reference): the bare name against "" (what ESD trains on) and
the name inside the concept's prompts against the same prompts without it. For the base and the erased model it
prints each shift's energy and the cosine between the erased and the base shift, at a few timesteps on seeded noise
latents. ESD's target is the base shift reversed (cosine -1 at eta = 1); a shift that shrinks but keeps its sign has
moved toward the unconditional without passing it. Mini world styles only (prompts 'in the style of X').
"""
import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
import data  # noqa: E402
import sd as sdlib  # noqa: E402

TIMESTEPS = [200, 500, 800]
PROMPTS = 12  # the concept's first prompts, one noise latent each


def shifts(sd, unet, z, t, concept, prompts):
    e = lambda texts: sdlib.eps(sd, unet, z, t, sdlib.encode(sd, texts))
    bare = e([concept.words] * len(z)) - e([""] * len(z))
    caption = e(prompts) - e([p.replace(f" in the style of {concept.words}", "") for p in prompts])
    return {"bare name": bare, "name in caption": caption}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="an erase.py run folder")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    base = sdlib.load()
    erased = sdlib.load(weights=a.weights)
    concept = data.get_concept(sdlib.read_run_config(a.weights)["concept"], base.world)
    if concept.attribute != "style":
        sys.exit(f"{concept.name!r} is not a style: this probe compares 'in the style of' prompts")
    prompts = concept.prompts[:PROMPTS]
    z = torch.randn((len(prompts), *base.latent_shape), generator=torch.Generator().manual_seed(a.seed))
    cos = lambda u, v: torch.nn.functional.cosine_similarity(u.flatten(1), v.flatten(1)).mean().item()
    print("| t | shift | base energy | erased energy | cosine erased vs base |")
    print("|---|---|---|---|---|")
    with torch.no_grad():
        for t in TIMESTEPS:
            tt = torch.full((len(z),), t)
            b = shifts(base, base.unet, z, tt, concept, prompts)
            e = shifts(erased, erased.unet, z, tt, concept, prompts)
            for k in b:
                print(f"| {t} | {k} | {b[k].pow(2).mean():.5f} | {e[k].pow(2).mean():.5f} | {cos(e[k], b[k]):+.2f} |")


if __name__ == "__main__":
    main()
