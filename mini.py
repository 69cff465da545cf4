"""The mini world: a tiny Stable Diffusion (same diffusers/transformers classes as SD v1.4) and its judge.

    python mini.py train      # data -> tokenizer -> VAE -> judge -> UNet + text encoder -> mini/ (resumable)
    python mini.py quality    # the quality benchmark: judge vs prompt on held-out combinations

Everything is drawn and trained here from one --seed; the committed result lives in mini/:
    mini/pipeline/   a StableDiffusionPipeline folder (fp16 storage), loads with StableDiffusionPipeline.from_pretrained
    mini/judge.safetensors + mini/judge.json   the shape/colour/style/background classifier
"""
import argparse
import copy
import gzip
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import checkpoint
import data
import sd as sdlib
from judges import Judge, judge_predict, load_judge, to_tensor  # the judge this script trains

HERE = os.path.dirname(os.path.abspath(__file__))
MINI_DIR = os.path.join(HERE, "mini")  # committed output
WORK_DIR = os.path.join(HERE, "work", "mini")  # caches and checkpoints (git-ignored)

# ---- settings (python mini.py train --help shows them all) -------------------------------------------------------
SEED = 0
N_TRAIN = 60000  # training pictures (held-out triples excluded), latents cached once
N_TEST = 3000  # real pictures for the judge's test (all triples)
VAE_STEPS, VAE_BATCH, VAE_LR = 1500, 32, 1e-3
JUDGE_STEPS, JUDGE_BATCH, JUDGE_LR = 1500, 128, 2e-3
UNET_STEPS, UNET_BATCH, UNET_LR = 4000, 32, 5e-4  # from scratch; 1.6-3.6 s a step on 2 CPU cores, by machine
UNET_WARMUP = 200  # linear warm-up steps, then cosine decay to 10% of UNET_LR
EMA_DECAY = 0.999
CAPTION_DROPOUT = 0.1  # empty caption rate: trains the unconditional branch for classifier-free guidance
ZERO_VECTOR_RATE = 0.03  # captions of 1-20 zero token vectors, trained as unconditional: zero vectors say nothing
PAD_DROPOUT = 0.0  # share of captions whose first EOS and padding the UNet sees as the empty prompt's (--pad-dropout)
N_FILLERS = 2600  # filler words written by `python mini.py fillers`
# real-English words with a visual meaning that the mini world gives another (or no) word: never fillers
VISUAL_STOPLIST = set("""pink brown round oval hexagon stripe stripes spot spots dot dots colour color colours colors
    painting painted paint shape shapes gold silver blonde rainbow""".split())
MIN_SNR_GAMMA = 5.0  # min-SNR loss weighting (Hang et al. 2023); 0 turns it off
CHECKPOINT_EVERY = 250  # UNet steps between resumable checkpoints
# frozen: as SD's CLIP, the text encoder is pretrained apart (on the captions alone) and frozen while the UNet learns
# (the committed model); joint: it learns with the UNet (mini world v2's first model); scripts/route_overlap.py
# shows why frozen (docs/methods.md)
TEXT_ENCODER = "frozen"
TEXT_STEPS, TEXT_BATCH, TEXT_LR = 800, 128, 1e-3  # caption-only pretraining; both losses level off by about 600 steps
# CLIP's analogue: the first EOS position (CLIP's pooled output) also names what the caption's picture shows (its shape,
# colour, style and background labels), as CLIP's contrastive loss ties it to the image; the word positions keep
# naming their tokens. Without it the encoder's outputs hold colour poorly (a linear probe of colour on their mean:
# 0.52, against 0.83 for the jointly trained encoder) and the UNet trained under it did not learn colour.
TEXT_LABEL_WEIGHT = 0.1  # weight of that label loss (0: words only; the committed model's encoder: 0.1 with the bag
#   of words below, which then carries what the caption says and the labels only a little)
# weight of a loss that pulls every position after the first EOS toward the empty prompt's output there, so that the
# padding says almost nothing (SD's UNet ignores CLIP's padding: Toker et al. 2025); 0: the padding is left free
TEXT_PAD_WEIGHT = 0.0
# where that loss starts: "pad", the positions after the first EOS; "eos", the first EOS too (it then names no labels,
# and the UNet can read a caption only through its words)
TEXT_PAD_FROM = "pad"
# weight of a loss that makes the first EOS name every word token of its caption (its bag of words, as a
# distribution): CLIP's pooled text embedding behaves much like a bag of words (Yuksekgonul et al., ICLR 2023), so
# a prompt's summary differs with its words ("starry cypress" is not "van gogh") instead of collapsing to its
# picture's labels (the committed model's encoder); 0: off
TEXT_BOW_WEIGHT = 1.0

# SD v1.4's noise schedule, exactly
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


# ---- model builders (also used by the tests, with smaller sizes) ------------------------------------------------
def build_vae(channels=(32, 64)):
    """AutoencoderKL with len(channels)-1 downsamplings: 32x32x3 -> 16x16x4 latents for the default."""
    from diffusers import AutoencoderKL
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=data.RES,
                         down_block_types=("DownEncoderBlock2D",) * len(channels),
                         up_block_types=("UpDecoderBlock2D",) * len(channels),
                         block_out_channels=channels, layers_per_block=1, norm_num_groups=16)


def build_unet(channels=(96, 192), cross_attention_dim=128, heads=4, sample_size=16, norm_groups=32):
    """UNet2DConditionModel with SD's block types (cross-attention down/mid/up), shrunk."""
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(sample_size=sample_size, in_channels=4, out_channels=4,
                                down_block_types=("CrossAttnDownBlock2D",) * len(channels),
                                up_block_types=("CrossAttnUpBlock2D",) * len(channels),
                                mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=channels,
                                layers_per_block=1, cross_attention_dim=cross_attention_dim,
                                attention_head_dim=heads, norm_num_groups=norm_groups)


def build_text_encoder(hidden=128, layers=3, heads=4):
    """CLIPTextModel with the full 49,408-token CLIP vocabulary and 77 positions, as in SD v1.4, but narrow."""
    from transformers import CLIPTextConfig, CLIPTextModel
    return CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden,
                                        num_hidden_layers=layers, num_attention_heads=heads,
                                        max_position_embeddings=77, projection_dim=hidden, hidden_act="quick_gelu",
                                        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))


def build_scheduler(kind="ddim"):
    from diffusers import DDIMScheduler, DDPMScheduler
    ddim = DDIMScheduler(**SCHEDULER_CONFIG)
    return ddim if kind == "ddim" else DDPMScheduler.from_config(ddim.config)


def build_tokenizer(out_dir):
    """Write a CLIPTokenizer folder built offline from the BPE merges that open_clip ships in its package.

    The vocabulary is CLIP's: 256 byte symbols, the same with '</w>', the first 48,894 merges, then the two
    special tokens, 49,408 in all, so ids equal open_clip's (and OpenAI CLIP's) ids."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer
    bpe = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = CLIPTokenizer(os.path.join(out_dir, "vocab.json"), os.path.join(out_dir, "merges.txt"),
                        model_max_length=77, pad_token="<|endoftext|>")
    tok.save_pretrained(out_dir)
    return CLIPTokenizer.from_pretrained(out_dir)


def build_fillers(path=data.FILLERS_FILE, n=N_FILLERS):
    """Write the filler words: the most frequent whole-word CLIP tokens (BPE merge order) of 4+ ASCII letters that
    are not words of the mini world's language or of VISUAL_STOPLIST. Deterministic; the file is committed."""
    import open_clip
    bpe = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    taken = data._lexicon_words() | data._GLUE | VISUAL_STOPLIST
    taken |= {w for vs in data.ATTRIBUTES.values() for v in vs for w in v.split()}
    words = []
    for line in lines:
        tok = "".join(line.split())
        w = tok[:-4]
        if tok.endswith("</w>") and len(w) >= 4 and w.isascii() and w.isalpha() and w not in taken:
            words.append(w)
            if len(words) == n:
                break
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(words) + "\n")
    os.replace(path + ".tmp", path)
    log(f"wrote {len(words)} filler words to {path}")


def to_uint8(x):
    """(N, 3, H, W) float in [-1, 1] -> (N, H, W, 3) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


# ---- training stages ---------------------------------------------------------------------------------------------
log, tqdm = sdlib.log, sdlib.tqdm


def stage_data(a):
    path = os.path.join(a.work, "data.npz")
    if not os.path.exists(path):
        t0 = time.time()
        x_train, y_train = data.make_dataset(a.n_train, a.seed, held_out="exclude")
        x_test, y_test = data.make_dataset(N_TEST, a.seed + 1, held_out="any")
        np.savez(path + ".tmp.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        os.replace(path + ".tmp.npz", path)
        log(f"data: {a.n_train} train + {N_TEST} test pictures in {time.time() - t0:.0f}s")
    return dict(np.load(path))


def stage_vae(a, d):
    from diffusers import AutoencoderKL
    out = os.path.join(a.work, "vae")
    if os.path.exists(os.path.join(out, "config.json")):
        return AutoencoderKL.from_pretrained(out).eval()
    if a.reuse_vae:  # the pictures have not changed: the committed VAE still fits them
        vae = AutoencoderKL.from_pretrained(a.reuse_vae, dtype=torch.float32).eval()
        vae.save_pretrained(out)
        log(f"vae: reused {a.reuse_vae}")
        return vae
    torch.manual_seed(a.seed)
    vae = build_vae()
    x_all = to_tensor(d["x_train"])
    opt = torch.optim.AdamW(vae.parameters(), VAE_LR, weight_decay=0.0)
    gen = torch.Generator().manual_seed(a.seed)
    bar = tqdm(range(a.vae_steps), desc="vae")
    for step in bar:
        set_lr(opt, lr_at(step, a.vae_steps, VAE_LR, warmup=50))
        x = x_all[torch.randint(0, len(x_all), (VAE_BATCH,), generator=gen)]
        with torch.autocast("cpu", torch.bfloat16, enabled=a.bf16):
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample(generator=gen)).sample.float()
        kl = post.kl().float().mean() / x[0].numel()
        mse = F.mse_loss(rec, x)
        loss = mse + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(mse=f"{mse.item():.4f}", refresh=False)
    vae.eval()
    with torch.no_grad():  # scaling_factor so that scaled latents have unit std, as SD's 0.18215 does
        z = torch.cat([vae.encode(x_all[i:i + 1000]).latent_dist.sample() for i in range(0, min(5000, len(x_all)), 1000)])
        vae.register_to_config(scaling_factor=float(1.0 / z.std()))
        x_test = to_tensor(d["x_test"][:1000])
        rec_mse = F.mse_loss(vae.decode(vae.encode(x_test).latent_dist.mode()).sample, x_test).item()
    log(f"vae: test reconstruction MSE {rec_mse:.4f} (in [-1,1] units), scaling_factor {vae.config.scaling_factor:.4f}")
    vae.save_pretrained(out)
    return vae


def stage_latents(a, d, vae):
    """Latent mean/std of every training picture (for UNet training) and VAE reconstructions (for the judge)."""
    path = os.path.join(a.work, "latents.pt")
    if os.path.exists(path):
        return checkpoint.read(path)
    mus, stds, recs = [], [], []
    x_train = d["x_train"]
    with torch.no_grad():
        for i in tqdm(range(0, len(x_train), 500), desc="latents"):
            post = vae.encode(to_tensor(x_train[i:i + 500])).latent_dist
            mus.append(post.mean.half())
            stds.append(post.std.half())
            if i < 20000:  # reconstructions of the first 20k teach the judge what decoded pictures look like
                recs.append(torch.from_numpy(to_uint8(vae.decode(post.sample()).sample)))
        recs_test = to_uint8(vae.decode(vae.encode(to_tensor(d["x_test"])).latent_dist.sample()).sample)
    out = {"mu": torch.cat(mus), "std": torch.cat(stds), "recon": torch.cat(recs),
           "recon_test": torch.from_numpy(recs_test)}
    checkpoint.write(path, out)
    return out


def judge_augment(x, gen):
    """Mild blur, noise and brightness jitter so generation artefacts do not fool the judge. x: (B, 3, H, W)."""
    b = len(x)
    blur = torch.rand(b, 1, 1, 1, generator=gen) < 0.3
    kernel = torch.tensor([1.0, 2.0, 1.0]) / 4
    k2 = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k2, groups=3)
    x = torch.where(blur, blurred, x)
    x = x + 0.06 * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return x + 0.05 * torch.randn(b, 1, 1, 1, generator=gen)


def stage_judge(a, d, lat):
    from safetensors.torch import save_file
    path = os.path.join(a.out, "judge.safetensors")
    if os.path.exists(path) and not a.retrain_judge:
        return
    torch.manual_seed(a.seed)
    judge = Judge()
    n_rec = len(lat["recon"])
    x_real = to_tensor(d["x_train"][:n_rec])
    x_rec = to_tensor(lat["recon"].numpy())
    y = torch.from_numpy(d["y_train"][:n_rec])
    opt = torch.optim.AdamW(judge.parameters(), JUDGE_LR, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(a.seed)
    t0 = time.time()
    bar = tqdm(range(a.judge_steps), desc="judge")
    for step in bar:
        set_lr(opt, lr_at(step, a.judge_steps, JUDGE_LR, warmup=100))
        idx = torch.randint(0, n_rec, (JUDGE_BATCH,), generator=gen)
        use_rec = (torch.rand(JUDGE_BATCH, generator=gen) < 0.5)[:, None, None, None]
        x = judge_augment(torch.where(use_rec, x_rec[idx], x_real[idx]), gen)
        logits = judge(x)
        loss = sum(F.cross_entropy(logits[k], y[idx, i]) for i, k in enumerate(Judge.heads_order))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    judge.eval()
    acc_real = judge_accuracy(judge, d["x_test"], d["y_test"])
    acc_rec = judge_accuracy(judge, lat["recon_test"].numpy(), d["y_test"])
    os.makedirs(a.out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, path)
    info = {"config": {"width": 32}, "classes": data.ATTRIBUTES, "train_seconds": round(time.time() - t0),
            "steps": a.judge_steps, "test_accuracy_real": acc_real, "test_accuracy_vae_reconstructed": acc_rec,
            "n_test": int(len(d["y_test"]))}
    json.dump(info, open(os.path.join(a.out, "judge.json"), "w"), indent=1)
    log(f"judge: accuracy on {len(d['y_test'])} fresh real pictures {acc_real}, on their VAE reconstructions {acc_rec}")


def judge_accuracy(judge, images, labels):
    pred = judge_predict(judge, images)
    return {a: round(float((pred[a] == labels[:, i]).mean()), 4) for i, a in enumerate(Judge.heads_order)}


def lr_at(step, total, base, warmup=UNET_WARMUP):
    """Linear warm-up, then cosine decay from base to base/10."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def set_lr(opt, lr):
    for g in opt.param_groups:
        g["lr"] = lr


def stage_text(a, d, tokenizer):
    """Pretrain the text encoder on the captions alone (no pictures), resumable from WORK_DIR/text_ckpt.pt.

    Each output position (the last hidden state, what the UNet reads) is trained to name its own token and the next
    one through two linear heads: the first keeps every word its own direction, the second makes the encoder read
    the sentence, so that words used alike (synonyms, a style's associated words) come out near each other. The
    first EOS also names the labels of the caption's picture (--text-label-weight), as CLIP's pooled output is tied
    to its image, and optionally the caption's bag of words (--text-bow-weight)."""
    ckpt_path = os.path.join(a.work, "text_ckpt.pt")
    ck = checkpoint.read(ckpt_path) if os.path.exists(ckpt_path) else None
    torch.manual_seed(a.seed + 1)
    text_encoder = build_text_encoder()
    w = a.text_label_weight
    objective = f"this+next+labels@eos x{w:g}" if w else "this+next"
    pw = getattr(a, "text_pad_weight", TEXT_PAD_WEIGHT)
    pad_from = getattr(a, "text_pad_from", TEXT_PAD_FROM)
    bw = getattr(a, "text_bow_weight", TEXT_BOW_WEIGHT)
    if pw:
        objective += f"+{'eos+' if pad_from == 'eos' else ''}pads=empty x{pw:g}"
    if bw:
        objective += f"+words@eos x{bw:g}"
    if ck is not None and ck.get("objective", "this+next") != objective:
        sys.exit(f"text: {ckpt_path} was trained with the objective {ck.get('objective', 'this+next')!r}, not "
                 f"{objective!r}; delete it (or use another --work) to pretrain again")
    if ck is not None and ck["step"] >= a.text_steps:
        text_encoder.load_state_dict(ck["text"])
        return text_encoder.requires_grad_(False).eval()
    y = d["y_train"]
    rng = np.random.default_rng([a.seed, 7])  # the heads name the tokens of 20,000 captions (one class for the rest)
    seen = tokenizer(data.captions_for(y[rng.integers(0, len(y), 20000)], rng), padding="max_length", max_length=77,
                     truncation=True, return_tensors="pt").input_ids.unique()
    cls = torch.full((len(tokenizer),), len(seen), dtype=torch.long)
    cls[seen] = torch.arange(len(seen))
    hidden = text_encoder.config.hidden_size
    heads = torch.nn.ModuleDict({k: torch.nn.Linear(hidden, len(seen) + 1) for k in ("this", "next")})
    for attr, values in data.ATTRIBUTES.items():  # the picture's labels, read at the first EOS
        heads[attr] = torch.nn.Linear(hidden, len(values))
    if bw:  # made last, so that the other heads start as without it
        heads["bow"] = torch.nn.Linear(hidden, len(seen) + 1)
    params = list(text_encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, TEXT_LR, weight_decay=1e-2)
    step, losses = 0, []
    if ck is not None:
        text_encoder.load_state_dict(ck["text"]), heads.load_state_dict(ck["heads"]), opt.load_state_dict(ck["opt"])
        step, losses = ck["step"], [l + [0.0] * (5 - len(l)) for l in ck["losses"]]  # older ones kept 3 or 4
        log(f"text: resumed at step {step}")
    log(f"text encoder: {a.text_steps} steps of batch {TEXT_BATCH} on captions alone ({len(seen)} distinct tokens)")
    empty_ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    bar = tqdm(range(step, a.text_steps), desc="text", initial=step, total=a.text_steps)
    for step in bar:
        rng = np.random.default_rng([a.seed, 7, step])
        labels = y[rng.integers(0, len(y), TEXT_BATCH)]
        caps = data.captions_for(labels, rng)
        # the pad loss reads every one of the 77 positions the UNet sees; without it the longest caption is enough
        ids = tokenizer(caps, padding="max_length" if pw else "longest", max_length=77, truncation=True,
                        return_tensors="pt").input_ids
        if pw:  # the empty prompt goes through the encoder with the batch (one more row)
            ids = torch.cat([ids, empty_ids])
        n_eos = torch.cumsum((ids == tokenizer.eos_token_id).long(), 1)  # EOS tokens up to and at each position
        real = n_eos <= 1  # BOS, the words and the first EOS
        set_lr(opt, lr_at(step, a.text_steps, TEXT_LR, warmup=100))
        with torch.autocast("cpu", torch.bfloat16, enabled=a.bf16):
            h = text_encoder(ids)[0]
        h = h.float()
        if pw:  # the positions to be made the empty prompt's: the padding (and with "eos" the first EOS)
            h, empty = h[:-1], h[-1]
            ids, real, n_eos = ids[:-1], real[:-1], n_eos[:-1]
            pads = n_eos > 1 if pad_from == "pad" else n_eos >= 1
            pad = ((h - empty) ** 2).mean(-1)[pads].mean()
        else:
            pad = torch.zeros(())
        this = F.cross_entropy(heads["this"](h[real]), cls[ids[real]])
        nxt_mask = real[:, :-1] & real[:, 1:]
        nxt = F.cross_entropy(heads["next"](h[:, :-1][nxt_mask]), cls[ids[:, 1:][nxt_mask]])
        eos = h[torch.arange(len(h)), (ids == tokenizer.eos_token_id).long().argmax(1)]  # (B, D) the first EOS
        lab = sum(F.cross_entropy(heads[attr](eos), torch.from_numpy(labels[:, i]))
                  for i, attr in enumerate(data.ATTRIBUTES)) / len(data.ATTRIBUTES)
        if bw:  # the first EOS names the set of its caption's word tokens (BOS and EOS excluded)
            words = (n_eos == 0) & (torch.arange(ids.shape[1]) > 0)
            bag = torch.zeros(len(ids), len(seen) + 2)  # one spare column takes the non-word positions
            bag = bag.scatter_(1, torch.where(words, cls[ids], len(seen) + 1), 1.0)[:, :-1]
            bag = bag / bag.sum(1, keepdim=True)  # a distribution over the caption's words
            bow = -(bag * F.log_softmax(heads["bow"](eos), -1)).sum(1).mean()  # cross-entropy against it
        else:
            bow = torch.zeros(())
        loss = this + nxt + w * lab + pw * pad + bw * bow
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append([this.item(), nxt.item(), lab.item(), pad.item(), bow.item()])
        bar.set_postfix(this=f"{np.mean([l[0] for l in losses[-50:]]):.3f}",
                        next=f"{np.mean([l[1] for l in losses[-50:]]):.3f}",
                        labels=f"{np.mean([l[2] for l in losses[-50:]]):.3f}",
                        pads=f"{np.mean([l[3] for l in losses[-50:]]):.3f}",
                        words=f"{np.mean([l[4] for l in losses[-50:]]):.3f}", refresh=False)
        if (step + 1) % 500 == 0 or step + 1 == a.text_steps:
            checkpoint.write(ckpt_path, {"text": text_encoder.state_dict(), "heads": heads.state_dict(),
                                         "opt": opt.state_dict(), "step": step + 1, "losses": losses,
                                         "seen": seen,  # the token ids the heads name, in class order
                                         "objective": objective})
    log(f"text: own-token loss {np.mean([l[0] for l in losses[-200:]]):.3f}, "
        f"next-token loss {np.mean([l[1] for l in losses[-200:]]):.3f}, "
        f"label loss {np.mean([l[2] for l in losses[-200:]]):.3f}"
        + (f", pad loss {np.mean([l[3] for l in losses[-200:]]):.4f}" if pw else "")
        + (f", bag-of-words loss {np.mean([l[4] for l in losses[-200:]]):.4f}" if bw else "") + " (last 200 steps)")
    return text_encoder.requires_grad_(False).eval()


def stage_frozen_text(a, d, tokenizer):
    """The frozen text encoder the UNet trains under: --reuse-text's folder, else the text stage's; None for joint."""
    if a.text_encoder != "frozen":
        return None
    if not getattr(a, "reuse_text", None):
        return stage_text(a, d, tokenizer)
    from transformers import CLIPTextModel  # a trained encoder, e.g. to go on fine-tuning a candidate's UNet under it
    text_encoder = CLIPTextModel.from_pretrained(a.reuse_text, dtype=torch.float32).requires_grad_(False).eval()
    log(f"text encoder: reused {a.reuse_text} (no text stage)")
    return text_encoder


def clean_from_eos(cond, clean, eos, rows):
    """cond (B, 77, D) with every position from the first EOS on (eos: (B,) its index) replaced by clean's (1, 77, D)
    in the rows where rows (B,) is True: those captions say what they say through their words alone."""
    late = rows[:, None] & (torch.arange(cond.shape[1])[None, :] >= eos[:, None])
    return torch.where(late[..., None], clean.expand_as(cond), cond)


def stage_unet(a, d, lat, tokenizer, vae, frozen_text=None):
    """Train the UNet on cached latents, with the text encoder (jointly) or under frozen_text (pretrained, fixed);
    resumable from WORK_DIR/unet_ckpt.pt."""
    ckpt_path = os.path.join(a.work, "unet_ckpt.pt")
    torch.manual_seed(a.seed)
    unet = build_unet()
    text_encoder = build_text_encoder() if frozen_text is None else frozen_text.requires_grad_(False)
    if a.init_from:  # start from a trained pipeline's UNet (and text encoder): a fine-tune on the current language
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(a.init_from, subfolder="unet").float().state_dict())
        if frozen_text is None:
            text_encoder.load_state_dict(CLIPTextModel.from_pretrained(a.init_from, subfolder="text_encoder")
                                         .float().state_dict())
        log(f"unet{'' if frozen_text is not None else ' and text encoder'} initialised from {a.init_from}")
    params = [p for p in list(unet.parameters()) + list(text_encoder.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, UNET_LR, weight_decay=1e-2, betas=(0.9, 0.99))
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    step, losses = 0, []
    if os.path.exists(ckpt_path):
        ck = checkpoint.read(ckpt_path)
        for m, k in ((unet, "unet"), (text_encoder, "text"), (ema_unet, "ema_unet"), (ema_text, "ema_text"),
                     (opt, "opt")):
            m.load_state_dict(ck[k])
        step, losses = ck["step"], ck["losses"]
        log(f"unet: resumed at step {step}")
    n_u, n_t = sum(p.numel() for p in unet.parameters()), sum(p.numel() for p in text_encoder.parameters())
    log(f"unet {n_u:,} params, text encoder {n_t:,} params; {a.unet_steps} steps of batch {UNET_BATCH}")
    zero_mask = {}  # this step's token-embedding mask, applied by a hook on the embedding table
    text_encoder.get_input_embeddings().register_forward_hook(lambda m, args, out: out * zero_mask["keep"][..., None])
    scheduler = build_scheduler("ddpm")
    acp = scheduler.alphas_cumprod  # (1000,)
    snr = acp / (1 - acp)
    mu, std, y = lat["mu"], lat["std"], d["y_train"]
    sf = vae.config.scaling_factor
    t0 = time.time()
    ids_empty = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids[0].tolist()
    bar = tqdm(range(step, a.unet_steps), desc="unet", initial=step, total=a.unet_steps)
    for step in bar:
        # every random draw of a step comes from (seed, step): a resumed run continues the same sequence
        rng = np.random.default_rng([a.seed, step])
        gen = torch.Generator().manual_seed(a.seed * 1_000_003 + step)
        idx = rng.integers(0, len(mu), UNET_BATCH)
        caps = data.captions_for(y[idx], rng)
        drop = rng.random(UNET_BATCH)
        caps = ["" if u < CAPTION_DROPOUT + ZERO_VECTOR_RATE else c for u, c in zip(drop, caps)]
        ids = tokenizer(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        keep = torch.ones(ids.shape)  # 0 where a token's embedding is replaced by the zero vector
        for i in np.flatnonzero((drop >= CAPTION_DROPOUT) & (drop < CAPTION_DROPOUT + ZERO_VECTOR_RATE)):
            k = int(rng.integers(1, 21))  # BOS, k zero vectors, EOS, padding: DM2's 0*c has this form
            ids[i, 1:k + 1], ids[i, k + 1:] = 0, tokenizer.eos_token_id
            keep[i, 1:k + 1] = 0
        zero_mask["keep"] = keep
        z0 = (mu[idx].float() + std[idx].float() * torch.randn(mu[idx].shape, generator=gen)) * sf  # (B, 4, 16, 16)
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, 1000, (UNET_BATCH,), generator=gen)
        zt = scheduler.add_noise(z0, noise, t)  # sqrt(acp_t) z0 + sqrt(1 - acp_t) noise
        set_lr(opt, lr_at(step, a.unet_steps, UNET_LR, warmup=a.warmup))
        with torch.autocast("cpu", torch.bfloat16, enabled=a.bf16):
            cond = text_encoder(ids)[0]
            if a.pad_dropout > 0:  # these captions reach the UNet through their words alone (scripts/pad_probe.py)
                rows = torch.from_numpy((rng.random(UNET_BATCH) < a.pad_dropout) & (drop >= CAPTION_DROPOUT
                                                                                   + ZERO_VECTOR_RATE))
                eos = (ids == tokenizer.eos_token_id).int().argmax(1)
                zero_mask["keep"] = torch.ones(1, ids.shape[1])  # the embedding hook's mask, for the one empty prompt
                clean = text_encoder(torch.tensor([ids_empty]))[0]  # (1, 77, D) the empty prompt's positions
                cond = clean_from_eos(cond, clean, eos, rows)
            pred = unet(zt, t, cond).sample.float()
        per_sample = F.mse_loss(pred, noise, reduction="none").mean((1, 2, 3))
        weight = torch.clamp(snr[t], max=MIN_SNR_GAMMA) / snr[t] if MIN_SNR_GAMMA > 0 else torch.ones_like(per_sample)
        loss = (weight * per_sample).mean()
        if not torch.isfinite(loss):
            sys.exit(f"unet: loss is {loss.item()} at step {step}; last checkpoint kept at {ckpt_path}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        with torch.no_grad():
            for live, ema in ((unet, ema_unet), (text_encoder, ema_text)):
                for p, q in zip(live.parameters(), ema.parameters()):
                    q.lerp_(p, 1 - decay)
        losses.append(per_sample.mean().item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
        if (step + 1) % 100 == 0:
            log(f"unet step {step + 1} loss {np.mean(losses[-100:]):.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{(time.time() - t0) / (step + 1 - bar.initial):.2f} s/step")
        if (step + 1) % CHECKPOINT_EVERY == 0 or step + 1 == a.unet_steps:
            checkpoint.write(ckpt_path, {"unet": unet.state_dict(), "text": text_encoder.state_dict(),
                                         "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                                         "opt": opt.state_dict(), "step": step + 1, "losses": losses})
    return ema_unet, ema_text, losses


def unet_lineage(init_from, unet_steps):
    """(UNet steps in all, the earlier fine-tunes' train_info records, oldest first) of a UNet trained unet_steps
    from the pipeline folder init_from (None: from scratch). The earlier records come from the train_info.json beside
    init_from (mini.py train writes it next to its pipeline/), so a chain of fine-tunes keeps its own history."""
    if not init_from:
        return unet_steps, []
    path = os.path.join(os.path.dirname(os.path.abspath(init_from)), "train_info.json")
    if not os.path.exists(path):
        sys.exit(f"--init-from {init_from}: no {path} beside it, so the UNet's earlier steps are unknown; "
                 "a pipeline that mini.py train did not write cannot be fine-tuned")
    prior = json.load(open(path))
    earlier = [{k: v for k, v in prior.items() if k not in ("history", "held_out")}]
    return prior.get("unet_steps_total", prior["unet_steps"]) + unet_steps, prior.get("history", []) + earlier


def stage_export(a, vae, unet, text_encoder, tokenizer, losses):
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=build_scheduler("ddim"), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    out = os.path.join(a.out, "pipeline")
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(tmp)  # half-precision storage; loaders upcast on CPU
    sdlib.mark_mini_world(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    info = {"seed": a.seed, "n_train": a.n_train, "held_out": data.HELD_OUT, "vae_steps": a.vae_steps,
            "unet_steps": a.unet_steps, "unet_batch": UNET_BATCH, "unet_lr": UNET_LR, "bf16": a.bf16,
            "min_snr_gamma": MIN_SNR_GAMMA, "caption_dropout": CAPTION_DROPOUT, "ema_decay": EMA_DECAY,
            "zero_vector_rate": ZERO_VECTOR_RATE, "pad_dropout": a.pad_dropout, "language": "v2",
            "text_encoder": a.text_encoder,
            "text_steps": a.text_steps if a.text_encoder == "frozen" else None,
            "text_label_weight": a.text_label_weight if a.text_encoder == "frozen" else None,
            "text_pad_weight": a.text_pad_weight if a.text_encoder == "frozen" else None,
            "text_pad_from": a.text_pad_from if a.text_encoder == "frozen" and a.text_pad_weight else None,
            "text_bow_weight": a.text_bow_weight if a.text_encoder == "frozen" else None,
            "reused_vae": a.reuse_vae, "reused_text": a.reuse_text,
            "init_from": a.init_from and os.path.relpath(a.init_from, HERE), "warmup": a.warmup,
            "final_loss_last200": float(np.mean(losses[-200:])) if losses else None}
    info["unet_steps_total"], info["history"] = a.lineage
    json.dump(info, open(os.path.join(a.out, "train_info.json"), "w"), indent=1)
    log(f"saved {out}")


def native_bf16():
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX); without it autocast emulates bf16."""
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def cmd_train(a):
    if not 0 <= a.pad_dropout <= 1:
        sys.exit(f"--pad-dropout is a share of the captions, from 0 to 1; got {a.pad_dropout}")
    if a.text_pad_weight < 0:
        sys.exit(f"--text-pad-weight is a loss weight, 0 or more; got {a.text_pad_weight}")
    if a.text_bow_weight < 0:
        sys.exit(f"--text-bow-weight is a loss weight, 0 or more; got {a.text_bow_weight}")
    if a.text_pad_from == "eos" and a.text_pad_weight and (a.text_label_weight or a.text_bow_weight):
        sys.exit("--text-pad-from eos makes the first EOS the empty prompt's, so it cannot also name the labels or "
                 "the words: give --text-label-weight 0 and --text-bow-weight 0")
    if a.reuse_text and a.text_encoder != "frozen":
        sys.exit("--reuse-text takes a frozen encoder; with --text-encoder joint the UNet stage trains its own")
    if a.reuse_text and not os.path.exists(os.path.join(a.reuse_text, "config.json")):
        sys.exit(f"--reuse-text {a.reuse_text}: no config.json there; give a text_encoder folder, e.g. "
                 "mini/pipeline/text_encoder")
    a.lineage = unet_lineage(a.init_from, a.unet_steps)  # read now: --out may be the folder beside --init-from
    torch.set_num_threads(a.threads)
    if a.bf16 is None:
        a.bf16 = native_bf16()
        log(f"bf16 autocast {'on' if a.bf16 else 'off'}: this CPU {'has' if a.bf16 else 'lacks'} bf16 instructions "
            "(--bf16 / --no-bf16 to choose)")
    os.makedirs(a.work, exist_ok=True)
    d = stage_data(a)
    tokenizer = build_tokenizer(os.path.join(a.work, "tokenizer"))
    vae = stage_vae(a, d)
    lat = stage_latents(a, d, vae)
    stage_judge(a, d, lat)
    frozen_text = stage_frozen_text(a, d, tokenizer)
    unet, text_encoder, losses = stage_unet(a, d, lat, tokenizer, vae, frozen_text)
    stage_export(a, vae, unet.eval(), text_encoder.eval(), tokenizer, losses)


# ---- the quality benchmark -------------------------------------------------------------------------------------
QUALITY_SEEDS = 13  # pictures per held-out triple: 24 x 13 = 312
QUALITY_STEPS, QUALITY_GUIDANCE = 25, 5.0


def quality_prompts(triples, n_seeds, seed0=0):
    rows = [(data.prompt_for(s, c, st), (s, c, st), seed0 + k) for s, c, st in triples for k in range(n_seeds)]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def confusion_markdown(true, pred, names):
    """Markdown confusion matrix: rows = what the prompt asked for, columns = what the judge saw."""
    m = np.zeros((len(names), len(names)), int)
    np.add.at(m, (true, pred), 1)
    lines = ["| asked \\ judged | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(str(v) for v in row) + " |" for n, row in zip(names, m)]
    return "\n".join(lines), m.tolist()


def training_shares(n=20000, seed=0):
    """Share of each shape, colour and style in the training pictures (held-out triples excluded)."""
    labels = data.sample_labels(n, np.random.default_rng(seed), "exclude")
    return {attr: {v: float((labels[:, i] == j).mean()) for j, v in enumerate(data.ATTRIBUTES[attr])}
            for i, attr in enumerate(["shape", "color", "style"])}


def implicit_rates(sd, judge, n, steps=QUALITY_STEPS, guidance=QUALITY_GUIDANCE, batch=104, seed=0, concepts=None):
    """{concept: share of pictures of n of its implicit prompts (spread evenly, seeds seed, seed+1, ...) that the
    judge reads as the concept} for every mini concept (or those given)."""
    concepts = concepts or data.MINI_CONCEPTS
    rows = []
    for name in concepts:
        rows += [(name, p) for p in data.spread(data.get_concept(name).implicit_prompts, n)]
    images = sdlib.generate(sd, [p for _, p in rows], [seed + i for i in range(len(rows))], steps, guidance, batch)
    pred = judge_predict(judge, images)
    hits = [pred[data.VALUE_ATTRIBUTE[name]][i] == data.ATTRIBUTES[data.VALUE_ATTRIBUTE[name]].index(name)
            for i, (name, _) in enumerate(rows)]
    return {name: float(np.mean([h for h, (m, _) in zip(hits, rows) if m == name])) for name in concepts}, images, rows


def null_draws(sd, judge, n, steps=QUALITY_STEPS, guidance=QUALITY_GUIDANCE, batch=104, seed=0, n_zero=16):
    """What the empty prompt and a prompt of n_zero zero token vectors (DM2's 0*c: BOS, the zero vectors, EOS) draw:
    {'empty' | 'zero vectors': {attribute: {value: share of n pictures}}}, and the pictures."""
    names = [f"<zero{i}>" for i in range(n_zero)]
    ids = sdlib.add_tokens(sd, names)
    dim = sd.text_encoder.get_input_embeddings().embedding_dim
    zero = {i: torch.zeros(dim, device=sd.device, dtype=sd.dtype) for i in ids}
    seeds = [seed + i for i in range(n)]
    out, pictures = {}, {}
    for key, prompt, inject in (("empty", "", None), ("zero vectors", " ".join(names), zero)):
        images = sdlib.generate(sd, [prompt] * n, seeds, steps, guidance, batch, inject=inject)
        pred = judge_predict(judge, images)
        out[key] = {attr: {v: float((pred[attr] == j).mean()) for j, v in enumerate(data.ATTRIBUTES[attr])}
                    for attr in ("shape", "color", "style")}
        pictures[key] = images
    return out, pictures


def cmd_quality(a):
    torch.set_num_threads(a.threads)
    try:
        sd = sdlib.load(a.model, a.device)
    except sdlib.LoadError as e:
        sdlib.fail(str(e))
    judge = load_judge(a.judge)
    triples = data.HELD_OUT if a.set == "held-out" else [
        t for t in ((s, c, st) for s in data.SHAPES for c in data.COLOR_NAMES for st in data.STYLES)
        if t not in data.HELD_OUT][::4][:24]
    prompts, labels, seeds = quality_prompts(triples, a.seeds, a.seed)
    with sdlib.output_dir(a.out, a.overwrite) as tmp:
        with sdlib.Timer(sd) as timer:
            images = sdlib.generate(sd, prompts, seeds, a.steps, a.guidance, a.batch)
        pred = judge_predict(judge, images)
        report = [f"# Mini-world quality: {len(images)} pictures of {len(triples)} {a.set} (shape, colour, style) "
                  f"combinations", "",
                  f"Command: `python mini.py quality --set {a.set} --seeds {a.seeds} --seed {a.seed} --steps {a.steps} "
                  f"--guidance {a.guidance}`; DDIM {a.steps} steps, guidance {a.guidance}, seeds {a.seed}..{a.seed + a.seeds - 1} "
                  "per prompt.", "", "| attribute | judge agrees with the prompt |", "|---|---|"]
        metrics = {"n_images": len(images), "set": a.set, "steps": a.steps, "guidance": a.guidance,
                   "seconds_per_image": timer.seconds / len(images), "cost": timer.as_dict(), "accuracy": {},
                   "confusion": {}}
        tables = []
        for i, attr in enumerate(["shape", "color", "style"]):
            names = data.ATTRIBUTES[attr]
            true = np.array([names.index(l[i]) for l in labels])
            acc = float((pred[attr] == true).mean())
            metrics["accuracy"][attr] = acc
            report.append(f"| {attr} | {acc:.3f} |")
            table, m = confusion_markdown(true, pred[attr], names)
            metrics["confusion"][attr] = m
            tables += ["", f"**{attr}** (rows: asked, columns: judged)", "", table]
        vg = data.STYLES.index("van gogh")
        asked_vg = np.array([l[2] == "van gogh" for l in labels])
        metrics["van_gogh_rate_on_van_gogh_prompts"] = float((pred["style"][asked_vg] == vg).mean())
        metrics["van_gogh_rate_on_other_prompts"] = float((pred["style"][~asked_vg] == vg).mean())
        report += ["", f"Judged \"van gogh\": {metrics['van_gogh_rate_on_van_gogh_prompts']:.3f} of van gogh prompts, "
                   f"{metrics['van_gogh_rate_on_other_prompts']:.3f} of prompts of other styles.", "",
                   f"Sampling: {metrics['seconds_per_image']:.3f} s per picture on this machine "
                   f"({timer.unet_evals} UNet evaluations in all, batch {a.batch}, {torch.get_num_threads()} threads)."]
        if a.implicit:
            with sdlib.Timer(sd) as t_imp:
                rates, imp_images, imp_rows = implicit_rates(sd, judge, a.implicit, a.steps, a.guidance, a.batch,
                                                             a.seed)
            metrics["implicit_rate"], metrics["implicit_prompts_per_concept"] = rates, a.implicit
            report += ["", f"## Implicit prompts: {a.implicit} per concept, none naming it", "",
                       "Each prompt evokes its concept by two associated words never seen together in training "
                       "(data.implicit_prompts); the rate is the share of pictures the judge reads as the concept.", "",
                       "| concept | " + " | ".join(rates) + " |", "|---" * (len(rates) + 1) + "|",
                       "| implicit rate | " + " | ".join(f"{v:.2f}" for v in rates.values()) + " |", "",
                       f"Lowest: {min(rates.values()):.2f} ({min(rates, key=rates.get)}); mean "
                       f"{np.mean(list(rates.values())):.2f}; {t_imp.seconds:.0f} s.", "",
                       "![implicit](implicit.png)", "",
                       "The picture: one row per concept, in the table's order. The first prompts of the first "
                       "four concepts: " + "; ".join(f"*{next(p for m, p in imp_rows if m == n)}*"
                                                     for n in list(rates)[:4])]
            per = a.implicit
            data.save_png(data.image_grid(np.stack([imp_images[i * per + k] for i in range(len(rates))
                                                    for k in range(min(per, 12))]), min(per, 12)),
                          os.path.join(tmp, "implicit.png"))
        if a.null:
            draws, null_pics = null_draws(sd, judge, a.null, a.steps, a.guidance, a.batch, a.seed)
            shares = training_shares()
            metrics["null_draws"], metrics["training_shares"] = draws, shares
            report += ["", f"## What no concept draws: {a.null} pictures each", "",
                       "The empty prompt and DM2's 0*c (16 zero token vectors between BOS and EOS); each value's "
                       "share of the pictures against its share of the training pictures.", "",
                       "| prompt | attribute | most drawn | its share | training share | ratio |",
                       "|---|---|---|---|---|---|"]
            worst = 0.0
            for key, by_attr in draws.items():
                for attr in ("shape", "color", "style"):
                    top = max(by_attr[attr], key=by_attr[attr].get)
                    ratio = by_attr[attr][top] / shares[attr][top]
                    worst = max(worst, ratio)
                    report.append(f"| {key} | {attr} | {top} | {by_attr[attr][top]:.2f} | {shares[attr][top]:.2f} "
                                  f"| {ratio:.2f} |")
            metrics["null_worst_ratio"] = worst
            report += ["", f"Largest ratio of a value's share to its training share: {worst:.2f}.", "",
                       "![null](null.png)", "", "Top: the empty prompt; bottom: zero vectors."]
            data.save_png(data.image_grid(np.concatenate([null_pics["empty"][:16], null_pics["zero vectors"][:16]]),
                                          16), os.path.join(tmp, "null.png"))
        report += tables + ["", "![grid](grid.png)", "", "Grid: one row per prompt, one column per seed."]
        data.save_png(data.image_grid(images[: len(triples) * a.seeds], a.seeds), os.path.join(tmp, "grid.png"))
        # the README's picture: 12 combinations as columns; two rows of real pictures, two of generated ones
        rng = np.random.default_rng(a.seed + 99)
        cols = list(range(0, len(triples), 2))[:12]
        real = [data.render(*triples[j], data.BACKGROUND_NAMES[rng.integers(4)], rng) for _ in range(2) for j in cols]
        gen = [images[j * a.seeds + k] for k in range(min(2, a.seeds)) for j in cols]
        data.save_png(data.image_grid(np.stack(real + gen), len(cols), scale=4), os.path.join(tmp, "real_vs_generated.png"))
        json.dump(metrics, open(os.path.join(tmp, "metrics.json"), "w"), indent=1)
        open(os.path.join(tmp, "report.md"), "w").write("\n".join(report) + "\n")
    print("\n".join(report[:10 + 3]))
    print(f"wrote {a.out}/report.md, metrics.json, grid.png")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train VAE, judge, UNet and text encoder; write mini/ (resumes by itself)")
    t.add_argument("--seed", type=int, default=SEED)
    t.add_argument("--n-train", type=int, default=N_TRAIN, help="training pictures")
    t.add_argument("--vae-steps", type=int, default=VAE_STEPS)
    t.add_argument("--judge-steps", type=int, default=JUDGE_STEPS)
    t.add_argument("--unet-steps", type=int, default=UNET_STEPS)
    t.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast for the forward passes (default: on where the CPU has bf16 instructions, "
                        "about 1.4x faster there; emulated elsewhere, about 9x slower than fp32 on an AVX2 CPU)")
    t.add_argument("--reuse-vae", default=None, metavar="DIR",
                   help="take the VAE from this diffusers folder instead of training one (the pictures are unchanged: "
                        "mini/pipeline/vae)")
    t.add_argument("--reuse-text", default=None, metavar="DIR",
                   help="take the frozen text encoder from this folder instead of pretraining one (the --text-* "
                        "settings then only record how it was made)")
    t.add_argument("--init-from", default=None, metavar="DIR",
                   help="initialise the UNet and text encoder from this pipeline folder (fine-tune) instead of at random")
    t.add_argument("--text-encoder", default=TEXT_ENCODER, choices=["frozen", "joint"],
                   help="frozen: pretrain on the captions alone, then freeze (as SD's CLIP); joint: train with the UNet")
    t.add_argument("--text-steps", type=int, default=TEXT_STEPS, help="text-encoder pretraining steps (frozen)")
    t.add_argument("--text-label-weight", type=float, default=TEXT_LABEL_WEIGHT,
                   help="weight of the first EOS's picture-label loss in the text stage (0: words only)")
    t.add_argument("--text-pad-weight", type=float, default=TEXT_PAD_WEIGHT,
                   help="weight of the text stage's loss that makes the padding the empty prompt's (0: padding free)")
    t.add_argument("--text-pad-from", default=TEXT_PAD_FROM, choices=["pad", "eos"],
                   help="pad: the pad loss covers the positions after the first EOS; eos: the first EOS too")
    t.add_argument("--text-bow-weight", type=float, default=TEXT_BOW_WEIGHT,
                   help="weight of a text-stage loss that makes the first EOS name every word of its caption, as "
                        "CLIP's pooled output behaves like a bag of words (0: off)")
    t.add_argument("--pad-dropout", type=float, default=PAD_DROPOUT,
                   help="share of captions whose first EOS and padding the UNet sees as the empty prompt's, so that "
                        "it learns to read the words (SD's UNet ignores the padding)")
    t.add_argument("--warmup", type=int, default=UNET_WARMUP, help="UNet learning-rate warm-up steps")
    t.add_argument("--retrain-judge", action="store_true", help="train the judge even if mini/ has one")
    t.add_argument("--out", default=MINI_DIR, help="where the pipeline and judge are written")
    t.add_argument("--work", default=WORK_DIR, help="caches and checkpoints")
    t.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    f = sub.add_parser("fillers", help="write the filler words (concepts/mini_fillers.txt) from the CLIP vocabulary")
    f.add_argument("--n", type=int, default=N_FILLERS)
    q = sub.add_parser("quality", help="benchmark: does the judge agree with the prompt on generated pictures?")
    q.add_argument("--model", default=os.path.join(MINI_DIR, "pipeline"))
    q.add_argument("--judge", default=MINI_DIR, help="folder with judge.safetensors")
    q.add_argument("--set", default="held-out", choices=["held-out", "seen"],
                   help="held-out: the 24 triples never drawn in training; seen: 24 training triples")
    q.add_argument("--seeds", type=int, default=QUALITY_SEEDS, help="pictures per prompt")
    q.add_argument("--seed", type=int, default=0, help="first seed")
    q.add_argument("--steps", type=int, default=QUALITY_STEPS)
    q.add_argument("--guidance", type=float, default=QUALITY_GUIDANCE)
    q.add_argument("--batch", type=int, default=104)
    q.add_argument("--implicit", type=int, default=40, help="implicit prompts per concept (0: skip)")
    q.add_argument("--null", type=int, default=100, help="pictures of the empty prompt and of zero vectors (0: skip)")
    q.add_argument("--device", default="auto")
    q.add_argument("--out", default=os.path.join(HERE, "results", "mini_quality"))
    q.add_argument("--overwrite", action="store_true")
    q.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    a = p.parse_args(argv)
    {"train": cmd_train, "quality": cmd_quality, "fillers": lambda a: build_fillers(n=a.n)}[a.cmd](a)


if __name__ == "__main__":
    main()
