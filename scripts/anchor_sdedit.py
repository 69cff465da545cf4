"""Does an anchor take the concept out of a concept picture? The original model's pictures of the concept's prompts
are noised to DDIM step k of STEPS (timestep t) and drawn the rest of the way under each anchor prompt (SDEdit,
classifier-free guidance GUIDANCE): the share the mini judge still calls the concept, for each k. A circumventing
objective that trains e'(x_t | c) toward e(x_t | anchor) on such x_t (DM2's, with anchor c0 = 'a photo') only
erases at the timesteps where this share is low. '<guide>' draws each picture under its own prompt without the
concept ("a red circle in the style of van gogh" -> "a red circle"). Also what each anchor draws from pure noise.

    python scripts/anchor_sdedit.py --concept "van gogh" --anchors "a photo" "a" --out R.md

Mini world only (the judge is the mini judge).
"""
import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

import attack  # noqa: E402
import data  # noqa: E402
import erase  # noqa: E402
import mini  # noqa: E402
import sd as sdlib  # noqa: E402

STEPS, GUIDANCE = 25, 5.0  # the evaluation's sampler (evaluate.py's defaults)
START_STEPS = (2, 5, 8, 12, 16, 20)  # k: the DDIM step of STEPS the redraw starts at
PICTURES = 24  # concept pictures (seeds erase.DM2_POOL_SEED + i: DM2's pool)
NOISE_PICTURES = 40  # pictures of each anchor from pure noise
GUIDE = "<guide>"


def redraw(sd, z0, cond, k, seed):
    """z0 noised to DDIM step k (its own fixed noise), then DDIM steps k..STEPS-1 under cond -> pictures."""
    t = int(sdlib.ddim_timesteps(sd, STEPS)[k])
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed)).to(z0)
    with torch.no_grad():
        z, _ = sdlib.ddim(sd, sd.unet, sdlib.add_noise(sd, z0, noise, t), cond, sdlib.encode(sd, [""] * len(z0)),
                          GUIDANCE, STEPS, start_at=k)
    return sdlib.decode(sd, z), t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concept", required=True)
    p.add_argument("--anchors", nargs="+", default=[erase.DM2_ANCHOR], help=f"prompts; {GUIDE!r}: each picture's guide")
    p.add_argument("--pictures", type=int, default=PICTURES)
    p.add_argument("--model", default=None, help="the base model (default: the mini world)")
    p.add_argument("--out", required=True, help="report (.md)")
    a = p.parse_args(argv)
    if a.pictures < 1:
        sdlib.fail("--pictures must be at least 1")
    sd = sdlib.load(a.model)
    if data.world_of(sd.image_size) != "mini":
        sdlib.fail("anchor_sdedit.py judges with the mini judge: mini-world models only")
    try:
        concept = data.get_concept(a.concept, "mini")
    except data.DataError as e:
        sdlib.fail(str(e))
    judge = mini.load_judge()
    want = data.ATTRIBUTES[concept.attribute].index(concept.value)

    def share(x):
        return float((mini.judge_predict(judge, x)[concept.attribute] == want).mean())
    idx = [i % len(concept.prompts) for i in range(a.pictures)]
    pictures = sdlib.generate(sd, [concept.prompts[i] for i in idx],
                              [erase.DM2_POOL_SEED + i for i in range(a.pictures)], STEPS, GUIDANCE, progress=False)
    z0 = attack.image_latents(sd, pictures)
    lines = [f"# Redrawing pictures of {concept.name!r} under anchors", "",
             f"Regenerate: `python scripts/anchor_sdedit.py --concept {concept.name!r} --anchors "
             + " ".join(repr(x) for x in a.anchors) + f" --pictures {a.pictures} --out {a.out}`", "",
             f"{a.pictures} pictures of the concept's prompts from the original model (the judge calls "
             f"{share(pictures):.2f} of them {concept.value!r}), noised to timestep t (DDIM step k of {STEPS}) and "
             f"drawn the rest of the way under each anchor (guidance {GUIDANCE}); the share the mini judge's "
             f"{concept.attribute} head still calls {concept.value!r}. {GUIDE}: each picture's own prompt without the "
             "concept.", ""]
    header = None
    for anchor in a.anchors:
        cond = (sdlib.encode(sd, [concept.guides[i] for i in idx]) if anchor == GUIDE
                else sdlib.encode(sd, [anchor] * a.pictures))
        row = [redraw(sd, z0, cond, k, seed=k) for k in START_STEPS]
        if header is None:
            header = "| anchor | " + " | ".join(f"t = {t}" for _, t in row) + " |"
            lines += [header, "|---|" + "---|" * len(row)]
        lines.append(f"| {anchor} | " + " | ".join(f"{share(x):.2f}" for x, _ in row) + " |")
        print(lines[-1], flush=True)
    lines += ["", f"What each anchor draws from pure noise ({NOISE_PICTURES} seeds), by the judge's heads:", "",
              "| anchor | styles | shapes |", "|---|---|---|"]
    for anchor in (x for x in a.anchors if x != GUIDE):
        pr = mini.judge_predict(judge, sdlib.generate(sd, [anchor] * NOISE_PICTURES, list(range(NOISE_PICTURES)),
                                                      STEPS, GUIDANCE, progress=False))
        counts = [", ".join(f"{n} {c}" for n, c in zip(names, np.bincount(pr[head], minlength=len(names))) if c)
                  for head, names in (("style", data.STYLES), ("shape", data.SHAPES))]
        lines.append(f"| {anchor} | {counts[0]} | {counts[1]} |")
    print("\n".join(lines[-len(a.anchors) - 1:]))
    data.save_text("\n".join(lines) + "\n", a.out)
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
