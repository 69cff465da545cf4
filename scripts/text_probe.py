"""What a mini-world text encoder's outputs hold: a linear probe of shape, colour and style from them.

    python scripts/text_probe.py                                        # the committed mini model's encoder
    python scripts/text_probe.py --text-ckpt work/mini/text_ckpt.pt     # mini.py train --text-encoder frozen's stage

Softmax regression on standardised features of N_TRAIN captions (data.captions_for, seeded), scored on N_TEST
held-out ones; the features are the mean of the output over the caption's words and the first EOS output (CLIP's
pooled position). The ceiling is below 1: some captions leave the colour unsaid and implicit words are graded.
Prints measured numbers only.
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
import data  # noqa: E402

N_TRAIN, N_TEST = 4000, 1000
SEED = 5
PROBE_STEPS, PROBE_LR, PROBE_L2 = 300, 0.05, 1e-4  # Adam on the probe's weights; a small L2 keeps it tame


def features(tok, te, captions):
    """{'mean': (N, D) mean over BOS, words and the first EOS; 'eos': (N, D) the first EOS}."""
    ids = tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    real = (torch.cumsum((ids == tok.eos_token_id).long(), 1) <= 1).float()
    eos = (ids == tok.eos_token_id).long().argmax(1)
    with torch.no_grad():
        h = torch.cat([te(ids[i:i + 500])[0].float() for i in range(0, len(ids), 500)])
    return {"mean over the words": (h * real[..., None]).sum(1) / real.sum(1, keepdim=True),
            "first EOS": h[torch.arange(len(h)), eos]}


def probe(x, y, n_train):
    """Held-out accuracy of softmax regression from x (N, D) to classes y (N,)."""
    x = (x - x[:n_train].mean(0)) / (x[:n_train].std(0) + 1e-6)
    k = int(y.max()) + 1
    w = torch.zeros(x.shape[1], k, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.Adam([w, b], PROBE_LR)
    for _ in range(PROBE_STEPS):
        loss = F.cross_entropy(x[:n_train] @ w + b, y[:n_train]) + PROBE_L2 * (w ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(((x[n_train:] @ w + b).argmax(1) == y[n_train:]).float().mean())


def main(argv=None):
    sys.path.insert(0, os.path.join(HERE, "scripts"))
    from route_overlap import encoder_of, encoder_of_ckpt
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="pipeline folder (repeatable; default the committed mini model)")
    p.add_argument("--text-ckpt", action="append", default=[], help="text-stage checkpoint of mini.py (repeatable)")
    p.add_argument("--n-train", type=int, default=N_TRAIN)
    p.add_argument("--n-test", type=int, default=N_TEST)
    a = p.parse_args(argv)
    if a.n_train < 10 or a.n_test < 10:
        sys.exit("--n-train and --n-test must be at least 10")
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    labels = data.sample_labels(a.n_train + a.n_test, rng)
    captions = data.captions_for(labels, rng)
    encoders = [(m, encoder_of(m)) for m in (a.model or ([] if a.text_ckpt else [os.path.join(HERE, "mini", "pipeline")]))]
    encoders += [(c, encoder_of_ckpt(c)) for c in a.text_ckpt]
    print("| encoder | feature | shape | colour | style |\n|---|---|---|---|---|")
    for name, (tok, te) in encoders:
        for feat, x in features(tok, te.eval(), captions).items():
            accs = [probe(x, torch.from_numpy(labels[:, i]), a.n_train) for i in range(3)]
            print(f"| {os.path.relpath(name, HERE)} | {feat} | " + " | ".join(f"{v:.3f}" for v in accs) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
