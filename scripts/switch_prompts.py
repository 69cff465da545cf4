"""At which denoising steps does a model decide the concept? Each picture is sampled with one prompt for its first
K DDIM steps and another for the rest (same seeds, same guidance as evaluate.py), and the judge gives the concept
rate for every K. Two sweeps: the anchor first and the concept after (how late can the concept still come in?),
and the concept first and the anchor after (how late can it still be taken out?). The anchor of each concept
prompt is the first of its scene anchors (for "van gogh": the same shape and colour without the style).

    python scripts/switch_prompts.py --concept "van gogh" --out results/diagnostics/switch_van_gogh.md
    python scripts/switch_prompts.py --concept "van gogh" --weights work/benchmark/van_gogh/runs/esd-x_s0

Why it matters: an erasure objective only helps at the timesteps where the concept is still being decided. Mini
world only (the judge is the mini judge).
"""
import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

import data  # noqa: E402
import evaluate  # noqa: E402
import sd as sdlib  # noqa: E402

SWITCH_AT = [0, 5, 10, 15, 20, 25]  # K: steps with the first prompt (of evaluate.py's 25)


def sample_switched(sd, first, then, seeds, k, steps, guidance):
    """DDIM with classifier-free guidance, conditioned on `first` for the first k steps and `then` after."""
    ts = sdlib.ddim_timesteps(sd, steps)
    step_size = sd.scheduler.config.num_train_timesteps // steps
    uncond = sdlib.encode(sd, [""] * len(seeds))
    z = sdlib.initial_latents(sd, seeds)
    for i, t in enumerate(ts.tolist()):
        z = sdlib.ddim_step(sd, z, sdlib.eps(sd, sd.unet, z, t, first if i < k else then, uncond, guidance),
                            t, t - step_size)
    return sdlib.decode(sd, z)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concept", required=True, choices=data.MINI_CONCEPTS)
    p.add_argument("--weights", default=None, help="a run folder written by erase.py (default: the original model)")
    p.add_argument("--steps", type=int, default=evaluate.STEPS)
    p.add_argument("--guidance", type=float, default=evaluate.GUIDANCE)
    p.add_argument("--out", default=None, help="write the table here as Markdown (default: print only)")
    a = p.parse_args(argv)
    bad = [k for k in SWITCH_AT if k > a.steps]
    if bad:
        sys.exit(f"error: --steps {a.steps} is below the switch points {bad}")
    try:
        sd = sdlib.load(weights=a.weights)
    except sdlib.LoadError as e:
        sys.exit(f"error: {e}")
    if data.world_of(sd.image_size) != "mini":
        sys.exit("error: mini world only (the judge is the mini judge)")
    concept = data.get_concept(a.concept, "mini")
    judge = evaluate.MiniJudge(concept, os.path.join(HERE, "mini"))
    prompts = concept.prompts
    anchors = [concept.scene_anchors[i][0] for i in range(len(prompts))]
    seeds = list(range(len(prompts)))
    ts = sdlib.ddim_timesteps(sd, a.steps).tolist() + [0]
    with torch.no_grad():
        c_concept, c_anchor = sdlib.encode(sd, prompts), sdlib.encode(sd, anchors)
        rows = []
        for k in SWITCH_AT:
            late = judge(sample_switched(sd, c_anchor, c_concept, seeds, k, a.steps, a.guidance)).mean()
            early = judge(sample_switched(sd, c_concept, c_anchor, seeds, k, a.steps, a.guidance)).mean()
            rows.append(f"| {k} | {ts[k]} | {late:.3f} | {early:.3f} |")
            print(rows[-1], flush=True)
    model = a.weights or "the original mini model"
    text = "\n".join([
        f"Concept rate of {a.concept!r} ({len(prompts)} prompts, seeds 0-{len(prompts) - 1}, {a.steps} DDIM steps, "
        f"guidance {a.guidance}) on {model}, when the prompt changes after K steps. Anchor: e.g. {anchors[0]!r} "
        f"for {prompts[0]!r}.", "",
        f"Command: `python scripts/switch_prompts.py --concept {a.concept!r}"
        + (f" --weights {a.weights}" if a.weights else "") + "`", "",
        "| K (steps before the switch) | timestep at the switch | anchor first, concept after | "
        "concept first, anchor after |", "|---|---|---|---|", *rows, ""])
    print(text)
    if a.out:
        data.save_text(text, a.out)


if __name__ == "__main__":
    main()
