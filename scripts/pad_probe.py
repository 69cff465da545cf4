"""Which positions of the text encoder's output carry a concept to the UNet? A mini-world diagnostic.

    python scripts/pad_probe.py                                   # the committed mini model
    python scripts/pad_probe.py --model A/pipeline --judge A      # another mini pipeline and its judge
    python scripts/pad_probe.py --weights runs/esd_purple --concepts purple   # an erased model: which route is left

An intervention in the text encoder's output, as in "Padding Tone" (Toker et al., 2025): encode a prompt, replace
some positions by the "clean" positions of the empty prompt (what the UNet sees where a prompt says nothing), and
draw. Four variants of each prompt:
  full             the prompt as encoded;
  words + EOS      every position after the first EOS is clean (the padding says nothing);
  words            the first EOS and everything after it are clean;
  EOS + pads       the words are clean, the first EOS and the padding are the prompt's.
On Stable Diffusion (frozen CLIP) the paper finds that the UNet ignores the padding: "words + EOS" draws what
"full" draws and "EOS + pads" draws little. If the mini UNet reads a concept from the EOS and padding, which sum up
the whole sentence, then an implicit prompt and a prompt naming the concept reach the UNet through the same
positions, and an edit of the name's padding (UCE, ESD-x on the bare name) closes both. Prints measured numbers.
"""
import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
import data  # noqa: E402

CONCEPTS = ["van gogh", "triangle", "purple"]  # one of each kind
PROMPTS = 16  # prompts per concept and prompt set (explicit, implicit); one picture each
STEPS, GUIDANCE = 10, 5.0  # DDIM steps and guidance of every picture
VARIANTS = ("full", "words + EOS", "words", "EOS + pads")


def mixed(cond, clean, eos, variant):
    """cond (B, 77, D) with positions swapped for the clean ones (1, 77, D) per variant; eos (B,) first EOS index."""
    pos = torch.arange(cond.shape[1])[None, :]
    keep = {"full": torch.ones_like(pos, dtype=torch.bool).expand(len(cond), -1),
            "words + EOS": pos <= eos[:, None],
            "words": pos < eos[:, None],
            "EOS + pads": (pos == 0) | (pos >= eos[:, None])}[variant]
    return torch.where(keep[..., None], cond, clean.expand_as(cond))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="mini pipeline folder (default: the committed mini model)")
    p.add_argument("--weights", default=None, metavar="RUN",
                   help="an erase.py run folder applied to the model: which positions still carry the concept")
    p.add_argument("--judge", default=None, help="folder with judge.safetensors (default: mini/)")
    p.add_argument("--concepts", default=",".join(CONCEPTS), help="comma-separated mini concepts")
    p.add_argument("--prompts", type=int, default=PROMPTS)
    a = p.parse_args()
    import judges
    import sd as sdlib
    names = [n.strip() for n in a.concepts.split(",") if n.strip()]
    unknown = [n for n in names if n not in data.MINI_CONCEPTS]
    if unknown or not names:
        sys.exit(f"unknown or no concepts {unknown}; choose from: {', '.join(data.MINI_CONCEPTS)}")
    if a.prompts < 1:
        sys.exit("--prompts must be at least 1")
    try:
        sd = sdlib.load(a.model, weights=a.weights)
        judge = judges.load_judge(a.judge or judges.MINI_DIR)
    except (sdlib.LoadError, FileNotFoundError, OSError) as e:
        sys.exit(f"pad_probe: {e}")
    eos_id = sd.tokenizer.eos_token_id
    with torch.no_grad():
        clean = sdlib.encode(sd, [""])
    model = (a.model or "mini/pipeline") + (f" + {a.weights}" if a.weights else "")
    print(f"model {model}; {a.prompts} prompts per set, one picture each, DDIM {STEPS}, guidance {GUIDANCE}\n")
    print("| concept | prompts | " + " | ".join(VARIANTS) + " |")
    print("|---|---|" + "---|" * len(VARIANTS))
    for name in names:
        c = data.get_concept(name)
        attr, index = data.VALUE_ATTRIBUTE[name], data.ATTRIBUTES[data.VALUE_ATTRIBUTE[name]].index(name)
        for label, prompts in (("explicit", c.prompts), ("implicit", c.implicit_prompts)):
            prompts = data.spread(prompts, a.prompts)
            ids = sdlib.tokenize(sd, prompts)
            eos = (ids == eos_id).int().argmax(1).cpu()
            seeds = list(range(len(prompts)))
            rates = []
            for v in sdlib.tqdm(VARIANTS, desc=f"{name}, {label}", leave=False):
                def cond_of(rows, v=v):
                    cond = sdlib.encode(sd, [prompts[r] for r in rows])
                    return mixed(cond.cpu(), clean.cpu(), eos[rows], v).to(cond.device)
                images = sdlib.sample(sd, cond_of, seeds, STEPS, GUIDANCE, progress=False)
                rates.append(float(np.mean(judges.judge_predict(judge, images)[attr] == index)))
            print(f"| {name} | {label} | " + " | ".join(f"{r:.2f}" for r in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
