"""What do a DM2 run's mined embeddings draw? For each embedding the run kept (embeddings.safetensors, in mining
order), PICTURES pictures on the original model and on the erased one, judged by the mini judge: the share the
concept's head calls the concept, and what the style and shape heads say. Circumventing worked for an embedding
when its share falls from the original model to the erased one.

    python scripts/dm2_mined.py runs/dm2_vangogh --out results/.../dm2_mined.md

Mini world only (the judge is the mini judge).
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

import data  # noqa: E402
import mini  # noqa: E402
import sd as sdlib  # noqa: E402

PICTURES = 8  # pictures per embedding and model (seeds 0..PICTURES-1)


def shares(sd, embeddings, judge, concept, n, label):
    """Per embedding: (share showing the concept, style counts, shape counts) over n pictures."""
    names = [f"<dm{i}>" for i in range(next(iter(embeddings.values())).shape[0])]
    ids = sdlib.add_tokens(sd, names)
    from tqdm.auto import tqdm
    rows = []
    for vecs in tqdm(list(embeddings.values()), desc=f"{label}: draw and judge"):
        x = sdlib.generate(sd, [" ".join(names)] * n, list(range(n)), inject=dict(zip(ids, vecs)), progress=False)
        p = mini.judge_predict(judge, x)
        hit = float((p[concept.attribute] == data.ATTRIBUTES[concept.attribute].index(concept.value)).mean())
        rows.append((hit, np.bincount(p["style"], minlength=len(data.STYLES)),
                     np.bincount(p["shape"], minlength=len(data.SHAPES))))
    return rows


def load_run(run, pictures, script):
    """(config, mined embeddings, the original model, the concept, the mini judge) of a mini-world DM2 run folder;
    one line and exit for a bad --pictures, a run without mined embeddings or one outside the mini world."""
    import erase
    if pictures < 1:
        sdlib.fail("--pictures must be at least 1")
    cfg, emb = erase.dm2_mined_of(run)
    if not emb:
        sdlib.fail(f"{run}/embeddings.safetensors holds no mined embeddings")
    original = sdlib.load(sdlib.base_model_of(cfg))
    if data.world_of(original.image_size) != "mini":
        sdlib.fail(f"{script} judges with the mini judge: mini-world runs only")
    return cfg, emb, original, data.get_concept(cfg["concept"], "mini"), mini.load_judge()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a DM2 run folder written by erase.py --method dm2")
    p.add_argument("--pictures", type=int, default=PICTURES)
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    a = p.parse_args()
    cfg, emb, original, concept, judge = load_run(a.run, a.pictures, "dm2_mined.py")
    before = shares(original, emb, judge, concept, a.pictures, "original model")
    after = shares(sdlib.load(weights=a.run), emb, judge, concept, a.pictures, "erased model")
    scores = cfg.get("dm2_verify_scores", [])
    after_scores = cfg.get("dm2_verify_scores_after", [])
    lines = [f"# What DM2's mined embeddings draw: {cfg['concept']!r}, seed {cfg['seed']}", "",
             f"`python scripts/dm2_mined.py {a.run} --pictures {a.pictures}`: {a.pictures} pictures per embedding "
             f"and model, judged by the mini judge ({concept.attribute} head for {concept.value!r}). Verify score: "
             f"s(c) when mined, and of the same embedding after that loop's circumventing.", "",
             "| embedding | verify s(c) (after) | concept share, original | concept share, erased | "
             "styles on the erased model | shapes on the erased model |", "|---|---|---|---|---|---|"]
    for i, (k, b, f) in enumerate(zip(emb, before, after)):
        s = f"{scores[i]:.2f} ({after_scores[i]:.2f})" if i < min(len(scores), len(after_scores)) else "-"
        styles = ", ".join(f"{n} {c}" for n, c in zip(data.STYLES, f[1]) if c)
        shapes = ", ".join(f"{n} {c}" for n, c in zip(data.SHAPES, f[2]) if c)
        lines.append(f"| {k} | {s} | {b[0]:.2f} | {f[0]:.2f} | {styles} | {shapes} |")
    kept = sum(f[0] >= 0.5 for f in after)
    lines += ["", f"Embeddings still drawing the concept in at least half their pictures on the erased model: "
              f"{kept} of {len(after)}."]
    print("\n".join(lines))
    if a.out:
        data.save_text("\n".join(lines) + "\n", a.out)


if __name__ == "__main__":
    main()
