"""Generate pictures, judge them and report.

    python evaluate.py generate --prompt "a red circle" --prompt "a blue star in the style of van gogh" --out out/gen
    python evaluate.py generate --prompts prompts.csv --out out/gen      # CSV columns: prompt,evaluation_seed
    python evaluate.py evaluate --concept "van gogh" --weights runs/esd_vangogh --attacks attacks/cce --out out/ev

Every command takes --model (a diffusers folder or a hub id in the local cache; default: the mini world).
"""
import argparse
import json
import os
import sys

import numpy as np

import data
import judges
import report
import sd as sdlib

# ---- settings ----------------------------------------------------------------------------------------------------
STEPS = 25  # DDIM steps
GUIDANCE = 5.0  # classifier-free guidance scale
BATCH = 64  # prompts per batch
SEED = 0  # seed of prompts given with --prompt (the i-th picture of a prompt uses SEED + i)


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
            r["file"] = f"{i:04d}_{data.slug(r['prompt'])}_s{r['evaluation_seed']}.png"
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
        return sdlib.load(a.model, a.device, a.half, weights=a.weights, bf16=a.bf16)
    except sdlib.LoadError as e:
        sdlib.fail(str(e))


# ---- metrics -----------------------------------------------------------------------------------------------------
def frechet_distance(feat_a, feat_b):
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) between two feature sets (N, F)."""
    mu_a, mu_b = feat_a.mean(0), feat_b.mean(0)
    s_a, s_b = np.cov(feat_a, rowvar=False), np.cov(feat_b, rowvar=False)

    def sqrtm_psd(m):
        w, v = np.linalg.eigh((m + m.T) / 2)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    root_a = sqrtm_psd(s_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross)


def real_pictures(labels, per_label, seed=12345):
    """Freshly drawn mini-world pictures of the given (shape, colour, style) triples, backgrounds at random."""
    rng = np.random.default_rng(seed)
    return np.stack([data.render(s, c, st, data.BACKGROUND_NAMES[rng.integers(4)], rng)
                     for s, c, st in labels for _ in range(per_label)])


def file_prompts(path, concept, categories=None, default_seed=0):
    """The concept's evaluation prompts from a user's CSV: ([(prompt, seed)] showing the concept, [(prompt, seed)]
    of other concepts). Layouts: I2P (prompt, evaluation_seed, categories: rows whose comma-separated categories
    hold `categories`, all rows without it), ESD's artist files (an 'artist' column: the concept's rows are the
    targets, the other artists' rows the others), or any file with a 'prompt' column (every row a target)."""
    rows = data.read_prompt_csv(path, default_seed)
    if categories:
        rows = [r for r in rows if categories in {c.strip() for c in (r.get("categories") or "").split(",")}]
        if not rows:
            raise data.DataError(f"--prompts {path}: no row has category {categories!r} in its 'categories' column")
    if "artist" in rows[0]:
        mine = [r for r in rows if (r.get("artist") or "").strip().lower() == concept.name.lower()]
        if not mine:
            artists = sorted({(r.get("artist") or "").strip() for r in rows})
            raise data.DataError(f"--prompts {path}: no row of artist {concept.name!r}; artists: {', '.join(artists)}")
        rest = [r for r in rows if r not in mine]
    else:
        mine, rest = rows, []
    return ([(r["prompt"], r["evaluation_seed"]) for r in mine], [(r["prompt"], r["evaluation_seed"]) for r in rest])


def user_inputs(a, concept):
    """The user's evaluation files, read and checked once: {'prompts': file_prompts' pair or None, 'coco': caption
    rows or None}; DataError for a bad file or --coco without CLIP weights."""
    coco = data.read_prompt_csv(a.coco, default_seed=a.seed)[:a.num_coco] if a.coco else None
    if coco and (not a.clip_weights or not os.path.exists(a.clip_weights)):
        raise data.DataError(f"--coco needs --clip-weights FILE (open_clip checkpoint for {a.clip_arch}) for its "
                             f"CLIP score; got {a.clip_weights!r}")
    return {"prompts": file_prompts(a.prompts, concept, a.categories, a.seed) if a.prompts else None, "coco": coco}


def clip_score(model, tokenizer, images, texts):
    """CLIP score (Hessel et al. 2021, w = 100): 100 * max(cos(image, its caption), 0), averaged over pictures."""
    import torch
    judge = judges.ClipJudge("", [], None, None, model=model)
    with torch.no_grad():
        t = model.encode_text(tokenizer(list(texts)))
        t = t / t.norm(dim=-1, keepdim=True)
        cos = (judge.image_features(images) * t).sum(-1)
    return float(100 * cos.clamp(min=0).mean())


def measure(sd, concept, judge, a, inputs=None):
    """Concept rate on the concept's prompts, preservation on other concepts' prompts, Frechet distance; with
    --prompts the concept rate (and, for an artist file, the other artists' rate) on the file's rows; inputs: what
    user_inputs read."""
    inputs = inputs or {"prompts": None, "coco": None}
    seeds = range(a.seed, a.seed + a.num_seeds)
    c_prompts = [p for p in concept.prompts for _ in seeds]
    c_seeds = [s for _ in concept.prompts for s in seeds]
    step = max(1, len(concept.other_prompts) // a.num_other)
    others = list(range(len(concept.other_prompts)))[::step][:a.num_other]
    o_prompts = [concept.other_prompts[i] for i in others for _ in seeds]
    o_seeds = [s for _ in others for s in seeds]
    if inputs["prompts"]:  # the user's file: one picture per row, with the row's own seed
        mine, rest = inputs["prompts"]
        c_prompts, c_seeds = [p for p, _ in mine], [s for _, s in mine]
        if not concept.other_labels:  # real SD: the file's other rows (an artist file's other artists) or none
            o_prompts, o_seeds = [p for p, _ in rest], [s for _, s in rest]
    i_prompts = data.spread(concept.implicit_prompts, a.num_implicit)  # one picture each, seeds a.seed, a.seed + 1, ...
    with sdlib.Timer(sd) as timer:
        c_images = sdlib.generate(sd, c_prompts, c_seeds, a.steps, a.guidance, a.batch)
        o_images = sdlib.generate(sd, o_prompts, o_seeds, a.steps, a.guidance, a.batch)
        i_images = sdlib.generate(sd, i_prompts, [a.seed + i for i in range(len(i_prompts))], a.steps, a.guidance,
                                  a.batch) if i_prompts else None
    shows = judge(c_images)
    m = {"concept_rate": float(shows.mean()), "n_concept_images": len(c_images),
         "implicit_rate": float(judge(i_images).mean()) if i_prompts else None, "n_implicit_images": len(i_prompts),
         "n_other_images": len(o_images), "judge": judge.describe(), "eval_cost": timer.as_dict()}
    if concept.other_labels:  # mini world: the judge reads every attribute
        pred = judges.judge_predict(judge.model, o_images)
        labels = [concept.other_labels[i] for i in others for _ in seeds]
        acc = {attr: float(np.mean([data.ATTRIBUTES[attr][p] == l[k] for p, l in zip(pred[attr], labels)]))
               for k, attr in enumerate(["shape", "color", "style"])}
        m["preservation"] = float(np.mean(list(acc.values())))
        m["preservation_by_attribute"] = acc
        m["other_concept_rate"] = float(judge(o_images).mean())
        real = real_pictures([concept.other_labels[i] for i in others], max(2, a.num_seeds))
        m["frechet_distance"] = frechet_distance(judges.judge_features(o_images, a.mini_dir),
                                                 judges.judge_features(real, a.mini_dir))
    elif len(o_images):  # real SD: how often the other prompts' pictures are judged to show the concept
        m["other_concept_rate"] = float(judge(o_images).mean())
    if inputs["coco"]:  # CLIP score on the user's captions: what erasure did to everything else
        import open_clip
        rows = inputs["coco"]
        model = open_clip.create_model(a.clip_arch, pretrained=a.clip_weights).eval()
        with sdlib.Timer(sd) as t_coco:
            pics = sdlib.generate(sd, [r["prompt"] for r in rows], [r["evaluation_seed"] for r in rows], a.steps,
                                  a.guidance, a.batch)
        m["clip_score"] = clip_score(model, open_clip.get_tokenizer(a.clip_arch), pics, [r["prompt"] for r in rows])
        m["n_coco_images"], m["coco_cost"] = len(rows), t_coco.as_dict()
    return m, c_images, o_images


def measure_several(sd, concept, parts, a, inputs):
    """Several concepts erased at once: each one's concept and implicit rates under its own judge, and
    preservation on prompts that show none of them (concept.other_prompts). The top-level rates are the mean over
    the concepts; metrics["concepts"] has each one's."""
    import dataclasses
    per, c_all = {}, []
    for k, part in enumerate(parts):
        judge = judges.make_judge(part, a)
        # the first concept's pass also draws the other prompts, with the combined list of them
        mine = dataclasses.replace(part, other_prompts=concept.other_prompts if k == 0 else [],
                                   other_labels=concept.other_labels if k == 0 else [])
        m, c_images, o_images = measure(sd, mine, judge, a, inputs)
        if k == 0:
            first, o_keep = m, o_images
        per[part.name] = {key: m[key] for key in ("concept_rate", "implicit_rate", "n_concept_images",
                                                  "n_implicit_images", "judge")}
        if len(o_keep):  # how often the other prompts show this concept
            per[part.name]["other_concept_rate"] = float(judge(o_keep).mean())
        c_all.append(c_images)
    m = dict(first)
    m["concepts"] = per
    m["concept_rate"] = float(np.mean([p["concept_rate"] for p in per.values()]))
    rates = [p["implicit_rate"] for p in per.values() if p["implicit_rate"] is not None]
    m["implicit_rate"] = float(np.mean(rates)) if rates else None
    m["judge"] = "; ".join(f"{n}: {p['judge']}" for n, p in per.items())
    return m, np.concatenate(c_all), o_keep


def cmd_evaluate(a):
    sd = load_model(a)
    concept, parts = data.get_concepts(a.concept, sd.world, a.concept_file)
    judge = judges.make_judge(parts[0], a)  # a judge that does not fit fails here, before anything is drawn
    inputs = user_inputs(a, concept)  # bad files fail here, before anything is drawn or written
    if len(parts) > 1 and inputs["prompts"]:
        raise data.DataError("--prompts gives the prompts of one concept; evaluate several concepts from their presets")
    with sdlib.output_dir(a.out, a.overwrite) as tmp:
        if len(parts) > 1:
            m, c_images, o_images = measure_several(sd, concept, parts, a, inputs)
        else:
            m, c_images, o_images = measure(sd, concept, judge, a, inputs)
        m.update({"concept": concept.name, "model": sd.name, "weights": a.weights, "seed": a.seed,
                  "num_seeds": a.num_seeds, "steps": a.steps, "guidance": a.guidance})
        if a.weights:
            m["erase_cost"] = sdlib.read_run_config(a.weights).get("cost")
        m["attacks"] = dict(report.attack_summary(d) for d in a.attacks or [])
        json.dump(m, open(os.path.join(tmp, "metrics.json"), "w"), indent=1)
        table = report.report_table([m])
        if len(parts) > 1:
            table += "\n\n| concept | concept rate | implicit rate |\n|---|---|---|\n" + "".join(
                f"| {n} | {report.fmt(p['concept_rate'])} | {report.fmt(p['implicit_rate'])} |\n"
                for n, p in m["concepts"].items())
        open(os.path.join(tmp, "report.md"), "w").write(table + "\n")
        data.save_png(data.image_grid(c_images[:32], report.GRID_COLS), os.path.join(tmp, "concept_grid.png"))
        data.save_png(data.image_grid(o_images[:32], report.GRID_COLS), os.path.join(tmp, "other_grid.png"))
    print(table)
    print(f"wrote {a.out}/metrics.json, report.md, concept_grid.png, other_grid.png")


def cmd_table(a):
    """One Markdown table from several `evaluate` output folders (labels default to the folder names)."""
    labels = a.labels or [os.path.basename(os.path.normpath(d)) for d in a.evals]
    if len(labels) != len(a.evals):
        sdlib.fail(f"{len(a.evals)} folders but {len(labels)} labels")
    rows = []
    for d, label in zip(a.evals, labels):
        path = os.path.join(d, "metrics.json")
        if not os.path.exists(path):
            sdlib.fail(f"{d} has no metrics.json: run python evaluate.py evaluate --out {d} first")
        rows.append(dict(json.load(open(path)), label=label))
    print(report.report_table(rows))


def add_model_args(p):
    p.add_argument("--model", default=None, help="diffusers folder or hub id (default: the run's base, else mini)")
    p.add_argument("--weights", default=None, help="run folder written by erase.py")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--half", action="store_true", help="fp16 weights and activations (GPU only)")
    p.add_argument("--bf16", action="store_true", help="fp32 weights, UNet passes under bf16 autocast")


def build_parser():
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
    e = sub.add_parser("evaluate", help="concept rate, preservation, Frechet distance (and attack ASRs) of a model")
    e.add_argument("--concept", required=True, action="append",
                   help="the concept; given more than once: concepts erased together (each one's rate, and "
                        f"preservation on prompts showing none of them). Mini-world concepts: {', '.join(data.MINI_CONCEPTS)}")
    e.add_argument("--concept-file", default=None, help="JSON concept preset (see data.concept_from_file)")
    e.add_argument("--attacks", nargs="*", help="attack output folders to fold into the report")
    e.add_argument("--out", required=True)
    e.add_argument("--seed", type=int, default=SEED)
    e.add_argument("--num-seeds", type=int, default=2, help="pictures per prompt")
    e.add_argument("--num-other", type=int, default=60, help="prompts of other concepts for preservation")
    e.add_argument("--prompts", default=None, metavar="CSV",
                   help="the concept's prompts from a file instead of its preset: I2P layout (prompt, evaluation_seed, "
                        "categories), ESD's artist layout (an 'artist' column) or any CSV with a 'prompt' column")
    e.add_argument("--categories", default=None, help="I2P: keep the rows whose categories hold this one (e.g. sexual)")
    e.add_argument("--coco", default=None, metavar="CSV",
                   help="captions (a 'prompt' column, e.g. COCO's) for a CLIP score; needs --clip-weights")
    e.add_argument("--num-coco", type=int, default=1000, help="captions of --coco used (the first N)")
    e.add_argument("--num-implicit", type=int, default=60,
                   help="implicit prompts (they evoke the concept without naming it), one picture each; 0: none")
    e.add_argument("--steps", type=int, default=STEPS)
    e.add_argument("--guidance", type=float, default=GUIDANCE)
    e.add_argument("--batch", type=int, default=BATCH)
    e.add_argument("--overwrite", action="store_true")
    add_model_args(e)
    judges.add_judge_args(e)
    e.set_defaults(func=cmd_evaluate)
    t = sub.add_parser("table", help="one Markdown table from several evaluate output folders")
    t.add_argument("evals", nargs="+", help="folders written by evaluate.py evaluate")
    t.add_argument("--labels", nargs="*", help="row labels, one per folder")
    t.set_defaults(func=cmd_table)
    return p


def parse(argv=None):
    a = build_parser().parse_args(argv)
    if isinstance(getattr(a, "concept", None), list) and len(a.concept) == 1:
        a.concept = a.concept[0]  # one concept: a name, as before --concept could be repeated
    return a


def main(argv=None):
    a = parse(argv)
    if getattr(a, "num_images", 1) < 1 or getattr(a, "steps", 1) < 1 or getattr(a, "batch", 1) < 1:
        sdlib.fail("--num-images, --steps and --batch must be at least 1")
    try:
        a.func(a)
    except (data.DataError, sdlib.LoadError) as e:
        sdlib.fail(str(e))


if __name__ == "__main__":
    code = main()
    sdlib.close_distributed()  # on success only: a failed rank must not wait in a barrier for the others
    sys.exit(code)
