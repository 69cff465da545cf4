"""Textual inversion: learn token embeddings that make the model draw given pictures. CCE (attack.py), STEREO's
search stage and DM2's mining (erase.py) all invert this way."""
import torch

import losses
import sd as sdlib


def image_latents(sd, images):
    """(N, H, W, 3) uint8 -> VAE latents (N, 4, h, w) scaled as the UNet sees them (mean of the posterior)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(sd.device, sd.dtype)
    with torch.no_grad():
        return sd.vae.encode(x).latent_dist.mean * sd.vae.config.scaling_factor


def scheduled_lr(lr, lr_end, step, steps, decay="linear", at=None):
    """The learning rate of 0-based `step` of `steps`: lr throughout when lr_end is None; otherwise linear from lr
    to lr_end over the steps (decay "linear"), or lr before step round(at * steps) and lr_end from it on ("step",
    DM2's "decays to 0.01 at the 500-th epoch" of 1,000: at 0.5)."""
    if lr_end is None:
        return lr
    if decay == "step":
        return lr if step < round(at * steps) else lr_end
    return lr + (lr_end - lr) * step / max(1, steps - 1)


def textual_inversion(sd, latents, templates, token_names, init_word, steps, lr, batch, seed, desc="ti",
                      lr_end=None, clip=None, ckpt=None, decay="linear", decay_at=None):
    """Learn vectors for token_names so that templates.format(tokens) reconstructs each latent under sd.unet.

    latents[i] is paired with templates[i]; token k starts from the k-th token of init_word (cycling through a
    phrase's tokens). Only the new vectors are trained; the model and the embedding
    table stay as they are. lr decays to lr_end if given, linearly or in one step at decay_at of the steps
    (scheduled_lr); gradients are clipped to norm clip if given.
    ckpt: a Checkpoint to save to and resume from. Returns {token name: (D,) tensor}."""
    ids = sdlib.add_tokens(sd, token_names)
    table = sd.text_encoder.get_input_embeddings().weight
    init_ids = sd.tokenizer(init_word, add_special_tokens=False).input_ids or [0]  # a phrase: its tokens in turn
    vecs = [table[init_ids[i % len(init_ids)]].detach().clone().float().requires_grad_(True) for i in range(len(ids))]
    opt = torch.optim.Adam(vecs, lr=lr)
    placeholder = " ".join(token_names)
    acp = sd.scheduler.alphas_cumprod.to(sd.device)
    gen = torch.Generator().manual_seed(seed)
    start = 0
    if ckpt and (st := ckpt.load()):
        with torch.no_grad():
            for v, saved in zip(vecs, st["vecs"]):
                v.copy_(saved)
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        start = st["step"]
    bar = sdlib.tqdm(range(start, steps), desc=desc, initial=start, total=steps)
    for step in bar:
        idx = torch.randint(len(latents), (batch,), generator=gen)
        z0 = latents[idx]
        noise = torch.randn(z0.shape, generator=gen).to(z0)
        t = torch.randint(0, len(acp), (batch,), generator=gen).to(sd.device)
        zt = sdlib.add_noise(sd, z0, noise, t)
        cond = sdlib.encode(sd, [templates[i].format(placeholder) for i in idx.tolist()],
                            inject={i: v for i, v in zip(ids, vecs)})
        loss = losses.denoising_loss(sdlib.eps(sd, sd.unet, zt, t, cond), noise)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{desc}: loss is {loss.item()} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(vecs, clip)
        if lr_end is not None:
            for g in opt.param_groups:
                g["lr"] = scheduled_lr(lr, lr_end, step, steps, decay, decay_at)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if ckpt:
            ckpt.save(step + 1, lambda: {"vecs": [v.detach().clone() for v in vecs], "opt": opt.state_dict(),
                                         "gen": gen.get_state()})
    return {name: v.detach() for name, v in zip(token_names, vecs)}
