"""Generate pictures, judge them and report.

    python evaluate.py generate --prompt "a red circle" --prompt "a blue star in the style of van gogh" --out out/gen
    python evaluate.py generate --prompts prompts.csv --out out/gen      # CSV columns: prompt,evaluation_seed

Every command takes --model (a diffusers folder or a hub id in the local cache; default: the mini world).
"""
import argparse
import json
import os
import re
import sys

import numpy as np

import data
import sd as sdlib

# ---- settings ----------------------------------------------------------------------------------------------------
STEPS = 25  # DDIM steps
GUIDANCE = 5.0  # classifier-free guidance scale
BATCH = 64  # prompts per batch
SEED = 0  # seed of prompts given with --prompt (the i-th picture of a prompt uses SEED + i)


def slug(text, n=40):
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:n] or "empty"


def collect_prompts(a):
    """(prompt, seed) rows from --prompt and --prompts, each repeated --num-images times with consecutive seeds."""
    rows = [{"prompt": p.strip(), "evaluation_seed": a.seed} for p in (a.prompt or []) if p.strip()]
    if a.prompts:
        rows += data.read_prompt_csv(a.prompts, default_seed=a.seed)
    if not rows:
        sdlib.fail("no prompts given: pass --prompt TEXT (repeatable) or --prompts FILE.csv with a 'prompt' column")
    return [dict(r, evaluation_seed=r["evaluation_seed"] + k) for r in rows for k in range(a.num_images)]


def cmd_generate(a):
    rows = collect_prompts(a)
    sd = load_model(a)
    with sdlib.output_dir(a.out, a.overwrite) as tmp:
        with sdlib.Timer(sd) as timer:
            images = sdlib.generate(sd, [r["prompt"] for r in rows], [r["evaluation_seed"] for r in rows],
                                    a.steps, a.guidance, a.batch)
        for i, (r, im) in enumerate(zip(rows, images)):
            r["file"] = f"{i:04d}_{slug(r['prompt'])}_s{r['evaluation_seed']}.png"
            data.save_png(im, os.path.join(tmp, r["file"]))
        cols = a.num_images if a.num_images > 1 else min(8, len(images))
        data.save_png(data.image_grid(images, cols), os.path.join(tmp, "grid.png"))
        data.write_prompt_csv(os.path.join(tmp, "prompts.csv"), rows)
        settings = {k: v for k, v in vars(a).items() if k != "func"}
        json.dump({"settings": settings, "cost": timer.as_dict(), "n_images": len(images)},
                  open(os.path.join(tmp, "config.json"), "w"), indent=1)
    print(f"wrote {len(images)} pictures and grid.png to {a.out} ({timer.seconds:.1f}s, "
          f"{timer.unet_evals} UNet evaluations)")


def load_model(a):
    try:
        return sdlib.load(a.model, a.device, a.half)
    except sdlib.LoadError as e:
        sdlib.fail(str(e))


def add_model_args(p):
    p.add_argument("--model", default=sdlib.DEFAULT_MODEL, help="diffusers folder or hub id (default: mini world)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--half", action="store_true", help="fp16 weights and activations (GPU only)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="pictures for prompts, one PNG each plus grid.png and prompts.csv")
    g.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    g.add_argument("--prompts", help="CSV file with a 'prompt' column and optional 'evaluation_seed'")
    g.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    g.add_argument("--num-images", type=int, default=1, help="pictures per prompt (consecutive seeds)")
    g.add_argument("--seed", type=int, default=SEED, help="seed for --prompt prompts and CSV rows without one")
    g.add_argument("--steps", type=int, default=STEPS, help="DDIM steps")
    g.add_argument("--guidance", type=float, default=GUIDANCE, help="classifier-free guidance scale")
    g.add_argument("--batch", type=int, default=BATCH)
    g.add_argument("--overwrite", action="store_true")
    add_model_args(g)
    g.set_defaults(func=cmd_generate)
    a = p.parse_args(argv)
    if getattr(a, "num_images", 1) < 1 or getattr(a, "steps", 1) < 1 or getattr(a, "batch", 1) < 1:
        sdlib.fail("--num-images, --steps and --batch must be at least 1")
    try:
        a.func(a)
    except data.DataError as e:
        sdlib.fail(str(e))


if __name__ == "__main__":
    sys.exit(main())
