"""How far did erasing move each conditioning's noise prediction toward where it should go?

On the same noised pictures x_t of the concept (the original model's pictures of the concept's prompts, noised to
each of TIMESTEPS), for every run folder given (any method) and for the original model:

- captions: each concept prompt p (\"a red circle in the style of van gogh\") against its guide g, the same scene
  without the concept (\"a red circle\"): progress = <e'(p) - e(p), e(g) - e(p)> / ||e(g) - e(p)||^2, summed over
  the x_t. 0 means erasing did not move the caption's prediction, 1 that it now predicts what the plain scene does.
- mined (DM2 runs): each mined embedding m against DM2's anchor c0 ('a photo'), the target its circumventing
  trains toward: the same ratio with m and c0 in place of p and g.
- others: as many prompts of other concepts, how much their prediction moved: sum ||e'(o) - e(o)||^2 over the sum of
  ||e(g) - e(p)||^2 (the shift the captions needed): 0 means untouched.

e is the original model, e' the erased one, both without guidance. Mini world or real SD alike (no judge).

    python scripts/erase_transfer.py RUN [RUN ...] --out results/.../transfer.md
"""
import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

import data  # noqa: E402
import sd as sdlib  # noqa: E402

TIMESTEPS = [50, 150, 300, 500, 800]  # where x_t sits (of 1000): van gogh is decided late in the mini world
PICTURES = 12  # concept pictures (the first concept prompts, one seed each)
SEED = 40_000  # seeds of the pictures and of the noise


def progress(e_new, e_old, e_goal):
    """<e_new - e_old, e_goal - e_old> / ||e_goal - e_old||^2 over the whole batch (one number)."""
    d = (e_goal - e_old).flatten()
    return float((e_new - e_old).flatten() @ d / (d @ d))


def noised(sd, pictures_latents, timesteps, seed):
    """Each latent at each timestep, (len(timesteps) * N, 4, h, w), and the matching t."""
    acp = sd.scheduler.alphas_cumprod.to(sd.device)
    g = torch.Generator().manual_seed(seed)
    zs, ts = [], []
    for t in timesteps:
        a = acp[t].to(pictures_latents.dtype)
        noise = torch.randn(pictures_latents.shape, generator=g).to(pictures_latents)
        zs.append(a.sqrt() * pictures_latents + (1 - a).sqrt() * noise)
        ts += [t] * len(pictures_latents)
    return torch.cat(zs), torch.tensor(ts, device=sd.device)


@torch.no_grad()
def predictions(sd, unet, z, t, cond):
    """e(z | cond) without guidance; cond (N, 77, D) matched row by row to z, in chunks."""
    out = [sdlib.eps(sd, unet, z[i:i + 64], t[i:i + 64], cond[i:i + 64]) for i in range(0, len(z), 64)]
    return torch.cat(out).float()


def reference(original, concept, timesteps=TIMESTEPS, pictures=PICTURES, seed=SEED):
    """What does not depend on the erased model: the noised pictures and the original model's predictions for the
    captions, their guides and as many other concepts' prompts (spread over the list), computed once for all runs."""
    import attack
    n = min(pictures, len(concept.prompts))
    prompts, guides = concept.prompts[:n], concept.guides[:n]
    x = sdlib.generate(original, prompts, [seed + i for i in range(n)], progress=False)
    z, t = noised(original, attack.image_latents(original, x), timesteps, seed)
    ref = {"original": original, "z": z, "t": t, "n": n, "k": len(timesteps), "prompts": prompts}
    ref["e_p"], ref["e_g"] = (predictions(original, original.unet, z, t, encoded(original, texts, ref))
                              for texts in (prompts, guides))
    if concept.other_prompts:
        step = max(1, len(concept.other_prompts) // n)
        others = [concept.other_prompts[i] for i in range(0, len(concept.other_prompts), step)]
        ref["others"] = (others * n)[:n]
        ref["e_o"] = predictions(original, original.unet, z, t, encoded(original, ref["others"], ref))
    return ref


def encoded(model, texts, ref, inject=None):
    """texts through the model's own text encoder (AdvUnlearn trains it), once per timestep of ref's x_t."""
    return sdlib.encode(model, texts, inject).repeat(ref["k"], 1, 1)


def measure(original, erased, concept, mined=None, anchor=None, ref=None, **reference_kw):
    """{'captions': progress overall, 'captions_by_t': per timestep, 'others': shift ratio, 'mined': [progress
    per embedding]}. ref: reference(original, concept, ...) if already computed (else made here)."""
    ref = ref or reference(original, concept, **reference_kw)
    z, t, n, k = ref["z"], ref["t"], ref["n"], ref["k"]
    e_p, e_g = ref["e_p"], ref["e_g"]

    def moved(texts, inject=None):  # e' of the erased model for texts
        return predictions(erased, erased.unet, z, t, encoded(erased, texts, ref, inject))
    e2_p = moved(ref["prompts"])
    per_t = [progress(e2_p[i * n:(i + 1) * n], e_p[i * n:(i + 1) * n], e_g[i * n:(i + 1) * n]) for i in range(k)]
    res = {"captions": progress(e2_p, e_p, e_g), "captions_by_t": per_t}
    if "others" in ref:
        res["others"] = float(((moved(ref["others"]) - ref["e_o"]) ** 2).sum() / ((e_g - e_p) ** 2).sum())
    if mined:
        names = [f"<dm{i}>" for i in range(mined[0].shape[0])]
        ids = sdlib.add_tokens(original, names)
        if sdlib.add_tokens(erased, names) != ids:
            raise ValueError("the two models' tokenizers gave the mined tokens different ids")
        e_0 = predictions(original, original.unet, z, t, encoded(original, [anchor] * n, ref))
        res["mined"] = []
        for vecs in mined:
            inject = dict(zip(ids, vecs))
            e_m = predictions(original, original.unet, z, t, encoded(original, [" ".join(names)] * n, ref, inject))
            res["mined"].append(progress(moved([" ".join(names)] * n, inject), e_m, e_0))
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders written by erase.py (all of one concept and base model)")
    p.add_argument("--labels", default=None, help="comma-separated names for the runs (default: their folders)")
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    a = p.parse_args()
    labels = a.labels.split(",") if a.labels else [os.path.basename(os.path.normpath(r)) for r in a.runs]
    if len(labels) != len(a.runs):
        sdlib.fail(f"--labels names {len(labels)} runs but {len(a.runs)} were given")
    cfgs = []
    for r in a.runs:
        try:
            cfgs.append(sdlib.read_run_config(r))
        except sdlib.LoadError as e:
            sdlib.fail(str(e))
    if len({(c["concept"], c["base_model"]) for c in cfgs}) != 1:
        sdlib.fail("the runs erase different concepts or start from different base models: "
                   + ", ".join(f"{c['method']} {c['concept']!r} on {c['base_model']}" for c in cfgs))
    original = sdlib.load(sdlib.base_model_of(cfgs[0]))
    concept = data.get_concept(cfgs[0]["concept"], data.world_of(original.image_size))
    import erase
    from tqdm.auto import tqdm
    ref = reference(original, concept)
    rows = []
    for run, cfg, label in tqdm(list(zip(a.runs, cfgs, labels)), desc="runs"):
        mined = list(erase.dm2_mined_of(run)[1].values()) if cfg["method"] == "dm2" else None
        r = measure(original, sdlib.load(weights=run), concept, mined, erase.DM2_ANCHOR, ref)
        rows.append((label, cfg, r))
    ts = ", ".join(f"t={t}" for t in TIMESTEPS)
    lines = [f"# How far erasing moved each conditioning's prediction: {concept.name!r}", "",
             f"`python scripts/erase_transfer.py {' '.join(a.runs)}`" + (f" `--labels {a.labels}`" if a.labels else ""),
             "", f"x_t: the original model's pictures of the first {PICTURES} concept prompts (seeds {SEED}+i), noised "
             f"to {ts}. Progress: <e'(p) - e(p), e(g) - e(p)> / ||e(g) - e(p)||^2 (0: unmoved, 1: predicts the plain "
             "scene g); mined: the same toward DM2's anchor c0 'a photo'; others: sum ||e'(o) - e(o)||^2 over sum "
             "||e(g) - e(p)||^2 on other concepts' prompts. No guidance.", "",
             f"| run | method, seed | captions (all t) | captions at {ts} | others moved | mined embeddings |",
             "|---|---|---|---|---|---|"]
    for label, cfg, r in rows:
        mined = ", ".join(f"{v:.2f}" for v in r.get("mined", [])) or "-"
        lines.append(f"| {label} | {cfg['method']}, {cfg['seed']} | {r['captions']:.2f} | "
                     f"{' / '.join(f'{v:.2f}' for v in r['captions_by_t'])} | {r.get('others', float('nan')):.3f} | "
                     f"{mined} |")
    print("\n".join(lines))
    if a.out:
        data.save_text("\n".join(lines) + "\n", a.out)


if __name__ == "__main__":
    main()
