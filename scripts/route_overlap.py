"""Do a concept's other routes go through its name's directions? A text-encoder diagnostic for the mini world.

    python scripts/route_overlap.py                                  # the committed mini model
    python scripts/route_overlap.py --model A/pipeline --model B/pipeline
    python scripts/route_overlap.py --text-ckpt work/mini/text_ckpt.pt  # mini.py train --text-encoder frozen's stage

For each concept: the shift its name makes, encode(name) - encode(""), spans a few directions of the text encoder's
output (rank: 99% of its energy); the shift an implicit prompt's evoking clause makes (the prompt against the prompt
without that clause) puts some share of its energy in those directions. A share near 1 means that every route to the
concept runs through the name's few directions, so that an edit of those (UCE on the name) closes every route and no
attack can find another; a share near chance (rank / width) means the routes are the encoder's own. Prints measured
numbers only.
"""
import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
import data  # noqa: E402

CONCEPTS = ["van gogh", "stripes", "triangle", "star", "purple", "red"]  # two of each kind
IMPLICIT = 60  # implicit prompts per concept
ENERGY = 0.99  # the name's subspace keeps this share of its shift's energy


def encoder_of(model):
    from transformers import CLIPTextModel, CLIPTokenizer
    return (CLIPTokenizer.from_pretrained(model, subfolder="tokenizer"),
            CLIPTextModel.from_pretrained(model, subfolder="text_encoder", dtype=torch.float32).eval())


def encoder_of_ckpt(path):
    """(tokenizer, text encoder) of a checkpoint of mini.py's text stage (the committed model's tokenizer)."""
    import mini
    if not os.path.isfile(path):
        sys.exit(f"{path}: no such checkpoint")
    te = mini.build_text_encoder()
    te.load_state_dict(torch.load(path, weights_only=True)["text"])
    return encoder_of(os.path.join(HERE, "mini", "pipeline"))[0], te.eval()


@torch.no_grad()
def encode(tok, te, prompts):
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return te(ids)[0]


def overlap(tok, te, concept):
    """(rank of the name's shift, share of the implicit clauses' shift energy in its span)."""
    c = data.get_concept(concept)
    shift = (encode(tok, te, [c.words]) - encode(tok, te, [""]))[0]  # (77, D)
    u, s, _ = torch.linalg.svd(shift.T, full_matrices=False)
    k = int(((s ** 2).cumsum(0) / (s ** 2).sum() < ENERGY).sum()) + 1
    proj = u[:, :k] @ u[:, :k].T
    prompts = data.implicit_prompts(concept)[:IMPLICIT]
    clause = encode(tok, te, prompts) - encode(tok, te, [p.split(",")[0] for p in prompts])  # the evoking clause
    return k, ((clause @ proj).pow(2).sum() / clause.pow(2).sum()).item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="pipeline folder (repeatable; default the committed mini model)")
    p.add_argument("--text-ckpt", action="append", default=[],
                   help="a text-encoder checkpoint of mini.py's caption-only stage (repeatable)")
    a = p.parse_args(argv)
    models = a.model or ([] if a.text_ckpt else [os.path.join(HERE, "mini", "pipeline")])
    print("| model | concept | name's shift: rank of width | chance share | implicit clauses' share in it |")
    print("|---|---|---|---|---|")
    for model in models + a.text_ckpt:
        if model in a.text_ckpt:
            tok, te = encoder_of_ckpt(model)
        elif not os.path.isdir(os.path.join(model, "text_encoder")):
            sys.exit(f"{model}: not a pipeline folder (no text_encoder/)")
        else:
            tok, te = encoder_of(model)
        width = te.config.hidden_size
        for concept in CONCEPTS:
            k, share = overlap(tok, te, concept)
            print(f"| {os.path.relpath(model, HERE)} | {concept} | {k} of {width} | {k / width:.2f} | {share:.2f} |")


if __name__ == "__main__":
    main()
