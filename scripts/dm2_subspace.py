"""How much of an attack's conditioning does a DM2 LoRA cancel? Circumventing trains e'(x_t | c) toward e(x_t | c0)
with c0 = 'a photo', so on a cross-attention projection W (attn2.to_v; also attn2.to_k with --dm2-lora-on
values+cross-keys) the update dW = scaling * B A should cancel W d, d = h(c) - h(c0) the conditioning's departure
from the anchor's text hidden states, position by position (the start token is left out: it is the same for all):

    cancelled(c) = -<dW d, W d> / ||W d||^2,   the mean over the run's cross-attention layers, per projection

1: the projection of c through W + dW is the original's of c0 along W d; 0: untouched. For each DM2 run of a
benchmark work folder: the concept's own prompts, each embedding the run mined (mining order), the CCE and
UnlearnDiff prompts that attacked it (the benchmark's attack cells: every target, and the targets the attack turned
itself), and other concepts' prompts. An attack that erasure cancels less than the mined embeddings went round
the LoRA, not through it. A linear, layer-by-layer view (the attention weights and the UNet are left out); text
encoder only.

    python scripts/dm2_subspace.py work/benchmark/van_gogh_quick_dm2_b4 [WORK ...] --concept "van gogh" --out R.md
"""
import argparse
import csv
import glob
import os
import re
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

import data  # noqa: E402
import erase  # noqa: E402
import sd as sdlib  # noqa: E402

ATTACKS = ("cce", "unlearndiff")
OTHERS = 12  # other concepts' prompts


def hidden(sd, prompts, inject=None):
    with torch.no_grad():
        return sdlib.encode(sd, prompts, inject)[:, 1:]  # (B, 76, D): without the start token


def cancelled(updates, h, h0):
    """Mean over layers of the share of W d that dW cancels, -<dW d, W d> / ||W d||^2, d = h - h0 the conditioning's
    departure from the anchor's hidden states h0 (1, T, D), position by position; h (B, T, D) -> (B,)."""
    d = h - h0
    out = []
    for w, dw in updates:
        wd, dwd = (d @ w.T).flatten(1), (d @ dw.T).flatten(1)
        out.append(-(dwd * wd).sum(1) / (wd * wd).sum(1))
    return torch.stack(out).mean(0)


def attack_prompts(sd, folder, attack):
    """(hidden states of every target's adversarial prompt, which of them succeeded by the attack) of one cell."""
    from safetensors.torch import load_file
    rows = list(csv.DictReader(open(os.path.join(folder, "results.csv"), newline="")))
    emb = load_file(os.path.join(folder, "embeddings.safetensors"))
    won = np.array([r["attack_success"] == "1" and r["pre_attack_success"] == "0" for r in rows])
    if attack == "cce":  # one learned token, named in every adversarial prompt
        ids = sdlib.add_tokens(sd, list(emb))
        return hidden(sd, [r["adversarial_prompt"] for r in rows], dict(zip(ids, emb.values()))), won
    tokens = emb["prefix_token_ids"]  # UnlearnDiff: k vocabulary tokens before each target prompt
    names = [f"<ud{j}>" for j in range(tokens.shape[1])]
    ids = sdlib.add_tokens(sd, names)
    table = sd.text_encoder.get_input_embeddings().weight.detach()
    inject = {tid: table[tokens[:, j]] for j, tid in enumerate(ids)}
    return hidden(sd, [" ".join(names) + " " + r["target_prompt"] for r in rows], inject), won


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", nargs="+", help="benchmark --work folders with runs/dm2_s* and attacks/dm2_s*_<attack>")
    p.add_argument("--concept", required=True)
    p.add_argument("--model", default=None, help="the base model (default: the mini world)")
    p.add_argument("--out", required=True, help="report (.md)")
    a = p.parse_args()
    from safetensors.torch import load_file
    sd = sdlib.load(a.model)
    try:
        concept = data.get_concept(a.concept, data.world_of(sd.image_size))
    except data.DataError as e:
        sdlib.fail(str(e))
    others = concept.other_prompts[::max(1, len(concept.other_prompts) // OTHERS)][:OTHERS]
    h_concept, h_other, h0 = hidden(sd, concept.prompts), hidden(sd, others), hidden(sd, [erase.DM2_ANCHOR])
    lines = [f"# How much of each conditioning DM2's LoRA cancels: {concept.name!r}", "",
             "Regenerate: `python scripts/dm2_subspace.py " + " ".join(a.work) +
             f" --concept {concept.name!r} --out {a.out}`", "",
             "cancelled = -<dW d, W d> / ||W d||^2, d = h(c) - h(c0) (text hidden states without the start token, "
             "c0 = the anchor), the mean over the run's cross-attention projections with a LoRA and over a group's "
             "prompts (see the script). 'won': the targets the attack itself turned (not shown before it).", "",
             "| run | --dm2-lora-on | projection (layers) | concept prompts | mined (each) | cce all / won | unlearndiff all / won "
             "| other prompts |", "|---|---|---|---|---|---|---|---|"]
    runs = sorted(r for w in a.work for r in glob.glob(os.path.join(w, "runs", "dm2_s*"))
                  if os.path.isdir(r) and re.fullmatch(r"dm2_s\d+", os.path.basename(r)))  # not a running one's .tmp
    if not runs:
        sdlib.fail(f"no DM2 run folders (runs/dm2_s*) under {', '.join(a.work)}")
    for run in runs:
        cfg, mined = erase.dm2_mined_of(run)  # in mining order; whole-prompt runs only
        lora = load_file(os.path.join(run, sdlib.RUN_WEIGHTS))
        mined = list(mined.values())
        names = [f"<dm{i}>" for i in range(mined[0].shape[0])]
        ids = sdlib.add_tokens(sd, names)
        groups = {"concept": h_concept, "other": h_other,
                  **{f"mined{k}": hidden(sd, [" ".join(names)], dict(zip(ids, m))) for k, m in enumerate(mined)}}
        won = {}
        for attack in ATTACKS:
            folder = os.path.join(os.path.dirname(os.path.dirname(run)), "attacks", f"{os.path.basename(run)}_{attack}")
            if os.path.isdir(folder):
                groups[attack], won[attack] = attack_prompts(sd, folder, attack)
        for proj in sorted({k.split(".")[-2] for k in lora if ".attn2." in k and k.endswith(".lora_A")}, reverse=True):
            updates = []  # (W, dW) of each cross-attention layer's `proj`
            for key in sorted(k for k in lora if k.endswith(f".attn2.{proj}.lora_A")):
                name = key[len("lora.unet."):-len(".lora_A")]
                dw = cfg["lora"]["scaling"] * lora[key.replace("lora_A", "lora_B")] @ lora[key]
                updates.append((sd.unet.get_submodule(name).weight.detach(), dw))
            r = {g: cancelled(updates, h, h0) for g, h in groups.items()}
            cells = []
            for attack in ATTACKS:
                if attack not in r:
                    cells.append("-")
                    continue
                w = torch.from_numpy(won[attack])
                cells.append(f"{r[attack].mean():.3f} / " + (f"{r[attack][w].mean():.3f}" if w.any() else "-"))
            label = os.path.relpath(run, HERE) if run.startswith(HERE) else run
            each = ", ".join(f"{r[f'mined{k}'].item():.3f}" for k in range(len(mined)))
            lines.append(f"| {label} | {cfg['settings'].get('dm2_lora_on', 'values')} | attn2.{proj} ({len(updates)}) "
                         f"| {r['concept'].mean():.3f} | "
                         f"{each} | "
                         f"{' | '.join(cells)} | {r['other'].mean():.3f} |")
            print(lines[-1], flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    open(a.out, "w").write("\n".join(lines) + "\n")
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
