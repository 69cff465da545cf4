"""Erase a concept from a Stable Diffusion model; write a run folder with what changed.

    python erase.py --method esd --concept "van gogh" --train-method esd-x --out runs/esd_vangogh
    python erase.py --method uce --concept "van gogh" --out runs/uce_vangogh
    python erase.py --method esd --concept triangle --train-method esd-u --out runs/esd_triangle
    python erase.py --method advunlearn --concept "van gogh" --out runs/advunlearn_vangogh
    python erase.py --method rece --concept "van gogh" --out runs/rece_vangogh

A run folder holds weights.safetensors (only the changed tensors), config.json (resolved settings, seeds, base
model and its fingerprint, cost), loss.csv and before_after.png (same seeds before and after). Every later
command takes --weights RUN (with --model BASE, or the base the run names). --export DIR writes a full pipeline.
"""
import argparse
import copy
import dataclasses
import os
import sys

import numpy as np
import torch

import checkpoint
import data
import judges
import lora
import losses
import sd as sdlib
from inversion import image_latents, scheduled_lr, textual_inversion

# ---- settings (every one is a flag; python erase.py --help) -----------------------------------------------------
METHODS = ["esd", "uce", "stereo", "ap", "dm2", "advunlearn", "rece"]
SEED = 0
# ESD (Gandikota et al. 2023). The paper fine-tunes SD v1.4 for 1000 iterations at lr 1e-5; the mini world's
# small model moves faster and needs fewer steps at a larger rate.
ESD_ITERATIONS = 200
# by --train-method: the more weights a rule trains, the smaller the rate that keeps other concepts (docs/methods.md);
# ESD-u at 2e-5 left the triangle untouched on the committed model at 100 iterations, 1e-4 erases it (frames.md)
ESD_LR = {"esd-x": 2e-4, "esd-u": 1e-4, "full": 2e-5, "attn-v": 2e-4, "text-encoder": 2e-5}
ESD_ETA = 1.0  # negative guidance: how far past "unconditional" the target pushes away from the concept
# esd-x: cross-attention (styles, artists); esd-u: all but cross-attention (objects, nudity); auto: by the concept's
# kind, the ESD paper's split, for STEREO and AP too (both erase ESD-style)
ESD_TRAIN_METHOD = "auto"
ESD_TRAIN_FOR = {"style": "esd-x", "object": "esd-u"}  # --train-method auto, by data.Concept.kind
ESD_DDIM_STEPS = 50  # x_t comes from DDIM sampling of the model being trained, stopped at a random one of these
ESD_START_GUIDANCE = 3.0  # guidance of that partial sampling
ESD_BATCH = 1  # prompts per step
ESD_ERASE_PROMPT = "frames"  # frames: the concept's name in sentences that name nothing else ("a thing in the style
#   of van gogh", data.Concept.frames); words: the name alone, as in the paper ("Van Gogh"), whose edit does not reach
#   the name inside a sentence in the mini world (results/mini_v2/frames.md); prompts: its scene prompts ("a red
#   circle in the style of van gogh"), which also push away from the scene (shape, colour)
# UCE (Gandikota et al. 2024): one closed-form edit of every cross-attention key and value projection
UCE_LAMBDA = 0.1  # pull toward the original weights
UCE_ERASE_SCALE = 1.0
UCE_PRESERVE_SCALE = 1.0
UCE_PRESERVE = 30  # how many prompts of other concepts to preserve (0: none)
UCE_ERASE = "frames"  # what UCE edits: the concept's frames toward the unconditional (results/mini_v2/frames.md),
#   its scene prompts toward the same scenes without it, or its words alone (the public code's default)
# STEREO (Srivatsan et al. 2024): stage 1 alternates ESD-style erasing with CCE attacks, stage 2 erases the
# concept and every adversarial token at once from the original model with the anchor-compositional target
STEREO_ROUNDS = 4  # K: rounds of erase-then-attack in stage 1 (each adds one adversarial token)
STEREO_STE_ITERATIONS = 100  # ESD iterations per stage-1 round
STEREO_TI_STEPS = 200  # textual-inversion steps of each stage-1 attack
STEREO_TI_IMAGES = 16  # fresh pool pictures per round (pool slices never overlap)
STEREO_TI_LR = 5e-3
STEREO_TI_BATCH = None  # pictures per inversion step; None: min(8, --ti-images)
STEREO_STE_LR = None  # stage 1's ESD learning rate; None: --lr, as stage 2
STEREO_OPTIMIZER = "adam"  # both stages' optimiser: adam, or adamw (the public code's, weight decay 0.01)
STEREO_REO_ITERATIONS = 300  # stage-2 iterations
STEREO_ANCHOR_SCALE = 1.0  # s_a; with s_e = 3 this is the public code's +1 anchor / -3 erase weighting
STEREO_ERASE_SCALE = 3.0  # s_e; the paper's symmetric form is s_a = s_e
STEREO_POOL_SEED = 20_000  # pool pictures use seeds STEREO_POOL_SEED + i: never the evaluation seeds
# AP, Adversarial Preservation (Bui et al. 2024): min over the model, max over the concept to preserve
AP_CANDIDATES = 64  # candidate concepts to preserve, spread out over ...
AP_VOCAB_POOL = 512  # ... the vocabulary words nearest to the concept in text-embedding space
AP_SHORTLIST = 8  # a vocabulary over 8 x pool words is first cut to 8 x pool by token-table cosine: seconds on real SD
AP_LAMBDA = 1.0  # weight of the preservation term (epsilon space, as the ESD term)
AP_TEMPERATURE = 2.0  # hard Gumbel-softmax temperature
AP_ADV_LR = 0.05  # adversary's step size on the logits pi
# DM2, Dark Miner (Meng et al. 2024): loops of mining, verifying and circumventing, LoRA on value projections.
# These defaults cost 0.88 of --schedule paper's UNet evaluations at the same robustness on van gogh (one seed,
# results/benchmark/van_gogh_dm2_paper)
DM2_RANK = 8  # LoRA rank on every attention value projection
DM2_LORA_ON = ("attn1.to_v", "attn2.to_v")  # the paper: LoRA on the attention value projections
DM2_POOL = 30  # pictures of the concept from the original model
DM2_TOKENS = 16  # L: tokens of each mined embedding
DM2_MINE_IMAGES = 3  # k: pool pictures each mining inverts
DM2_MINE_STEPS = 100
DM2_MINE_LR, DM2_MINE_LR_END, DM2_MINE_CLIP = 0.1, 0.01, 10.0
DM2_MINE_DECAY = "linear"  # mining's lr goes to DM2_MINE_LR_END linearly, or ("step") at once at ...
DM2_MINE_DECAY_AT = 0.5  # ... this fraction of the mining steps
DM2_VERIFY_IMAGES = 4  # pictures generated from a mined embedding to verify it
DM2_THRESHOLD = 0.2  # tau: stop when the verify score s(c) falls below it
DM2_CIRCUMVENT_STEPS = 300  # LoRA steps per loop: enough for circumventing to finish (docs/methods.md, DM2)
DM2_BATCH = 4  # pool pictures per circumvent step
DM2_LR = 3e-3  # LoRA learning rate
DM2_OPTIMIZER = "adam"  # circumventing's optimiser: adam, or sgd (the paper's; no momentum, none is stated)
DM2_LR_END = None  # circumventing's lr drops to this at DM2_DECAY_AT of each loop's steps (None: constant DM2_LR)
DM2_DECAY_AT = 0.8
DM2_CLIP = None  # gradient-norm clip of circumventing (None: none)
DM2_LOSS = "mean"  # circumventing's squared error: mean over latent elements, or sum (the paper's ||.||_2^2 per x_t)
DM2_ALPHA_C, DM2_ALPHA_P = 1.0, 0.5  # weights of the circumvent and preserve terms
DM2_NEWEST_PROB = 0.7  # a circumvent step uses the newest embedding with this probability, an older one otherwise
DM2_MAX_LOOPS = 10
DM2_ANCHOR = "a photo"  # c0, the paper's
DM2_ANCHOR_RULE = "auto"  # auto: c0 is DM2_ANCHOR unless the verifier cannot tell it from the concept (its ceiling,
#   the concept's own pictures scored against each other, under DM2_CEILING_BAR x tau); then the fallback with the
#   highest ceiling. The mini world's "a photo" draws purple (results/mini_v2/hard_concepts.md). Any other value of
#   --dm2-anchor is the anchor prompt itself.
DM2_ANCHOR_FALLBACKS = ("a thing", "an image", "a picture", "a drawing")  # prompts that name no concept
DM2_CEILING_BAR = 2.0  # x tau; mini world: purple 0.26 under "a photo", every other concept 0.48-0.61
DM2_INIT = "concept"  # mined tokens start from the concept's words in turn, or ("anchor") all from the word "photo":
#   mining then finds embeddings nearer the concept's own words, and circumventing them erases the plain prompts too
DM2_POOL_SEED = 30_000
# AdvUnlearn (Zhang et al. 2024): adversarial training of the text encoder (its transformer layers). Each
# iteration: K sign-gradient steps on a soft prefix that makes the erased model show the concept again, then one
# ESD step on the adversarial prompt plus gamma times a utility-retaining term on other concepts' prompts
ADVUNLEARN_PREFIX = 5  # soft prefix tokens of the adversarial prompt (as many as attack.py's UnlearnDiff uses)
ADVUNLEARN_ATTACK_STEPS = 3  # K: inner attack steps per outer iteration (the prefix is warm-started across them)
ADVUNLEARN_ATTACK_LR = 1e-3  # alpha: size of each sign-gradient step on the prefix embeddings
ADVUNLEARN_GAMMA = 0.3  # gamma: weight of the utility-retaining term (epsilon space)
# RECE (Gong et al. 2024): UCE, then rounds of: closed-form adversarial embedding c' of the edited model, UCE-erase it
RECE_ROUNDS = 3
RECE_LAMBDA = 0.1  # lambda: ridge term of c' = (sum W'^T W' + lambda I)^-1 sum W'^T W c
# --schedule paper: a method's settings as its paper or public code states them (SD v1.4 runs; the defaults above
# are the mini world's). A flag given on the command line wins over them; config.json records the result.
SCHEDULE = "default"
PAPER_SCHEDULE = {
    # DM2, Meng et al. 2024, Appendix A. Not stated there, so ours stay: the pool's size (--dm2-pool; the paper's
    # prompt is "a * photo"), the tokens per embedding L (--dm2-tokens 16; Table S4's L = 32 row scores the 12.07 of
    # the rows marked "used", a hint, not a statement), the pictures per verification, SGD's momentum (none), and a
    # cap on the loops (the paper has none: 48 loops at tau 0.2 in Table S3; --dm2-max-loops stays 10). Its loss is
    # the squared L2 norm per x_t (eqs. 7-8, dm2_loss "sum"): with the mean over the mini latent's 1,024 elements
    # instead, SGD at lr 0.01 moved the LoRA by 0.5% of what Adam's default did in one loop (docs/methods.md).
    "dm2": dict(dm2_mine_images=3, dm2_mine_steps=1000, dm2_mine_lr=0.1, dm2_mine_lr_end=0.01,
                dm2_mine_decay="step", dm2_mine_decay_at=0.5, dm2_mine_clip=10.0, dm2_threshold=0.2,
                dm2_newest_prob=0.7, dm2_circumvent_steps=1000, dm2_batch=1, dm2_optimizer="sgd", dm2_lr=0.01,
                dm2_lr_end=0.001, dm2_decay_at=0.8, dm2_clip=100.0, dm2_loss="sum", dm2_rank=8, dm2_alpha_c=1.0,
                dm2_alpha_p=0.5, dm2_anchor="a photo"),
    # STEREO, the public code (koushiksrivats/robust-concept-erasing: train.py's defaults, utils/stereo.py). Its
    # ESD target is APG's normalized_guidance(e(c), e(0), 2) = e(c) - (2 - 1)(e(c) - e(0)) = e(0), which is
    # ESD's e(0) - eta (e(c) - e(0)) at eta = 0, not 2: "negative guidance 2" counts from e(c), as its
    # compositional scale 2 does (+1 anchor, -3 erase). Stage 1: AdamW lr 5e-6 (--ste_lr 0.5e-5), x_t by DDIM
    # 50 at guidance 3, batch 1; inversion: AdamW lr 5e-3 at batch 1 on a quarter of a 500-picture gallery per
    # round (ours keeps Adam, shared with CCE and DM2's mining). Stage 2: --iterations 200 again, AdamW lr 2e-5.
    "stereo": dict(rounds=4, ste_iterations=200, ste_lr=5e-6, eta=0.0, ddim_steps=50, start_guidance=3.0, batch=1,
                   ti_steps=3000, ti_lr=5e-3, ti_images=125, ti_batch=1, reo_iterations=200, lr=2e-5,
                   stereo_optimizer="adamw", anchor_scale=1.0, erase_scale_reo=3.0),
    # AP, Bui et al. 2024: the slides (shared/papers/001_*.txt) state no number. These are the public code's
    # (tuananhbui89/Erasing-Adversarial-Preservation, train_adversarial_gumbel.py and run_imagenette.sh /
    # run_artist.sh): 1,000 iterations, Adam lr 1e-5, negative guidance 1, start guidance 3, DDIM 50, batch 1, the
    # adversary's Adam at lr 1e-2 on a hard Gumbel-softmax at temperature 2 over 100 k-means centres of the 1,000
    # tokens nearest the concept (run_nudity.sh: 50 of 2,000), one adversary step per model step, lambda 1 (no
    # weight in the code). Its two terms are in x0 space (ours: epsilon space).
    "ap": dict(iterations=1000, lr=1e-5, eta=1.0, start_guidance=3.0, ddim_steps=50, batch=1, ap_lambda=1.0,
               ap_temperature=2.0, ap_adv_lr=1e-2, ap_candidates=100, ap_vocab_pool=1000),
    # ESD, Gandikota et al. 2023, and its public code (train-scripts/train-esd.py defaults): 1,000 iterations,
    # Adam lr 1e-5, negative guidance 1, x_t by DDIM 50 at start guidance 3, one prompt a step; the mini world's
    # defaults above move its small model faster (ESD_LR)
    "esd": dict(iterations=1000, lr=1e-5, eta=1.0, start_guidance=3.0, ddim_steps=50, batch=1),
}
CHECKPOINT_EVERY = 50  # iterations between resumable checkpoints
RESUME_IGNORES = ("resume", "overwrite", "out", "device", "picture_cache", "export", "grid_seeds")  # change no weight
GRID_PROMPTS = 6  # prompts per row group in before_after.png


log, tqdm = sdlib.log, sdlib.tqdm


# ---- several concepts at once ----------------------------------------------------------------------------------
MULTI_METHODS = ("esd", "uce", "rece", "stereo", "ap", "dm2")  # --concept given more than once (AdvUnlearn: one)


def concept_words(concept):
    """The words naming each concept erased (one entry for a single concept)."""
    return [c.words for c in concept.parts] or [concept.words]


def frames_of(concept):
    """The concept's frames (--erase-prompt frames): its words in sentences that name nothing else; DataError when
    it has none (a concept file without "frames")."""
    if not concept.frames:
        raise data.DataError(f"concept {concept.name!r} has no frames (sentences naming it and nothing else) for "
                             "--erase-prompt/--uce-erase frames: give \"frames\" in its concept file, or use words")
    return concept.frames


def frame_templates(concept):
    """The frames with '{}' where the concept's words were (each part's words in its own frames): STEREO puts its
    adversarial tokens there."""
    frames_of(concept)
    return [data.template_of(f, c.words) for c in (concept.parts or [concept]) for f in c.frames]


def erase_texts_of(concept, mode):
    """ESD's erase prompts by --erase-prompt: the words alone, the frames, or the scene prompts."""
    return {"words": concept_words, "frames": frames_of, "prompts": lambda c: c.prompts}[mode](concept)


def prompt_words(concept):
    """Per prompt of concept.prompts (and templates), the words of the concept it shows."""
    return [c.words for c in concept.parts for _ in c.prompts] or [concept.words] * len(concept.prompts)


def interleaved(concept, n):
    """n prompt indices taking each concept's prompts in turn (a, b, c, a, b, c, ...), each cycling through its own:
    a pool drawn from several concepts holds all of them. One concept: 0, 1, 2, ... cycled."""
    sizes = [len(c.prompts) for c in concept.parts] or [len(concept.prompts)]
    starts = np.cumsum([0] + sizes[:-1])
    return [int(starts[i % len(sizes)] + (i // len(sizes)) % sizes[i % len(sizes)]) for i in range(n)]


def part_of(concept):
    """Per prompt index, which of the concepts (0, 1, ...) it shows."""
    return [k for k, c in enumerate(concept.parts) for _ in c.prompts] or [0] * len(concept.prompts)


# ---- ESD ---------------------------------------------------------------------------------------------------------
def esd(sd, concept, a, state):
    """ESD: fine-tune so that e'(x_t, c) = e(x_t, 0) - eta (e(x_t, c) - e(x_t, 0)) under the frozen original.

    x_t is drawn like the paper's code: DDIM-sample the model being trained (guidance 3) from noise for a random
    number k of its ddim_steps, and predict noise at the timestep it stops at."""
    resolve_for_concept(a, concept)
    params = sdlib.select_params(sd, a.train_method)
    frozen = copy.deepcopy(sd.unet).requires_grad_(False)
    opt = torch.optim.Adam(params.values(), lr=a.lr)
    start = load_checkpoint(state, sd.unet, opt)
    with torch.no_grad():
        texts = erase_texts_of(concept, a.erase_prompt)
        conds = torch.cat([sdlib.encode(sd, texts[i:i + 64]) for i in range(0, len(texts), 64)])
        uncond = sdlib.encode(sd, [""] * a.batch)
    bar = tqdm(range(start, a.iterations), desc="esd", initial=start, total=a.iterations)
    for step in bar:
        gen = step_generator(a, step)
        with torch.no_grad():
            cond = conds[torch.randint(len(conds), (a.batch,), generator=gen)]  # the step's erase prompts
            z, t = partial_ddim(sd, sd.unet, cond, uncond, a, gen)
        loss = esd_loss_at(sd, frozen, z, t, cond, uncond, a.eta)
        finish_step(state, loss, step, opt, bar, sd.unet)
    return {f"unet.{n}": p for n, p in params.items()}


def esd_loss_at(sd, frozen, z, t, cond, uncond, eta):
    """ESD's loss at (z, t): || e_theta'(z, c) - [e(z, 0) - eta (e(z, c) - e(z, 0))] ||^2, targets from frozen."""
    with torch.no_grad():
        e_0, e_c = sdlib.eps(sd, frozen, z, t, uncond), sdlib.eps(sd, frozen, z, t, cond)
    return losses.esd_loss(sdlib.eps(sd, sd.unet, z, t, cond), e_0, e_c, eta)


def step_generator(a, step, offset=0):
    """The random numbers of one training step: a function of seed and step only, so a resumed run is the same run."""
    return torch.Generator().manual_seed(a.seed * 1_000_003 + offset + step)


def partial_ddim(sd, unet, cond, uncond, a, gen):
    """x_t as ESD's code draws it: DDIM from noise under `unet` (guidance --start-guidance) for a random k of
    --ddim-steps steps; returns (x_t, t)."""
    k = int(torch.randint(a.ddim_steps, (1,), generator=gen))
    z_T = torch.randn((a.batch, *sd.latent_shape), generator=gen).to(sd.device, sd.dtype)
    return sdlib.ddim(sd, unet, z_T, cond, uncond, a.start_guidance, a.ddim_steps, stop_at=k)


def finish_step(state, loss, step, opt, bar, module):
    """Backward and step (or stop on a non-finite loss), show the loss, checkpoint module's trained tensors (none
    when module is None)."""
    step_or_stop(state, loss, step, opt)
    bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    if module is not None:
        save_checkpoint(state, step, module, opt)


# ---- STEREO ------------------------------------------------------------------------------------------------------
def run_embeddings(run_dir, method, concept_name=None, what=""):
    """(config.json, the tensors of embeddings.safetensors) of a finished erase.py run of `method` (and of
    `concept_name` if given); one line and exit otherwise. `what` starts the message (the flag that named it)."""
    where = f"{what} {run_dir}".strip()
    try:
        cfg = sdlib.read_run_config(run_dir)
        from safetensors.torch import load_file
        emb = load_file(os.path.join(run_dir, "embeddings.safetensors"))
    except (OSError, ValueError, sdlib.LoadError) as e:
        sdlib.fail(f"{where}: not a finished erase.py run ({e})")
    if cfg.get("method") != method or concept_name not in (None, cfg.get("concept")):
        sdlib.fail(f"{where} is a {cfg.get('method')!r} run erasing {cfg.get('concept')!r}; it must be a {method} "
                   "run" + (f" erasing {concept_name!r}" if concept_name else ""))
    return cfg, emb


def stereo_tokens_of(run_dir, concept, rounds):
    """The adversarial tokens {'<stereoK>': (D,)} a finished STEREO run of the same concept collected in stage 1,
    in round order; fails unless there is one per round."""
    _, emb = run_embeddings(run_dir, "stereo", concept.name, "--stereo-tokens")
    tokens = {k.split(".", 1)[1]: v for k, v in emb.items() if k.startswith("adversarial.<stereo")}
    tokens = dict(sorted(tokens.items(), key=lambda kv: int(kv[0][len("<stereo"):-1])))
    if len(tokens) != rounds:
        sdlib.fail(f"--stereo-tokens {run_dir} holds {len(tokens)} adversarial tokens; --rounds is {rounds}")
    return tokens


def stereo(sd, concept, a, state):
    """STEREO. Stage 1, Search Thoroughly Enough: for K rounds, erase ESD-style (the concept in round 0, then the
    newest adversarial token), attack the erased model by textual inversion on a fresh slice of the concept's
    picture pool, keep the learned token. Stage 2, Robustly Erase Once: restart from the original UNet and erase
    the concept and every token at once with e* = e(0) + s_a (e(anchor) - e(0)) - s_e (e(p) - e(0))."""
    resolve_for_concept(a, concept)
    params = sdlib.select_params(sd, a.train_method)
    original = {n: p.detach().clone() for n, p in params.items()}
    frozen = copy.deepcopy(sd.unet).requires_grad_(False)
    rounds_path = os.path.join(state["dir"], "stereo_rounds.pt")
    tokens, done = {}, 0
    if os.path.exists(rounds_path):  # resume: completed stage-1 rounds are kept
        ck = checkpoint.read(rounds_path, state.get("settings"))
        tokens, done = ck["tokens"], ck["rounds_done"]
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(ck["params"][n])
        log(f"stereo: resumed after {done} of {a.rounds} stage-1 rounds")
    elif a.stereo_tokens:  # stage 1 done elsewhere: a finished STEREO run's tokens, stage 2 alone here
        tokens, done = stereo_tokens_of(a.stereo_tokens, concept, a.rounds), a.rounds
        log(f"stereo: stage 1 skipped, {len(tokens)} adversarial tokens from {a.stereo_tokens}")
    ids = dict(zip(tokens, sdlib.add_tokens(sd, list(tokens)))) if tokens else {}
    n_pool = a.rounds * a.ti_images
    pool_idx = interleaved(concept, n_pool)  # several concepts: each one's prompts in turn
    pool_templates = [concept.templates[i] for i in pool_idx]
    words_of = prompt_words(concept)
    if done < a.rounds:  # the pool: the original model's pictures of the concept
        pool = image_latents(sd, sdlib.generate(
            sd, [concept.templates[i].format(words_of[i]) for i in pool_idx],
            [STEREO_POOL_SEED + i for i in range(n_pool)]))

    def inject():
        return {ids[n]: v for n, v in tokens.items()}

    frames = frame_templates(concept) if a.erase_prompt == "frames" else None

    def erase_texts(word, idx):  # --erase-prompt words: the concept's words or the token alone, as in the paper;
        if a.erase_prompt == "words":  # frames: them in a sentence naming nothing else; prompts: a scene with them
            return [word] * len(idx)
        if frames is not None:
            return [frames[i % len(frames)].format(word) for i in idx]
        return [concept.templates[i].format(word) for i in idx]

    with torch.no_grad():
        uncond = sdlib.encode(sd, [""] * a.batch)
    for r in range(done, a.rounds):
        # the concept (several: each in turn, step by step), then the newest adversarial token
        words_of_step = concept_words(concept) if r == 0 else [list(tokens)[-1]]
        opt = stereo_optimizer(params.values(), a, a.lr if a.ste_lr is None else a.ste_lr)
        bar = tqdm(range(a.ste_iterations), desc=f"stereo STE round {r + 1}/{a.rounds}: erase")
        for step in bar:
            gen = step_generator(a, step, offset=(r + 1) * 1_000_000)
            with torch.no_grad():
                idx = torch.randint(len(concept.templates), (a.batch,), generator=gen).tolist()
                cond = sdlib.encode(sd, erase_texts(words_of_step[step % len(words_of_step)], idx), inject())
                z, t = partial_ddim(sd, sd.unet, cond, uncond, a, gen)
            loss = esd_loss_at(sd, frozen, z, t, cond, uncond, a.eta)
            finish_step(state, loss, step, opt, bar, None)  # no mid-round checkpoints: a round reruns whole
        name = f"<stereo{r}>"
        sl = slice(r * a.ti_images, (r + 1) * a.ti_images)
        learned = textual_inversion(sd, pool[sl], pool_templates[sl], [name], "style", a.ti_steps, a.ti_lr,
                                    a.ti_batch or min(8, a.ti_images), a.seed + r,
                                    desc=f"stereo STE round {r + 1}: attack")
        tokens[name] = learned[name]
        ids[name] = sdlib.add_tokens(sd, [name])[0]
        checkpoint.write(rounds_path, {"tokens": tokens, "rounds_done": r + 1, "settings": state.get("settings"),
                                       "params": {n: p.detach() for n, p in params.items()}})
        record_cost(state)
    # stage 2: from the original weights, the concept and all adversarial tokens at once
    opt = stereo_optimizer(params.values(), a, a.lr)
    start = load_checkpoint(state, sd.unet, opt)
    if start == 0:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(original[n])
    erase_words = concept_words(concept) + list(tokens)  # erased in turn: the concept(s) and each adversarial token
    bar = tqdm(range(start, a.reo_iterations), desc="stereo REO", initial=start, total=a.reo_iterations)
    for step in bar:
        gen = step_generator(a, step, offset=50_000_000)
        with torch.no_grad():
            idx = torch.randint(len(concept.templates), (a.batch,), generator=gen).tolist()
            anchors = [concept.scene_anchors[i][int(torch.randint(len(concept.scene_anchors[i]), (1,),
                                                                  generator=gen))] for i in idx]
            anchor = sdlib.encode(sd, anchors)
            cond = sdlib.encode(sd, erase_texts(erase_words[step % len(erase_words)], idx), inject())
            z, t = partial_ddim(sd, sd.unet, cond, uncond, a, gen)
            # e* = e(0) + s_a (e(anchor) - e(0)) - s_e (e(p) - e(0)), all from the original model
            target = losses.stereo_reo_target(sdlib.eps(sd, frozen, z, t, uncond), [sdlib.eps(sd, frozen, z, t, anchor)],
                                              [sdlib.eps(sd, frozen, z, t, cond)], a.anchor_scale, a.erase_scale_reo)
        loss = torch.nn.functional.mse_loss(sdlib.eps(sd, sd.unet, z, t, cond), target)
        finish_step(state, loss, step, opt, bar, sd.unet)
    state["extra_tensors"] = {f"adversarial.{n}": v for n, v in tokens.items()}
    return {f"unet.{n}": p for n, p in params.items()}


def stereo_optimizer(params, a, lr):
    """Adam (the default), or AdamW at torch's weight decay 0.01 (--stereo-optimizer adamw: the public code's)."""
    return (torch.optim.AdamW if a.stereo_optimizer == "adamw" else torch.optim.Adam)(params, lr=lr)


# ---- AP ----------------------------------------------------------------------------------------------------------
def vocabulary_words(sd):
    """Whole-word vocabulary tokens ('monet</w>' -> 'monet') made of letters, at least 3 long."""
    return sorted({t[:-4] for t in sd.tokenizer.get_vocab() if t.endswith("</w>") and t[:-4].isalpha()
                   and len(t) >= 7})


def ap_candidates(sd, concept, n_candidates, pool):
    """Words nearest to the concept (cosine of pooled text embeddings), then a spread-out subset of them chosen
    greedily by farthest-point sampling, so the adversary searches many directions, not one cluster. Real SD: any
    whole word of the tokenizer. The mini world: only its captions' words (its text encoder never learned the
    others, so their embeddings are noise), without the concept's own names and synonyms ('vincent')."""
    parts = concept.parts or [concept]
    own = {w for c in parts for w in c.words.split()}
    words = [w for w in vocabulary_words(sd) if w not in own]
    if sd.world == "mini" and all(c.value in data.NAMES for c in parts):
        known = set(data.mini_vocabulary())
        for c in parts:  # none of the erased concepts' own names and synonyms
            known -= set(data.own_words(c.value))
        words = [w for w in words if w in known]
    if not words:
        sdlib.fail(f"ap: no candidate concepts to preserve for {concept.name!r} (the vocabulary filter left none)")
    with torch.no_grad():
        def pooled(texts):
            out = []
            for i in range(0, len(texts), 1024):
                sd.counts["text_encoder"] += len(texts[i:i + 1024])
                out.append(sd.text_encoder(sdlib.tokenize(sd, texts[i:i + 1024])).pooler_output.float())
            return torch.nn.functional.normalize(torch.cat(out), dim=-1)
        if len(words) > AP_SHORTLIST * pool:  # real SD's 32,607 words: shortlist by the token table, encode only those
            table = sd.text_encoder.get_input_embeddings().weight.float()
            ids = sd.tokenizer(words + concept_words(concept), add_special_tokens=False).input_ids
            vecs = torch.nn.functional.normalize(torch.stack([table[i].mean(0) for i in ids]), dim=-1)
            n_c = len(concept_words(concept))  # nearest to any of the concepts
            near_any = (vecs[:-n_c] @ vecs[-n_c:].T).max(1).values
            keep = near_any.topk(AP_SHORTLIST * pool).indices.sort().values
            words = [words[i] for i in keep.tolist()]
        vocab = pooled(words)  # (W, D)
        target = pooled(concept_words(concept))  # (n concepts, D)
        near = (vocab @ target.T).max(1).values.topk(min(pool, len(words))).indices  # nearest to any of them
        chosen = [int(near[0])]
        dist = 1 - vocab[near] @ vocab[near[0]]
        while len(chosen) < min(n_candidates, len(near)):
            j = int(dist.argmax())
            chosen.append(int(near[j]))
            dist = torch.minimum(dist, 1 - vocab[near] @ vocab[near[j]])
    return [words[i] for i in chosen]


def gumbel_softmax_hard(logits, tau, gen):
    """A hard Gumbel-softmax sample: one-hot forward, the softmax's gradient backward (straight-through). The noise
    comes from gen, the step's generator, so that a resumed run draws what an uninterrupted one does."""
    u = torch.rand(logits.shape, generator=gen).clamp_(1e-10, 1.0).to(logits.device)
    soft = torch.softmax((logits - torch.log(-torch.log(u))) / tau, dim=-1)
    hard = torch.nn.functional.one_hot(soft.argmax(-1), len(soft)).to(soft)
    return hard - soft.detach() + soft


def ap_adversary_step(pi, opt_pi, cand, preservation_fn, tau, gen):
    """One ascent step of the adversary: c_a = sum_i g_i cand_i with g a hard Gumbel-softmax sample of pi
    (one-hot forward, soft gradient), pi moved to increase preservation_fn(c_a). cand: (C, B, 77, D)."""
    g = gumbel_softmax_hard(pi, tau, gen)
    loss = -preservation_fn(torch.einsum("c,cbld->bld", g, cand))
    opt_pi.zero_grad(set_to_none=True)
    loss.backward()
    opt_pi.step()


def ap(sd, concept, a, state):
    """AP: min_theta' max_pi  ESD(c_e) + lambda || e_theta'(x_t, c_a) - e_theta(x_t, c_a) ||^2, with c_a drawn from
    the candidates by a hard Gumbel-softmax over logits pi (straight-through). Each step: one adversary ascent
    step on pi, then one model step. Both terms are in epsilon space."""
    resolve_for_concept(a, concept)
    params = sdlib.select_params(sd, a.train_method)
    frozen = copy.deepcopy(sd.unet).requires_grad_(False)
    opt = torch.optim.Adam(params.values(), lr=a.lr)
    start = load_checkpoint(state, sd.unet, opt)
    candidates = ap_candidates(sd, concept, a.ap_candidates, a.ap_vocab_pool)
    print(f"ap: {len(candidates)} candidate concepts, e.g. {', '.join(candidates[:8])}")
    pi = torch.zeros(len(candidates), device=sd.device, requires_grad=True)  # logits over candidates
    if "pi" in state.get("resumed", {}):
        pi.data.copy_(state["resumed"]["pi"])
    opt_pi = torch.optim.Adam([pi], lr=a.ap_adv_lr)
    if "opt_pi" in state.get("resumed", {}):
        opt_pi.load_state_dict(state["resumed"]["opt_pi"])
    state["resume_tensors"] = {"pi": pi, "opt_pi": opt_pi}  # the adversary's logits and its optimiser

    def preservation(z, t, c_a):  # AP's term: the trained model's prediction for c_a stays the original's
        return torch.nn.functional.mse_loss(sdlib.eps(sd, sd.unet, z, t, c_a), sdlib.eps(sd, frozen, z, t, c_a))

    with torch.no_grad():
        uncond = sdlib.encode(sd, [""] * a.batch)
    words_of = prompt_words(concept)  # per template, the words of its concept
    bar = tqdm(range(start, a.iterations), desc="ap", initial=start, total=a.iterations)
    for step in bar:
        gen = step_generator(a, step)
        with torch.no_grad():
            idx = torch.randint(len(concept.templates), (a.batch,), generator=gen).tolist()  # the step's scenes
            cond = sdlib.encode(sd, [concept.templates[i].format(words_of[i]) for i in idx])
            z, t = partial_ddim(sd, sd.unet, cond, uncond, a, gen)
            cand = torch.stack([sdlib.encode(sd, [concept.templates[i].format(w) for i in idx])
                                for w in candidates])  # every candidate in these scenes: (C, B, 77, D)
        # max over pi: one ascent step of the adversary on the preservation term
        ap_adversary_step(pi, opt_pi, cand, lambda c_a: preservation(z, t, c_a), a.ap_temperature, gen)
        opt.zero_grad(set_to_none=True)  # the adversary's backward pass also reached the model: discard that
        with torch.no_grad():  # the concept to preserve this step: a hard Gumbel-softmax draw from pi
            g = gumbel_softmax_hard(pi, a.ap_temperature, gen)
            c_a = torch.einsum("c,cbld->bld", g, cand)
            state["preserved"] = candidates[int(g.argmax())]
        # min over the model: ESD on the concept plus lambda times the preservation of c_a
        loss = esd_loss_at(sd, frozen, z, t, cond, uncond, a.eta) + a.ap_lambda * preservation(z, t, c_a)
        finish_step(state, loss, step, opt, bar, sd.unet)
    top = pi.detach().softmax(0).topk(min(5, len(candidates)))
    print("ap: adversary's favourite concepts to preserve: " +
          ", ".join(f"{candidates[i]} ({p:.2f})" for p, i in zip(top.values.tolist(), top.indices.tolist())))
    state["extra_json"] = {"ap_candidates": candidates, "ap_pi": pi.detach().tolist()}
    return {f"unet.{n}": p for n, p in params.items()}


# ---- DM2 ---------------------------------------------------------------------------------------------------------
def verify_score(f_mined, f_reference, f_concept):
    """DM2's verification s(c): the mean over pairs (i, j) of cos(f(x_c,i) - f_r, f(x_e,j) - f_r), f_r the mean
    feature of the reference pictures x_r ('a photo'), x_c pictures drawn from the mined embedding, x_e the pool
    pictures it was mined on. Features (N, F)."""
    ref = f_reference.mean(0)
    c = torch.nn.functional.normalize(f_mined - ref, dim=-1)
    e = torch.nn.functional.normalize(f_concept - ref, dim=-1)
    return float((c @ e.T).mean())


def verify_ceiling(f_concept, f_reference):
    """What the verification can see: s(c) of one half of the pool pictures against the other half, the score of a
    mined embedding that drew the concept as the original model does. Near tau, DM2 stops on its first loop."""
    half = len(f_concept) // 2
    return verify_score(f_concept[:half], f_reference, f_concept[half:]) if half else float("nan")


def dm2_pool(sd, concept, n):
    """DM2's pool: n pictures of the concept's prompts (several concepts: each one's in turn) from the model as it is,
    picture i from seed DM2_POOL_SEED + i. Returns (the prompt index of each picture, the pictures)."""
    idx = interleaved(concept, n)
    return idx, sdlib.generate(sd, [concept.prompts[i] for i in idx], [DM2_POOL_SEED + i for i in range(n)],
                               progress=False)


def dm2_anchor_pictures(sd, prompt, n):
    """n pictures of the anchor prompt c0, from seeds just below the pool's: the verifier's reference."""
    return sdlib.generate(sd, [prompt] * n, [DM2_POOL_SEED - 1 - i for i in range(n)], progress=False)


def choose_anchor(candidates, ceiling_of, bar):
    """DM2's c0 under --dm2-anchor auto: the first candidate whose verifier ceiling reaches bar, else the one with the
    highest ceiling. ceiling_of(prompt) -> float is called in order, and only as far as needed. Returns (prompt,
    {prompt: ceiling} of those tried)."""
    tried = {}
    for prompt in candidates:
        tried[prompt] = ceiling_of(prompt)
        if tried[prompt] >= bar:
            return prompt, tried
    return max(tried, key=tried.get), tried


def dm2(sd, concept, a, state):
    """DM2: repeat (a) mine an embedding of L tokens by textual inversion on k pool pictures against the current
    model, (b) verify it: generate from it and stop when its features no longer point toward the concept
    (s(c) < tau), (c) circumvent: train LoRA so that e_theta(x_t | c) matches the original's e(x_t | c0) while
    c0, 0*c and -c keep their original predictions. Features: the mini judge's (mini world)."""
    frozen = copy.deepcopy(sd.unet).requires_grad_(False)
    sd.unet.requires_grad_(False)
    wrapped = lora.inject(sd.unet, lambda n: n.endswith(DM2_LORA_ON), r=a.dm2_rank)
    lora_params = [p for layer in wrapped.values() for p in (layer.lora_A, layer.lora_B)]
    print(f"dm2: LoRA rank {a.dm2_rank} on {len(wrapped)} value projections, "
          f"{sum(p.numel() for p in lora_params):,} parameters")
    opt = dm2_optimizer(lora_params, a)
    if sd.world == "mini":  # Enc: the mini judge's features, or CLIP's image encoder
        encoder_name = "mini judge penultimate features"
        def enc(x): return torch.from_numpy(judges.judge_features(x, a.mini_dir)).float()  # noqa: E306
    else:
        try:  # before any picture is drawn: missing CLIP weights are one line, not a traceback after minutes
            clip = judges.ClipJudge(concept.name, [], a.clip_arch, a.clip_weights)
        except data.DataError as e:
            sdlib.fail(f"dm2 verifies with CLIP's image encoder: {e}")
        encoder_name = f"open_clip {a.clip_arch} image encoder ({a.clip_weights})"
        def enc(x): return clip.image_features(x).float()  # noqa: E306
    pool_idx, pool_images = dm2_pool(sd, concept, a.dm2_pool)
    pool_part = torch.tensor(part_of(concept))[pool_idx]  # which concept each pool picture shows
    pool = image_latents(sd, pool_images)
    f_concept = enc(pool_images)
    references = {}  # anchor prompt -> features of its pictures

    def ceiling_of(prompt):
        references[prompt] = enc(dm2_anchor_pictures(sd, prompt, a.dm2_verify_images))
        return verify_ceiling(f_concept, references[prompt])

    bar = DM2_CEILING_BAR * a.dm2_threshold
    if a.dm2_anchor == "auto":
        anchor, tried = choose_anchor([DM2_ANCHOR, *DM2_ANCHOR_FALLBACKS], ceiling_of, bar)
    else:
        anchor, tried = a.dm2_anchor, {a.dm2_anchor: ceiling_of(a.dm2_anchor)}
    f_ref, ceiling = references[anchor], tried[anchor]
    log(f"dm2: anchor c0 = {anchor!r}; the concept's own pictures score s = {ceiling:.3f} against each other under it "
        f"(threshold {a.dm2_threshold})" + (f"; tried {', '.join(f'{k!r} {v:.3f}' for k, v in tried.items())}"
                                            if len(tried) > 1 else ""))
    if ceiling < bar:
        log(f"dm2: warning: the anchor {anchor!r} looks like {concept.name!r} to the verifier; a mined embedding "
            "that draws the concept may score under the threshold, and DM2 stop before erasing it")
    mined, loop = [], 0
    loops_path = os.path.join(state["dir"], "dm2_loops.pt")
    if os.path.exists(loops_path):  # resume after the last completed loop
        ck = checkpoint.read(loops_path, state.get("settings"))
        lora.load_lora_state_dict(wrapped, ck["lora"])
        opt.load_state_dict(ck["opt"])
        mined, loop, state["log"] = list(ck["mined"]), ck["loop"], ck["log"]
        log(f"dm2: resumed after loop {loop}")
    names = [f"<dm{i}>" for i in range(a.dm2_tokens)]
    ids = sdlib.add_tokens(sd, names)
    acp = sd.scheduler.alphas_cumprod.to(sd.device)
    c0 = sdlib.encode(sd, [anchor])
    scores = [r["verify_score"] for r in state["log"] if "verify_score" in r]
    prompt = " ".join(names)  # the mined tokens are the whole prompt
    conds = {}  # mined index -> its (c, 0*c, -c); the text encoder is frozen, so each is encoded once

    def mined_conds(j, b):  # c, 0*c and -c of mined embedding j, each (b, 77, D)
        if j not in conds:
            with torch.no_grad():
                conds[j] = [sdlib.encode(sd, [prompt], dict(zip(ids, s * mined[j]))) for s in (1.0, 0.0, -1.0)]
        return [x.expand(b, -1, -1) for x in conds[j]]

    def verify(vecs, pick):  # s(c) of pictures drawn from vecs against the pool pictures it was mined on
        x = sdlib.generate(sd, [prompt] * a.dm2_verify_images, list(range(a.dm2_verify_images)),
                           inject=dict(zip(ids, vecs)), progress=False)
        return verify_score(enc(x), f_ref, f_concept[pick])

    parts_words = concept_words(concept)
    while loop < a.dm2_max_loops:
        # several concepts: loops take the concepts still reachable in turn; one whose mined embedding verifies
        # below the threshold is done, and the run ends when every one is
        done = {r.get("part", 0) for r in state["log"] if "verify_score" in r and r["verify_score"] < a.dm2_threshold}
        active = [k for k in range(len(parts_words)) if k not in done]
        if not active:
            break
        part = active[sum(1 for r in state["log"] if "verify_score" in r) % len(active)]
        gen = torch.Generator().manual_seed(a.seed * 7919 + loop)
        mine_from = torch.nonzero(pool_part == part).flatten()  # that concept's pool pictures
        pick = mine_from[torch.randperm(len(mine_from), generator=gen)[:a.dm2_mine_images]]
        init = anchor.split()[-1] if a.dm2_init == "anchor" and anchor.strip() else parts_words[part]
        learned = textual_inversion(sd, pool[pick], ["{}"] * len(pick), names, init,
                                           a.dm2_mine_steps, a.dm2_mine_lr, len(pick), a.seed + loop,
                                           desc=f"dm2 loop {loop + 1}: mine", lr_end=a.dm2_mine_lr_end,
                                           clip=a.dm2_mine_clip, decay=a.dm2_mine_decay,
                                           decay_at=a.dm2_mine_decay_at)
        vecs = torch.stack([learned[n] for n in names])  # (L, D)
        score = verify(vecs, pick)
        scores.append(score)
        verify_row = {"step": loop, "verify_score": round(score, 4), **({"part": part} if len(parts_words) > 1 else {})}
        state["log"].append(verify_row)
        log(f"dm2 loop {loop + 1}: verify score s(c) = {score:.3f} (threshold {a.dm2_threshold})"
            + (f" for {concept.parts[part].name!r}" if len(parts_words) > 1 else ""))
        if score < a.dm2_threshold:
            if len(active) == 1:
                break
            continue  # this concept is done; the next loop mines another
        mined.append(vecs)
        for step in tqdm(range(a.dm2_circumvent_steps), desc=f"dm2 loop {loop + 1}: circumvent"):
            use_newest = torch.rand(1, generator=gen).item() < a.dm2_newest_prob or len(mined) == 1
            j = len(mined) - 1 if use_newest else int(torch.randint(len(mined) - 1, (1,), generator=gen))
            b = a.dm2_batch  # x_t per step: pool pictures, each noised to its own timestep
            i = torch.randint(len(pool), (b,), generator=gen)
            t = torch.randint(0, len(acp), (b,), generator=gen).to(sd.device)
            noise = torch.randn(pool[i].shape, generator=gen).to(pool)
            z = sdlib.add_noise(sd, pool[i], noise, t)
            c, zero_c, neg_c = mined_conds(j, b)  # the mined tokens scaled by 1, 0 and -1
            with torch.no_grad():  # the original model's predictions for c0 (the anchor), 0*c and -c at the same x_t
                kept = torch.cat([c0.expand(b, -1, -1), zero_c, neg_c])  # (3 b, 77, D)
                zk = z.repeat(3, 1, 1, 1)
                target = sdlib.eps(sd, frozen, zk, t.repeat(3), kept)
            # one call of the trained model: c (circumvent: should predict what the original does for c0), then
            # the preserve terms (c0, 0*c, -c: should predict what the original does for each of them)
            pred = sdlib.eps(sd, sd.unet, torch.cat([z, zk]), t.repeat(4), torch.cat([c, kept]))
            circumvent = losses.dm2_squared_error(pred[:b], target[:b], a.dm2_loss)
            preserve = 3 * losses.dm2_squared_error(pred[b:], target, a.dm2_loss)  # the three terms' sum
            loss = a.dm2_alpha_c * circumvent + a.dm2_alpha_p * preserve
            if a.dm2_lr_end is not None:  # the step's rate: DM2_LR, then DM2_LR_END from DM2_DECAY_AT on
                for group in opt.param_groups:
                    group["lr"] = dm2_circumvent_lr(a, step)
            step_or_stop(state, loss, loop * a.dm2_circumvent_steps + step, opt, clip=a.dm2_clip)
        after = verify(vecs, pick)  # did circumventing work? the same check on the same embedding, now
        verify_row["verify_score_after"] = round(after, 4)
        log(f"dm2 loop {loop + 1}: after circumventing, the same embedding scores {after:.3f}")
        loop += 1
        checkpoint.write(loops_path, {"lora": lora.lora_state_dict(wrapped), "opt": opt.state_dict(), "mined": mined,
                                      "loop": loop, "log": state["log"], "settings": state.get("settings")})
        record_cost(state)
    changed = {f"lora.unet.{k}": v.clone() for k, v in lora.lora_state_dict(wrapped).items()}
    scaling = next(iter(wrapped.values())).scaling
    lora.merge_all(wrapped)  # fold the update into the weights and put the plain layers back
    for name, layer in wrapped.items():
        parent, _, child = name.rpartition(".")
        setattr(sd.unet.get_submodule(parent), child, layer.base)
    state["extra_json"] = {"lora": {"r": a.dm2_rank, "alpha": float(a.dm2_rank), "scaling": scaling},
                           "dm2_loops": loop, "dm2_verify_scores": scores,
                           "dm2_verify_scores_after": [r["verify_score_after"] for r in state["log"]
                                                       if "verify_score_after" in r],
                           "dm2_features": encoder_name, "dm2_anchor": anchor,
                           "dm2_verify_ceiling": round(ceiling, 4)}
    state["extra_tensors"] = {f"mined.{i}": v for i, v in enumerate(mined)}
    return changed


def dm2_optimizer(params, a):
    """Circumventing's optimiser: Adam (the default), or SGD without momentum (--dm2-optimizer sgd, the paper's)."""
    if a.dm2_optimizer == "sgd":
        return torch.optim.SGD(params, lr=a.dm2_lr)
    return torch.optim.Adam(params, lr=a.dm2_lr)


def dm2_circumvent_lr(a, step):
    """The learning rate of circumvent step `step` (0-based, each loop anew): --dm2-lr, then --dm2-lr-end from
    step round(--dm2-decay-at x --dm2-circumvent-steps) on (constant when --dm2-lr-end is not given)."""
    return scheduled_lr(a.dm2_lr, a.dm2_lr_end, step, a.dm2_circumvent_steps, "step", a.dm2_decay_at)


# ---- AdvUnlearn --------------------------------------------------------------------------------------------------
def advunlearn(sd, concept, a, state):
    """AdvUnlearn: min over the text encoder of ESD(c*) + gamma E_{c ~ C_retain} ||e_theta(x_t, c) - e_orig(x_t, c)||^2
    (losses.advunlearn_loss), c* = [p; c] the step's concept prompt behind a soft prefix p of token embeddings that
    the inner attack sets by K sign-gradient steps on ||e_theta(x_t, [p; c]) - e_orig(x_t, c)||^2 (the erased
    model shows the concept again), warm-started from the previous iteration's p. The UNet stays frozen; every
    target (ESD's e(0) and e(c), the retain term's) comes from the original text encoder and UNet."""
    a.train_method = "text-encoder"  # recorded in config.json: AdvUnlearn always trains the text encoder
    resolve_for_concept(a, concept)  # its learning rate: the text encoder's
    # the original model: a frozen copy of the text encoder; shares the UNet, tokenizer and evaluation counters
    orig = dataclasses.replace(sd, text_encoder=copy.deepcopy(sd.text_encoder).requires_grad_(False))
    params = sdlib.select_params(sd, "text-encoder")
    opt = torch.optim.Adam(params.values(), lr=a.lr)
    start = load_checkpoint(state, sd.text_encoder, opt)
    names = [f"<advunlearn{i}>" for i in range(a.advunlearn_prefix)]
    ids = sdlib.add_tokens(sd, names)
    init = torch.randint(sd.tokenizer.bos_token_id, (len(names),), generator=torch.Generator().manual_seed(a.seed))
    prefix = sd.text_encoder.get_input_embeddings().weight[init.to(sd.device)].detach().clone()  # (k, D)
    if "prefix" in state.get("resumed", {}):
        prefix.copy_(state["resumed"]["prefix"])
    state["resume_tensors"] = {"prefix": prefix}
    mse = torch.nn.functional.mse_loss
    # x_t is drawn on the original model's view: its unconditional embedding (x_t's guidance, ESD's e(0)) is the
    # original encoder's, the same in a resumed run; the trained encoder enters through the step's prompts
    with torch.no_grad():
        uncond = sdlib.encode(orig, [""] * a.batch)
    bar = tqdm(range(start, a.iterations), desc="advunlearn", initial=start, total=a.iterations)
    for step in bar:
        gen = step_generator(a, step)
        with torch.no_grad():  # the step's concept and retain prompts; x_t is sampled under the trained encoder's c
            pick = torch.randint(len(concept.prompts), (a.batch,), generator=gen).tolist()
            keep = torch.randint(len(concept.other_prompts), (a.batch,), generator=gen).tolist()
            erase_prompts = [concept.prompts[i] for i in pick]
            retain = [concept.other_prompts[i] for i in keep]
            cond = sdlib.encode(sd, erase_prompts)
            z, t = partial_ddim(orig, orig.unet, cond, uncond, a, gen)
        adv_prompts = [" ".join(names) + " " + p for p in erase_prompts]
        with torch.no_grad():  # the original model's e(0) and e(c), and its prediction for the retain prompts
            e_0 = sdlib.eps(sd, sd.unet, z, t, uncond)
            e_c = sdlib.eps(sd, sd.unet, z, t, sdlib.encode(orig, erase_prompts))
            e_r_orig = sdlib.eps(sd, sd.unet, z, t, sdlib.encode(orig, retain))
        for _ in range(a.advunlearn_attack_steps):  # the inner attack: K sign-gradient steps on the prefix
            p = prefix.clone().requires_grad_(True)
            attack_loss = mse(sdlib.eps(sd, sd.unet, z, t, sdlib.encode(sd, adv_prompts, dict(zip(ids, p)))), e_c)
            grad, = torch.autograd.grad(attack_loss, p)  # reaches the prefix only, not the encoder's weights
            prefix.sub_(a.advunlearn_attack_lr * grad.sign())  # in place: the checkpoint holds this tensor
        state["log_extra"] = {"attack_loss": round(attack_loss.item(), 6)}  # at the last inner step
        e_adv = sdlib.eps(sd, sd.unet, z, t, sdlib.encode(sd, adv_prompts, dict(zip(ids, prefix))))
        e_r = sdlib.eps(sd, sd.unet, z, t, sdlib.encode(sd, retain))
        loss = losses.advunlearn_loss(e_adv, e_0, e_c, a.eta, e_r, e_r_orig, a.advunlearn_gamma)
        finish_step(state, loss, step, opt, bar, sd.text_encoder)
    state["extra_tensors"] = {f"adversarial.{n}": v for n, v in zip(names, prefix)}  # the last adversarial prefix
    return {f"text_encoder.{n}": p for n, p in params.items()}


# ---- UCE ---------------------------------------------------------------------------------------------------------
def last_token_onward(sd, prompts):
    """Text embeddings from each prompt's last real token to the end of the 77 positions, as UCE uses them.

    Returns a list of (L_i, D) tensors; causal attention puts the whole prompt's content in these positions."""
    ids = sdlib.tokenize(sd, prompts)
    emb = torch.cat([sdlib.encode(sd, prompts[i:i + 64]) for i in range(0, len(prompts), 64)])
    eos = sd.tokenizer.eos_token_id
    out = []
    for row, e in zip(ids, emb):
        last = int((row == eos).nonzero()[0]) - 1  # position of the last token before the first end-of-text
        out.append(e[max(last, 1):])
    return out


def uce_columns(sd, concept, a):
    """UCE's columns: erased-concept embeddings c_e (E, D), their guides c_g (E, D) position by position, and
    preserved embeddings c_p (P, D) of a seeded draw of other concepts' prompts (None with --preserve 0)."""
    if a.uce_erase == "prompts":
        texts, guides = concept.prompts, concept.guides
    else:  # words or frames: toward the unconditional, as the public code's default
        texts = erase_texts_of(concept, a.uce_erase)
        guides = [""] * len(texts)
    with torch.no_grad():
        erase = last_token_onward(sd, texts)
        guide = last_token_onward(sd, guides)
        pairs = [(e[:min(len(e), len(g))], g[:min(len(e), len(g))]) for e, g in zip(erase, guide)]
        c_e = torch.cat([e for e, _ in pairs])  # (E, D) erased-concept columns
        c_g = torch.cat([g for _, g in pairs])  # (E, D) their guides, position by position
        rng = np.random.default_rng(a.seed)
        keep = list(rng.choice(len(concept.other_prompts), min(a.preserve, len(concept.other_prompts)),
                               replace=False)) if a.preserve else []
        c_p = torch.cat(last_token_onward(sd, [concept.other_prompts[i] for i in keep])) if keep else None
    return c_e, c_g, c_p


def cross_attention_kv(sd):
    """{name: weight} of every cross-attention key and value projection: what UCE and RECE edit."""
    params = {n: p for n, p in sd.unet.named_parameters() if "attn2.to_k.weight" in n or "attn2.to_v.weight" in n}
    if not params:
        raise ValueError("UCE found no cross-attention key/value projections (attn2.to_k / attn2.to_v) in the UNet")
    return params


def uce(sd, concept, a, state, columns=None):
    """UCE: W = (lam W0 + sum_e v*_e c_e^T + sum_p W0 c_p c_p^T)(lam I + sum_e c_e c_e^T + sum_p c_p c_p^T)^-1
    for every cross-attention key and value projection, with v*_e = W0 c_guide (losses.uce_closed_form)."""
    c_e, c_g, c_p = columns or uce_columns(sd, concept, a)
    params = cross_attention_kv(sd)
    changed = {}
    for n, p in tqdm(params.items(), desc="uce"):
        w0 = p.detach()
        v_target = c_g @ w0.T  # (E, out): v* = W0 c_guide
        w = losses.uce_closed_form(w0, c_e, v_target, c_p, a.uce_lambda, a.erase_scale, a.preserve_scale)
        with torch.no_grad():
            p.copy_(w.to(w0.dtype))
        changed[f"unet.{n}"] = p
    state["log"].append({"step": 0, "loss": float("nan"), "columns_erase": len(c_e),
                         "columns_preserve": 0 if c_p is None else len(c_p)})
    print(f"uce: edited {len(params)} projections with {len(c_e)} erase and "
          f"{0 if c_p is None else len(c_p)} preserve columns")
    return changed


# ---- RECE --------------------------------------------------------------------------------------------------------
def rece(sd, concept, a, state):
    """RECE: the UCE edit, then rounds of (a) the adversarial embedding c' = (sum_l W'_l^T W'_l + lam I)^-1
    (sum_l W'_l^T W_l) c over every cross-attention key and value projection (W' edited, W original), per token
    for every column c that UCE erases: what the edited model maps closest to where the original maps the concept;
    (b) a UCE edit of W' that sends c' and c to the guide (v* = W c_guide) while keeping the preserved columns at
    W' c_p and W near W' (uce_closed_form with W' in the place of W0).

    loss.csv per round, relative to the target's norm: rece_regen (||W' c' - W c||) before and after the round's
    edit, rece_guide_residual (||W' c' - W c_guide||), rece_concept_residual (||W' c - W c_guide||)."""
    c_e, c_g, c_p = uce_columns(sd, concept, a)
    params = cross_attention_kv(sd)
    w_orig = [p.detach().clone() for p in params.values()]
    changed = uce(sd, concept, a, state, (c_e, c_g, c_p))
    concept_targets = [c_e @ w.T for w in w_orig]  # (E, out) per projection: where the original maps the concept
    guide_targets = [c_g @ w.T for w in w_orig]

    def gap(c, targets):  # sqrt(sum_l ||W'_l c - T_l||^2 / sum_l ||T_l||^2), over every projection
        num = sum(float(((c @ p.detach().T - t) ** 2).sum()) for p, t in zip(params.values(), targets))
        return round((num / sum(float((t ** 2).sum()) for t in targets)) ** 0.5, 6)

    for r in range(a.rece_rounds):
        with torch.no_grad():
            c_adv = losses.rece_adversarial_embedding([p.detach() for p in params.values()], w_orig, c_e,
                                                      a.rece_lambda)  # (E, D)
            row = {"step": r + 1, "loss": float("nan"), "rece_regen_before": gap(c_adv, concept_targets)}
            # erase the adversarial columns AND the concept's own: with c' alone the edit, pulled toward W' only
            # by lambda, let W' c drift back from the guide (mini world: relative residual 1.7, van gogh 0.37)
            erased = torch.cat([c_e, c_adv])
            for p, v in zip(params.values(), guide_targets):
                p.copy_(losses.uce_closed_form(p.detach(), erased, torch.cat([v, v]), c_p,
                                               a.uce_lambda, a.erase_scale, a.preserve_scale).to(p.dtype))
            row.update(rece_regen_after=gap(c_adv, concept_targets), rece_guide_residual=gap(c_adv, guide_targets),
                       rece_concept_residual=gap(c_e, guide_targets))
        state["log"].append(row)
        log(f"rece round {r + 1}/{a.rece_rounds}: ||W'c' - Wc|| {row['rece_regen_before']:.4f} -> "
            f"{row['rece_regen_after']:.4f} (relative)")
    return changed


# ---- shared: checkpoints, NaN guard, grids -----------------------------------------------------------------------
def load_checkpoint(state, module, opt):
    path = os.path.join(state["dir"], "checkpoint.pt")
    if not os.path.exists(path):
        return 0
    ck = checkpoint.read(path, state.get("settings"), map_location="cpu")
    missing, unexpected = module.load_state_dict(ck["model"], strict=False)  # holds the trained tensors only
    if unexpected or len(missing) + len(ck["model"]) != len(module.state_dict()):
        raise RuntimeError(f"checkpoint {path} does not fit this model; delete it or drop --resume")
    opt.load_state_dict(ck["opt"])
    state["log"] = ck["log"]
    state["resumed"] = ck.get("extra", {})  # a method's own tensors (AP's logits pi)
    log(f"resumed from {path} at iteration {ck['step']}")
    return ck["step"]


def save_checkpoint(state, step, module, opt, force=False):
    if (step + 1) % state["every"] and not force:
        return
    path = os.path.join(state["dir"], "checkpoint.pt")
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    ck = {"model": {n: t for n, t in module.state_dict().items() if n in trainable}, "opt": opt.state_dict(),
          "step": step + 1, "log": state["log"],
          "extra": {k: v.state_dict() if hasattr(v, "state_dict") else v.detach().clone()
                    for k, v in state.get("resume_tensors", {}).items()},
          "settings": state.get("settings")}
    checkpoint.write(path, ck)
    record_cost(state)


COST_FILE = "cost_so_far.json"  # in the run's .tmp folder: the cost up to the last checkpoint


def record_cost(state):
    """After each checkpoint: write the run's cost up to it (this process's, plus what the processes before it spent
    when the run was resumed), so that a resumed run reports the whole run's cost, not its last process's."""
    if state.get("timer") is not None:  # None: a method called without main() (the tests)
        sdlib.write_cost(os.path.join(state["dir"], COST_FILE), state["timer"], state["cost_before"])


class NaNLoss(RuntimeError):
    pass


def step_or_stop(state, loss, step, opt, clip=None):
    """Backward and step (the gradients clipped to norm `clip` if given), unless the loss is not finite: then stop
    with the last good state kept on disk."""
    if not torch.isfinite(loss):
        raise NaNLoss(f"loss is {loss.item()} at iteration {step}; the last checkpoint is kept in {state['dir']} "
                      "(lower --lr and rerun with --resume)")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
    opt.step()
    state["log"].append({"step": step, "loss": round(loss.item(), 6), **state.pop("log_extra", {})})


def before_after_prompts(concept, n=GRID_PROMPTS):
    step = max(1, len(concept.prompts) // n)
    ostep = max(1, len(concept.other_prompts) // n)
    return concept.prompts[::step][:n], concept.other_prompts[::ostep][:n]


# ---- command line ------------------------------------------------------------------------------------------------
def schedule_defaults(argv):
    """(method, schedule, the settings PAPER_SCHEDULE gives that method under --schedule paper, else {}) from a
    first look at argv. parse() makes them the parser's defaults: a flag given on the command line (in any
    spelling argparse accepts) wins, and --help shows them. Malformed input is left to the full parser to report."""
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    pre.add_argument("--method")
    pre.add_argument("--schedule", default=SCHEDULE)
    try:
        known, _ = pre.parse_known_args(argv)
    except argparse.ArgumentError:
        return None, None, {}
    scheduled = PAPER_SCHEDULE.get(known.method, {}) if known.schedule == "paper" else {}
    return known.method, known.schedule, scheduled


def parse(argv=None):
    method, schedule, scheduled = schedule_defaults(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--schedule", default=SCHEDULE, choices=["default", "paper"],
                   help="paper: the settings of the method's paper or public code (PAPER_SCHEDULE at the top of "
                        "erase.py; flags given here win over them): " + "; ".join(
                            f"{m}: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in d.items())
                            for m, d in PAPER_SCHEDULE.items()))
    p.add_argument("--concept-file", default=None, help="JSON concept preset (see data.concept_from_file)")
    p.add_argument("--concept", action="append", default=None,
                   help="the concept to erase; given more than once, concepts erased together in one run "
                        f"({', '.join(MULTI_METHODS)}). Mini-world concepts: {', '.join(data.MINI_CONCEPTS)}")
    p.add_argument("--concepts", default=None, metavar="FILE",
                   help="a text file of concepts to erase together, one per line ('#' starts a comment)")
    p.add_argument("--out", help="run folder (default runs/<method>_<concept>)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--model", default=None, help="base model: diffusers folder or hub id (default: mini world)")
    p.add_argument("--device", default="auto")
    p.add_argument("--half", action="store_true", help="fp16 (GPU only)")
    p.add_argument("--bf16", action="store_true", help="fp32 weights, UNet passes under bf16 autocast")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue a stopped run from <out>.tmp/checkpoint.pt")
    p.add_argument("--export", help="also write a full diffusers pipeline folder of the erased model here")
    p.add_argument("--grid-seeds", type=int, default=2,
                   help="pictures per prompt in before_after.png (0: no before_after.png, and no pictures drawn for it)")
    p.add_argument("--picture-cache", default=None,
                   help="folder where the original model's pictures for before_after.png are kept and reused "
                        "(the benchmark shares one between its cells)")
    g = p.add_argument_group("ESD")
    g.add_argument("--train-method", default=ESD_TRAIN_METHOD, choices=["auto", *sdlib.PARAM_RULES],
                   help="auto: esd-x for a style, esd-u for an object (the concept's kind)")
    g.add_argument("--iterations", type=int, default=ESD_ITERATIONS)
    g.add_argument("--lr", type=float, default=None, help="default by --train-method: " +
                   ", ".join(f"{k} {v:g}" for k, v in ESD_LR.items()))
    g.add_argument("--eta", type=float, default=ESD_ETA, help="negative guidance scale")
    g.add_argument("--ddim-steps", type=int, default=ESD_DDIM_STEPS)
    g.add_argument("--start-guidance", type=float, default=ESD_START_GUIDANCE)
    g.add_argument("--batch", type=int, default=ESD_BATCH)
    g.add_argument("--erase-prompt", default=ESD_ERASE_PROMPT, choices=["words", "frames", "prompts"],
                   help="ESD's and STEREO's erase prompts: the concept's words (or token) alone, in sentences that "
                        "name nothing else, or in scenes")
    g = p.add_argument_group("STEREO (also uses --train-method, --lr, --eta, --ddim-steps, --batch)")
    g.add_argument("--rounds", type=int, default=STEREO_ROUNDS, help="stage-1 erase-then-attack rounds (K)")
    g.add_argument("--ste-iterations", type=int, default=STEREO_STE_ITERATIONS)
    g.add_argument("--ti-steps", type=int, default=STEREO_TI_STEPS)
    g.add_argument("--ti-images", type=int, default=STEREO_TI_IMAGES)
    g.add_argument("--ti-lr", type=float, default=STEREO_TI_LR)
    g.add_argument("--ti-batch", type=int, default=STEREO_TI_BATCH, help="default: min(8, --ti-images)")
    g.add_argument("--ste-lr", type=float, default=STEREO_STE_LR, help="stage 1's learning rate (default: --lr)")
    g.add_argument("--stereo-optimizer", default=STEREO_OPTIMIZER, choices=["adam", "adamw"])
    g.add_argument("--reo-iterations", type=int, default=STEREO_REO_ITERATIONS)
    g.add_argument("--anchor-scale", type=float, default=STEREO_ANCHOR_SCALE, help="s_a")
    g.add_argument("--erase-scale-reo", type=float, default=STEREO_ERASE_SCALE, help="s_e")
    g.add_argument("--stereo-tokens", default=None, metavar="RUN",
                   help="skip stage 1: take the adversarial tokens a finished STEREO run of this concept collected "
                        "(to compare stage-2 settings on the same tokens)")
    g = p.add_argument_group("AP (also uses --train-method, --iterations, --lr, --eta, --ddim-steps, --batch)")
    g.add_argument("--ap-candidates", type=int, default=AP_CANDIDATES)
    g.add_argument("--ap-vocab-pool", type=int, default=AP_VOCAB_POOL)
    g.add_argument("--ap-lambda", type=float, default=AP_LAMBDA)
    g.add_argument("--ap-temperature", type=float, default=AP_TEMPERATURE)
    g.add_argument("--ap-adv-lr", type=float, default=AP_ADV_LR)
    g = p.add_argument_group("DM2")
    g.add_argument("--dm2-rank", type=int, default=DM2_RANK)
    g.add_argument("--dm2-pool", type=int, default=DM2_POOL)
    g.add_argument("--dm2-tokens", type=int, default=DM2_TOKENS, help="L")
    g.add_argument("--dm2-mine-images", type=int, default=DM2_MINE_IMAGES, help="k")
    g.add_argument("--dm2-mine-steps", type=int, default=DM2_MINE_STEPS)
    g.add_argument("--dm2-mine-lr", type=float, default=DM2_MINE_LR,
                   help="mining's Adam lr, decaying (--dm2-mine-decay) ...")
    g.add_argument("--dm2-mine-lr-end", type=float, default=DM2_MINE_LR_END, help="... to this")
    g.add_argument("--dm2-mine-decay", default=DM2_MINE_DECAY, choices=["linear", "step"],
                   help="step: mining's lr drops to --dm2-mine-lr-end at once, at --dm2-mine-decay-at")
    g.add_argument("--dm2-mine-decay-at", type=float, default=DM2_MINE_DECAY_AT, help="a fraction of the steps")
    g.add_argument("--dm2-mine-clip", type=float, default=DM2_MINE_CLIP, help="mining's gradient-norm clip")
    g.add_argument("--dm2-verify-images", type=int, default=DM2_VERIFY_IMAGES)
    g.add_argument("--dm2-threshold", type=float, default=DM2_THRESHOLD, help="tau")
    g.add_argument("--dm2-anchor", default=DM2_ANCHOR_RULE,
                   help=f"c0: auto ({DM2_ANCHOR!r} unless the verifier cannot tell it from the concept, then one of "
                        f"{', '.join(map(repr, DM2_ANCHOR_FALLBACKS))}), or the anchor prompt itself")
    g.add_argument("--dm2-init", default=DM2_INIT, choices=["anchor", "concept"],
                   help="mining starts every token from the anchor's last word ('photo') or from the concept's words")
    g.add_argument("--dm2-circumvent-steps", type=int, default=DM2_CIRCUMVENT_STEPS)
    g.add_argument("--dm2-batch", type=int, default=DM2_BATCH, help="pool pictures per circumvent step")
    g.add_argument("--dm2-lr", type=float, default=DM2_LR)
    g.add_argument("--dm2-optimizer", default=DM2_OPTIMIZER, choices=["adam", "sgd"], help="circumventing's")
    g.add_argument("--dm2-lr-end", type=float, default=DM2_LR_END,
                   help="circumventing's lr drops to this at --dm2-decay-at of each loop's steps (default: constant)")
    g.add_argument("--dm2-decay-at", type=float, default=DM2_DECAY_AT, help="a fraction of the steps")
    g.add_argument("--dm2-loss", default=DM2_LOSS, choices=["mean", "sum"],
                   help="circumventing's squared error per x_t: the mean over its latent elements, or their sum (the "
                        "paper's squared L2 norm, against which its SGD lr is set)")
    g.add_argument("--dm2-clip", type=float, default=DM2_CLIP,
                   help="circumventing's gradient-norm clip (default: none)")
    g.add_argument("--dm2-newest-prob", type=float, default=DM2_NEWEST_PROB,
                   help="a circumvent step uses the newest mined embedding with this probability, an older one "
                        "otherwise")
    g.add_argument("--dm2-alpha-c", type=float, default=DM2_ALPHA_C)
    g.add_argument("--dm2-alpha-p", type=float, default=DM2_ALPHA_P)
    g.add_argument("--dm2-max-loops", type=int, default=DM2_MAX_LOOPS)
    g.add_argument("--clip-arch", default="ViT-B-32", help="real SD: open_clip model whose image encoder verifies")
    g.add_argument("--clip-weights", default=None, help="real SD: open_clip checkpoint file for that encoder")
    g.add_argument("--mini-dir", default=judges.MINI_DIR,
                   help="mini judge whose features DM2 verifies with")
    g = p.add_argument_group("AdvUnlearn (trains the text encoder; also uses --iterations, --lr, --eta, --ddim-steps, "
                             "--start-guidance, --batch)")
    g.add_argument("--advunlearn-prefix", type=int, default=ADVUNLEARN_PREFIX, help="soft prefix tokens")
    g.add_argument("--advunlearn-attack-steps", type=int, default=ADVUNLEARN_ATTACK_STEPS, help="K")
    g.add_argument("--advunlearn-attack-lr", type=float, default=ADVUNLEARN_ATTACK_LR, help="alpha")
    g.add_argument("--advunlearn-gamma", type=float, default=ADVUNLEARN_GAMMA, help="gamma: utility-retaining weight")
    g = p.add_argument_group("RECE (starts from the UCE edit and uses UCE's settings)")
    g.add_argument("--rece-rounds", type=int, default=RECE_ROUNDS)
    g.add_argument("--rece-lambda", type=float, default=RECE_LAMBDA, help="lambda of the adversarial embedding")
    g = p.add_argument_group("UCE")
    g.add_argument("--uce-lambda", type=float, default=UCE_LAMBDA)
    g.add_argument("--erase-scale", type=float, default=UCE_ERASE_SCALE)
    g.add_argument("--preserve-scale", type=float, default=UCE_PRESERVE_SCALE)
    g.add_argument("--preserve", type=int, default=UCE_PRESERVE, help="prompts of other concepts to preserve")
    g.add_argument("--uce-erase", default=UCE_ERASE, choices=["prompts", "frames", "words"],
                   help="erase the concept's scene prompts, or toward the unconditional its frames (its words in "
                        "sentences naming nothing else) or its words alone")
    p.set_defaults(**scheduled)
    a = p.parse_args(argv)
    if a.schedule == "paper" and a.method not in PAPER_SCHEDULE:
        sdlib.fail(f"--schedule paper applies to {', '.join(PAPER_SCHEDULE)}, not --method {a.method}")
    if (a.method, a.schedule) != (method, schedule):  # the first look read argv otherwise than argparse did
        sdlib.fail("--method and --schedule could not be read apart from the other flags; spell them out in full")
    for name in ("iterations", "ddim_steps", "batch", "rounds", "ste_iterations", "ti_steps", "ti_images",
                 "reo_iterations", "advunlearn_prefix", "advunlearn_attack_steps", "rece_rounds", "dm2_rank",
                 "dm2_pool", "dm2_tokens", "dm2_mine_images", "dm2_mine_steps", "dm2_verify_images",
                 "dm2_circumvent_steps", "dm2_batch", "dm2_max_loops"):
        if getattr(a, name) < 1:
            sdlib.fail(f"--{name.replace('_', '-')} must be at least 1")
    if a.grid_seeds < 0:
        sdlib.fail("--grid-seeds must be 0 (no before_after.png) or more")
    if a.stereo_tokens and a.method != "stereo":
        sdlib.fail("--stereo-tokens is a STEREO setting (--method stereo)")
    if a.rece_lambda <= 0:
        sdlib.fail("--rece-lambda must be positive (it keeps the adversarial embedding's system invertible)")
    for name in ("lr", "dm2_mine_lr", "dm2_mine_lr_end", "ste_lr", "ti_batch", "dm2_mine_clip", "dm2_lr_end",
                 "dm2_clip"):
        if getattr(a, name) is not None and getattr(a, name) <= 0:
            sdlib.fail(f"--{name.replace('_', '-')} must be positive")
    names = list(a.concept or [])
    if a.concepts:
        try:
            lines = open(a.concepts, encoding="utf-8").read().splitlines()
        except OSError as e:
            sdlib.fail(f"--concepts {a.concepts}: {e}")
        names += [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]
        if not names:
            sdlib.fail(f"--concepts {a.concepts} lists no concept")
    if not names:
        sdlib.fail("give the concept to erase: --concept NAME (more than once, or --concepts FILE, for several)")
    if len(names) > 1 and a.method not in MULTI_METHODS:
        sdlib.fail(f"--method {a.method} erases one concept per run; several at once: {', '.join(MULTI_METHODS)}")
    a.concept = names[0] if len(names) == 1 else names  # one concept: a name, as before
    a.concepts = None
    for name in ("dm2_mine_decay_at", "dm2_decay_at", "dm2_newest_prob"):
        if not 0 <= getattr(a, name) <= 1:
            sdlib.fail(f"--{name.replace('_', '-')} must be between 0 and 1")
    return a


def resolve_for_concept(a, concept):
    """--train-method auto -> esd-x or esd-u by the concept's kind, and the learning rate by the train method when
    --lr is not given. main() calls it before config.json records the settings; the methods call it again (it
    changes nothing the second time) so that they can be called with parse()'s output directly."""
    if a.train_method == "auto" and concept.kind not in ESD_TRAIN_FOR and a.method in ("uce", "rece", "dm2"):
        return  # several concepts of different kinds, erased by a method that does not read --train-method
    if a.train_method == "auto":
        if concept.kind not in ESD_TRAIN_FOR:  # several concepts of different kinds
            sdlib.fail(f"--train-method auto picks by the concept's kind, and {concept.name!r} mixes "
                       f"{', '.join(sorted({c.kind for c in concept.parts}))}: give --train-method "
                       f"({', '.join(sdlib.PARAM_RULES)})")
        a.train_method = ESD_TRAIN_FOR[concept.kind]
    if a.lr is None:
        a.lr = ESD_LR["text-encoder" if a.method == "advunlearn" else a.train_method]


METHOD_FNS = {"esd": esd, "uce": uce, "stereo": stereo, "ap": ap, "dm2": dm2, "advunlearn": advunlearn, "rece": rece}


def main(argv=None):
    a = parse(argv)
    if a.schedule == "paper":
        given = {k: getattr(a, k) for k, v in PAPER_SCHEDULE[a.method].items() if getattr(a, k) != v}
        log(f"--schedule paper: {len(PAPER_SCHEDULE[a.method]) - len(given)} of {a.method}'s settings from its "
            "paper or public code" + (f"; given on the command line instead: {given}" if given else ""))
    if sdlib.rank_world()[1] > 1:
        sdlib.fail("erase.py trains one model in one process; run it without torchrun (attack.py and evaluate.py "
                   "share their prompts out over torchrun's ranks)")
    try:
        sd = sdlib.load(a.model, a.device, a.half, bf16=a.bf16)
        concept, _ = data.get_concepts(a.concept, sd.world, a.concept_file)
    except (data.DataError, sdlib.LoadError) as e:
        sdlib.fail(str(e))
    if concept.parts and a.method == "dm2" and sd.world != "mini":
        sdlib.fail("dm2 verifies several concepts with the mini judge only; on real SD erase one concept per run")
    resolve_for_concept(a, concept)
    a.out = a.out or os.path.join("runs", f"{a.method}_{data.slug(concept.name)}")
    torch.manual_seed(a.seed)
    before_prompts, other_prompts = before_after_prompts(concept)
    grid_prompts = [p for p in before_prompts + other_prompts for _ in range(a.grid_seeds)]
    grid_seeds = [a.seed + k for _ in before_prompts + other_prompts for k in range(a.grid_seeds)]
    base_fp = sdlib.fingerprint(sd)
    with sdlib.output_dir(a.out, a.overwrite, resume=a.resume) as tmp:
        if grid_prompts:
            before = sdlib.cached_generate(sd, a.picture_cache, sdlib.model_identity(sd), grid_prompts, grid_seeds,
                                           progress=False)
        cost_path = os.path.join(tmp, COST_FILE)  # there after a checkpoint of an earlier, stopped process
        cost_before = sdlib.read_cost(cost_path)
        state = {"dir": tmp, "every": CHECKPOINT_EVERY, "log": [], "cost_before": cost_before,
                 "settings": checkpoint.settings_of(a, RESUME_IGNORES)}  # a checkpoint is valid for these only
        try:
            with sdlib.Timer(sd) as timer:
                state["timer"] = timer
                changed = METHOD_FNS[a.method](sd, concept, a, state)
        except NaNLoss as e:
            sdlib.fail(str(e), code=3)
        if grid_prompts:
            after = sdlib.generate(sd, grid_prompts, grid_seeds, progress=False)
            n = len(before_prompts) * a.grid_seeds
            rows = [before[:n], after[:n], before[n:], after[n:]]
            data.save_png(data.image_grid(np.concatenate(rows), n), os.path.join(tmp, "before_after.png"))
        settings = {k: v for k, v in vars(a).items()}
        config = {"method": a.method, "concept": concept.name, "base_model": sdlib.portable_name(sd.name),
                  **({"concepts": [c.name for c in concept.parts]} if concept.parts else {}),
                  "base_fingerprint": base_fp,
                  "seed": a.seed, "settings": settings, "cost": timer.as_dict(cost_before),
                  "changed": sorted(changed), **state.get("extra_json", {})}
        if a.grid_seeds:  # what before_after.png shows; there is none with --grid-seeds 0
            config.update(before_after_rows=["concept: before", "concept: after", "other: before", "other: after"],
                          before_after_prompts=before_prompts + other_prompts)
        sdlib.save_run(tmp, sd, changed, config)
        with open(os.path.join(tmp, "loss.csv"), "w") as f:
            keys = list(dict.fromkeys(k for r in state["log"] for k in r))
            f.write(",".join(keys) + "\n" + "".join(",".join(str(r.get(k, "")) for k in keys) + "\n"
                                                    for r in state["log"]))
        if state.get("extra_tensors"):  # e.g. STEREO's adversarial token embeddings, for inspection and reuse
            from safetensors.torch import save_file
            save_file({k: v.float().contiguous() for k, v in state["extra_tensors"].items()},
                      os.path.join(tmp, "embeddings.safetensors"))
        for ck in ("checkpoint.pt", "stereo_rounds.pt", "dm2_loops.pt", COST_FILE):
            if os.path.exists(os.path.join(tmp, ck)):
                os.remove(os.path.join(tmp, ck))
    if a.export:
        sdlib.export_pipeline(sd, a.export)
    log(f"{a.method} erased {concept.name!r}: {len(changed)} tensors changed, {timer.seconds:.0f}s, "
        f"{timer.unet_evals} UNet evaluations -> {a.out}")


if __name__ == "__main__":
    sys.exit(main())
