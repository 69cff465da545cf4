"""The Stable Diffusion plumbing every method, attack and metric shares.

load -> SD (tokenizer, text encoder, UNet, VAE, DDIM schedule, counters); encode prompts (optionally with injected
token embeddings); predict noise with or without classifier-free guidance; run our own DDIM loop from noise down
to a given step; generate pictures for (prompt, seed) lists in batches; select trainable parameters by a named rule.
"""
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = os.path.join(HERE, "mini", "pipeline")  # the mini world; a hub id or folder runs the same code
SUPPORTED_PIPELINES = ("StableDiffusionPipeline",)  # model_index.json's _class_name: SD 1.x and 2.x
MINI_WORLD_FILE = "mini_world.json"  # in a pipeline folder: the model is the mini world's (its presets, judge)

# Named rules for the parameters a method may train. ESD-x: cross-attention only; ESD-u: everything except
# cross-attention and (as in the ESD code) the time embedding and the output convolution.
PARAM_RULES = {
    "esd-x": "UNet cross-attention (attn2) weights",
    "esd-u": "UNet weights except cross-attention, time embedding and conv_out",
    "full": "every UNet weight",
    "attn-v": "UNet attention value projections (attn1.to_v and attn2.to_v)",
    "text-encoder": "text encoder transformer layers and final norm (token and position embeddings frozen)",
}


class LoadError(RuntimeError):
    """A model that cannot be loaded; the message says what was tried and what is accepted."""


@dataclass
class SD:
    tokenizer: object
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object  # a DDIMScheduler: its alphas_cumprod and timestep spacing drive our own loop
    device: torch.device
    dtype: torch.dtype
    name: str
    counts: dict = field(default_factory=lambda: {"unet": 0, "text_encoder": 0})  # evaluations (rows of a batch)
    prediction_type: str = "epsilon"  # what the UNet predicts (the scheduler's config): epsilon or v_prediction
    autocast: bool = False  # UNet passes under bf16 autocast (weights stay fp32; outputs come back as fp32)
    world: str = "sd"  # whose concept presets and judges apply: "mini" (MINI_WORLD_FILE in its folder) or "sd"

    @property
    def latent_shape(self):
        s = self.unet.config.sample_size
        return (self.unet.config.in_channels, s, s)

    @property
    def image_size(self):
        return self.unet.config.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1)


def log(msg):
    """A timestamped line on stdout, flushed (benchmark logs interleave several processes)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tqdm(it, **kw):
    """A progress bar that redraws at most every 5 s (logs of long runs stay short)."""
    from tqdm.auto import tqdm as _tqdm
    return _tqdm(it, mininterval=5, **kw)


def pick_device(name="auto"):
    if name == "auto":  # under torchrun each process takes the GPU of its local rank
        return torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LoadError(f"--device {name} asked for, but no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def load(model=None, device="auto", half=False, weights=None, bf16=False):
    """Load a diffusers Stable Diffusion folder or hub id (offline: the local Hugging Face cache only).

    model None means the base named by the run folder `weights`, else the mini world. With `weights` (a run
    folder written by erase.py) its changed tensors are applied and its base is checked against `model`.
    fp32 on CPU; half=True gives fp16 on a GPU; bf16=True keeps fp32 weights and runs the UNet under bf16 autocast
    (any device; no loss scaling needed). The DDIM schedule is rebuilt from the pipeline's own config."""
    run = read_run_config(weights) if weights else None
    if model is None:
        model = base_model_of(run) if run else DEFAULT_MODEL
    if half and bf16:
        raise LoadError("--half and --bf16 are two precisions; choose one")
    sd = _load_pipeline(model, device, half)
    sd.autocast = bf16
    if run:
        apply_run(sd, weights, run)
    return sd


def base_model_of(run):
    """The base model a run's config.json names, as a path or hub id: runs name bases inside this repository
    relative to it."""
    model = run["base_model"]
    if not os.path.isabs(model) and os.path.isdir(os.path.join(HERE, model)):
        model = os.path.join(HERE, model)
    return model


def _load_pipeline(model, device, half):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog
    dlog.disable_progress_bar(), tlog.disable_progress_bar()
    dev = pick_device(device)
    if half and dev.type == "cpu":
        raise LoadError("--half needs a GPU: half precision on the CPU is slow and inaccurate; drop --half")
    dtype = torch.float16 if half else torch.float32
    is_dir = os.path.isdir(model)
    if is_dir and not os.path.exists(os.path.join(model, "model_index.json")):
        raise LoadError(f"--model {model}: folder has no model_index.json; expected a diffusers "
                        "StableDiffusionPipeline folder (e.g. mini/pipeline or one written by --export)")
    if is_dir:  # SDXL, SD3, Flux and other pipelines have other text encoders and UNets: refuse them by name
        kind = json.load(open(os.path.join(model, "model_index.json"))).get("_class_name", "")
        if kind not in SUPPORTED_PIPELINES:
            raise LoadError(f"--model {model}: a {kind or 'unnamed'} folder; supported: "
                            f"{', '.join(SUPPORTED_PIPELINES)} (SD 1.x and 2.x)")
    if not is_dir and (model.startswith((".", "/")) or os.sep in model.strip("/").replace("/", "", 1)):
        raise LoadError(f"--model {model}: no such folder; give a diffusers folder or a hub id such as "
                        "CompVis/stable-diffusion-v1-4 that is in the local Hugging Face cache")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(model, dtype=dtype, safety_checker=None, low_cpu_mem_usage=False,
                                                       requires_safety_checker=False, local_files_only=True)
    except Exception as e:  # diffusers raises many types here; one line is what the user needs
        why = (str(e).strip() or type(e).__name__).split(". ")[0].splitlines()[0][:200]
        raise LoadError(f"--model {model}: cannot be loaded offline ({why}); give a diffusers folder or a "
                        "hub id already in the local Hugging Face cache (nothing is downloaded)") from None
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise LoadError(f"--model {model}: its scheduler predicts {prediction!r}; supported: "
                        f"{', '.join(PREDICTION_TYPES)}")
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    sd = SD(pipe.tokenizer, pipe.text_encoder.to(dev), pipe.unet.to(dev), pipe.vae.to(dev), scheduler, dev, dtype,
            model, prediction_type=prediction, world=world_of_folder(model) if is_dir else "sd")
    for m in (sd.text_encoder, sd.unet, sd.vae):
        m.eval().requires_grad_(False)
    return sd


def world_of_folder(folder):
    """'mini' for a pipeline folder marked as the mini world (mini/pipeline, the tests' toy models), else 'sd': the
    world is what the model is, not how big its pictures are."""
    return "mini" if os.path.exists(os.path.join(folder, MINI_WORLD_FILE)) else "sd"


def mark_mini_world(folder, **info):
    """Mark a pipeline folder as a mini-world model (mini.py's export, the tests' toy pipelines)."""
    with open(os.path.join(folder, MINI_WORLD_FILE), "w") as f:
        json.dump({"world": "mini", **info}, f, indent=1)


# ---- run folders: what an erasure changed, and how to put it back on a base model -------------------------------
RUN_WEIGHTS = "weights.safetensors"


def fingerprint(sd):
    """Short hash of the base model's input convolution and token table: tells two bases apart cheaply."""
    import hashlib
    h = hashlib.sha256()
    for t in (sd.unet.conv_in.weight, sd.text_encoder.get_input_embeddings().weight[:1000]):
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def read_run_config(run_dir):
    import json
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path) or not os.path.exists(os.path.join(run_dir, RUN_WEIGHTS)):
        raise LoadError(f"--weights {run_dir}: not a run folder (expected config.json and {RUN_WEIGHTS} "
                        "written by erase.py)")
    return json.load(open(path))


def apply_run(sd, run_dir, run=None):
    """Put a run's changed tensors (keys 'unet.<name>' / 'text_encoder.<name>') onto the loaded base model."""
    from safetensors.torch import load_file
    run = run or read_run_config(run_dir)
    if run.get("base_fingerprint") and run["base_fingerprint"] != fingerprint(sd):
        raise LoadError(f"run folder {run_dir} was made from base model {run['base_model']!r} "
                        f"(fingerprint {run['base_fingerprint']}), not from {sd.name!r} ({fingerprint(sd)})")
    tensors = load_file(os.path.join(run_dir, RUN_WEIGHTS))
    modules = {"unet": sd.unet, "text_encoder": sd.text_encoder}
    lora_keys = sorted(k for k in tensors if k.startswith("lora."))
    for key in lora_keys:  # 'lora.unet.<layer>.lora_A' (+ '.lora_B'): merged into the layer's weight, W += s B A
        if key.endswith(".lora_A"):
            part, layer = key[len("lora."):-len(".lora_A")].split(".", 1)
            param = dict(modules[part].named_parameters()).get(layer + ".weight") if part in modules else None
            a_, b_ = tensors[key], tensors.get(key[:-1] + "B")
            if param is None or b_ is None or (b_ @ a_).shape != param.shape:
                raise LoadError(f"run folder {run_dir}: LoRA {key} does not fit the base model {sd.name!r}")
            with torch.no_grad():
                param += run["lora"]["scaling"] * (b_ @ a_).to(param.device, param.dtype)
    for key, value in tensors.items():
        if key.startswith("lora."):
            continue
        part, name = key.split(".", 1)
        param = dict(modules[part].named_parameters()).get(name) if part in modules else None
        if param is None or param.shape != value.shape:
            raise LoadError(f"run folder {run_dir}: tensor {key} does not fit the base model {sd.name!r}")
        with torch.no_grad():
            param.copy_(value.to(param.device, param.dtype))
    sd.name = f"{sd.name} + {run_dir}"
    return sd


def portable_name(model):
    """A base model's name as a run folder records it: relative to this repository when it lies inside it."""
    path = os.path.abspath(model)
    if os.path.isdir(path) and os.path.commonpath([path, HERE]) == HERE:
        return os.path.relpath(path, HERE)
    return model


def save_run(folder, sd, changed, config):
    """Write a run folder: changed tensors {'unet.<name>': tensor} as safetensors and config.json."""
    import json
    from safetensors.torch import save_file
    save_file({k: v.detach().float().cpu().contiguous() for k, v in changed.items()},
              os.path.join(folder, RUN_WEIGHTS))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=1)


def export_pipeline(sd, folder):
    """A full diffusers StableDiffusionPipeline folder of the current (erased) model, for other tools."""
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
                                   scheduler=sd.scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    if sd.world == "mini":  # the exported model is still the mini world's
        mark_mini_world(folder)


# ---- prompts -----------------------------------------------------------------------------------------------------
def tokenize(sd, prompts):
    return sd.tokenizer(list(prompts), padding="max_length", max_length=sd.tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(sd.device)


def add_tokens(sd, names):
    """Register placeholder tokens (e.g. '<adv0>') so prompts can name them; their vectors come via encode(inject=)."""
    new = [n for n in names if n not in sd.tokenizer.get_vocab()]
    if new:
        sd.tokenizer.add_tokens(new)
    return sd.tokenizer.convert_tokens_to_ids(list(names))


@contextmanager
def _injected(sd, inject):
    """While active, the token-embedding lookup returns inject[id] wherever a placeholder id appears.

    inject: {token id: (D,) tensor, or (B, D) for one vector per prompt of the batch}. Placeholder ids may lie past
    the embedding table: they are looked up as id 0 and then replaced, so the table itself never changes and
    gradients flow to the injected vectors."""
    emb = sd.text_encoder.get_input_embeddings()
    ids_seen = {}

    def pre(module, args):
        ids = args[0]
        ids_seen["ids"] = ids
        return (torch.where(ids >= module.num_embeddings, torch.zeros_like(ids), ids),)

    def post(module, args, out):  # out: (B, L, D)
        ids = ids_seen["ids"]
        for tid, vec in inject.items():
            hit = (ids == tid).unsqueeze(-1)  # (B, L, 1)
            vec = vec.to(out.dtype)
            out = torch.where(hit, vec[:, None, :] if vec.dim() == 2 else vec, out)
        return out

    handles = [emb.register_forward_pre_hook(pre), emb.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def encode(sd, prompts, inject=None):
    """Text-encoder hidden states (B, 77, D) for prompts; inject {token id: vector} swaps placeholder embeddings."""
    ids = tokenize(sd, prompts)
    sd.counts["text_encoder"] += len(ids)
    if not inject:
        return sd.text_encoder(ids)[0]
    with _injected(sd, inject):
        return sd.text_encoder(ids)[0]


# ---- noise prediction and DDIM -----------------------------------------------------------------------------------
PREDICTION_TYPES = ("epsilon", "v_prediction")  # UNet outputs we turn into noise: every loss and our DDIM work in eps


def to_eps(sd, out, z, t):
    """The UNet's output for z_t as noise eps: itself for epsilon models; for v-prediction models (SD 2.x at 768 px)
    v = sqrt(a_t) eps - sqrt(1 - a_t) x0, so eps = sqrt(a_t) v + sqrt(1 - a_t) z_t (a_t = alphas_cumprod[t])."""
    if sd.prediction_type == "epsilon":
        return out
    a_t = sd.scheduler.alphas_cumprod.to(z.device)[torch.as_tensor(t, device=z.device)].to(out.dtype)
    if a_t.dim():
        a_t = a_t.view(-1, *[1] * (z.dim() - 1))
    return a_t.sqrt() * out + (1 - a_t).sqrt() * z


def eps(sd, unet, z, t, cond, uncond=None, guidance=1.0):
    """Noise prediction (in eps whatever the model predicts, see to_eps); with uncond given, classifier-free
    guidance e_u + g (e_c - e_u) in one batched call."""
    t = torch.as_tensor(t, device=sd.device)
    if uncond is None:
        sd.counts["unet"] += len(z)
        return to_eps(sd, unet_pass(sd, unet, z, t, cond), z, t)
    sd.counts["unet"] += 2 * len(z)
    zz, tt = torch.cat([z, z]), (torch.cat([t, t]) if t.dim() else t)  # a per-row t goes with each row's copy
    e_u, e_c = to_eps(sd, unet_pass(sd, unet, zz, tt, torch.cat([uncond, cond])), zz, tt).chunk(2)
    return e_u + guidance * (e_c - e_u)


def unet_pass(sd, unet, z, t, cond):
    """One UNet call, under bf16 autocast when sd.autocast (the output back in z's dtype)."""
    if not sd.autocast:
        return unet(z, t, cond).sample
    with torch.autocast(z.device.type, dtype=torch.bfloat16):
        return unet(z, t, cond).sample.to(z.dtype)


def ddim_timesteps(sd, num_steps):
    sd.scheduler.set_timesteps(num_steps)
    return sd.scheduler.timesteps.to(sd.device)  # descending, e.g. 981, 961, ..., 1 for 50 steps


def add_noise(sd, z0, noise, t):
    """Forward diffusion q(z_t | z_0): sqrt(a_t) z0 + sqrt(1 - a_t) noise, a_t = alphas_cumprod[t]; t is one timestep
    for all rows or a tensor of one per row."""
    a_t = sd.scheduler.alphas_cumprod.to(z0.device)[t].to(z0.dtype)
    if a_t.dim():
        a_t = a_t.view(-1, *[1] * (z0.dim() - 1))
    return a_t.sqrt() * z0 + (1 - a_t).sqrt() * noise


def ddim_step(sd, z, e, t, t_prev):
    """Deterministic DDIM (eta = 0): x0 = (z - sqrt(1-a_t) e) / sqrt(a_t); z_prev = sqrt(a_prev) x0 + sqrt(1-a_prev) e."""
    acp = sd.scheduler.alphas_cumprod.to(z.device)
    a_t = acp[t]
    a_prev = acp[t_prev] if t_prev >= 0 else sd.scheduler.final_alpha_cumprod.to(z.device)
    x0 = (z - (1 - a_t).sqrt() * e) / a_t.sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e


def ddim(sd, unet, z, cond, uncond=None, guidance=1.0, num_steps=50, stop_at=None, start_at=0):
    """Run DDIM from z (noise at the first timestep, or at step start_at's: SDEdit) up to step stop_at of num_steps
    (the end if None).

    Returns (z after step stop_at, the timestep it now sits at). stop_at=start_at returns z unchanged."""
    ts = ddim_timesteps(sd, num_steps)
    stop_at = len(ts) if stop_at is None else stop_at
    step_size = sd.scheduler.config.num_train_timesteps // num_steps
    for i in range(start_at, stop_at):
        t = int(ts[i])
        e = eps(sd, unet, z, t, cond, uncond, guidance)
        z = ddim_step(sd, z, e, t, t - step_size)
    t_now = int(ts[stop_at]) if stop_at < len(ts) else 0
    return z, t_now


def initial_latents(sd, seeds):
    """Noise (N, 4, h, w) with one generator per seed: a prompt's picture does not depend on its batch."""
    return torch.stack([torch.randn(sd.latent_shape, generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds]).to(sd.device, sd.dtype)


def decode(sd, z):
    """Latents -> (N, H, W, 3) uint8."""
    x = sd.vae.decode(z / sd.vae.config.scaling_factor).sample
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate(sd, prompts, seeds, steps=25, guidance=5.0, batch=64, unet=None, inject=None, progress=True):
    """Pictures (N, H, W, 3) uint8 for prompts[i] with seeds[i]; DDIM with classifier-free guidance.

    inject as in encode(); a (N, D) value gives prompt i its own row. Under torchrun the prompts are shared out
    over the ranks (see sample) and every rank gets all N pictures."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    per_row = {k for k, v in (inject or {}).items() if v.dim() == 2}
    for k in per_row:
        if len(inject[k]) != len(prompts):
            raise ValueError(f"inject[{k}] has {len(inject[k])} rows for {len(prompts)} prompts")

    def cond_of(rows):
        inj = {k: (v[rows] if k in per_row else v) for k, v in (inject or {}).items()}
        return encode(sd, [prompts[r] for r in rows], inj)
    return sample(sd, cond_of, seeds, steps, guidance, batch, unet, progress)


@torch.no_grad()
def sample(sd, cond_of, seeds, steps=25, guidance=5.0, batch=64, unet=None, progress=True):
    """Pictures (N, H, W, 3) uint8 for N = len(seeds): picture i starts from seeds[i]'s noise and is conditioned on
    row i of the text-encoder output, cond_of(rows) giving those rows (len(rows), 77, D); the unconditional branch
    is the model's own ''. Under torchrun the rows are shared out over the ranks (shard_map)."""
    unet = unet or sd.unet

    def run(idx):
        out = []
        chunks = range(0, len(idx), batch)
        for i in tqdm(chunks, desc="generate", disable=not progress or len(chunks) < 2):
            rows = idx[i:i + batch]
            cond = cond_of(rows).to(sd.dtype)
            uncond = encode(sd, [""] * len(rows))
            z, _ = ddim(sd, unet, initial_latents(sd, [seeds[r] for r in rows]), cond, uncond, guidance, steps)
            out.append(decode(sd, z))
        return np.concatenate(out) if out else np.zeros((0, sd.image_size, sd.image_size, 3), np.uint8)

    pictures = shard_map(run, len(seeds))
    return np.stack(pictures) if len(pictures) else run([])


def model_identity(sd, run_dir=None):
    """What decides a model's pictures: the base model's name and fingerprint, and the run's weights file (hashed)."""
    import hashlib
    ident = f"{sd.name}|{fingerprint(sd)}|{sd.dtype}|{sd.device.type}" + ("|bf16-autocast" if sd.autocast else "")
    if run_dir:
        h = hashlib.sha256()
        with open(os.path.join(run_dir, RUN_WEIGHTS), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        ident += "|" + h.hexdigest()
    return ident


def cache_path(cache, key, prefix="", suffix=""):
    """Where a result decided by `key` (anything JSON can write) is kept in the folder `cache`."""
    import hashlib
    import json
    return os.path.join(cache, prefix + hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32] + suffix)


def cache_hit(path):
    """Whether a process before kept the result at path; every rank gets the same answer (what follows a miss may
    be a collective such as generate)."""
    return all_ranks(os.path.exists(path))


def cache_write(path, save):
    """Keep a result at path: save(file object) writes it (np.save, torch.save); the main process only, through a
    per-process part file, so that cells running side by side never read a half-written file."""
    if is_main_process():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        part = f"{path}.{os.getpid()}.part"
        with open(part, "wb") as f:
            save(f)
        os.replace(part, path)


def cached_generate(sd, cache, identity, prompts, seeds, steps=25, guidance=5.0, progress=True):
    """generate(prompts, seeds), read from the folder `cache` when a process before drew the same pictures with the
    same model (identity: model_identity) and sampler settings, written there otherwise; cache None: no cache.
    Benchmark cells share the original model's pictures this way (erase grids, attack references). Plain prompts
    only: what decides the pictures must all be in the key, so no injected embeddings or other UNet."""
    if not cache:
        return generate(sd, prompts, seeds, steps, guidance, progress=progress)
    path = cache_path(cache, [identity, list(prompts), [int(s) for s in seeds], steps, guidance], suffix=".npy")
    if cache_hit(path):
        print(f"{len(prompts)} pictures from the picture cache ({path})", flush=True)
        return np.load(path)
    images = generate(sd, prompts, seeds, steps, guidance, progress=progress)
    cache_write(path, lambda f: np.save(f, images))
    return images


# ---- several processes: torchrun shares prompt lists out over ranks ------------------------------------------------
def rank_world():
    """(rank, world size) from torchrun's environment; (0, 1) in a plain run."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


_LOCAL = [0]  # > 0 inside local_only(): the work at hand is already this rank's own share


@contextmanager
def local_only():
    """Inside, shard_map runs everything it is given on this rank (for work that was itself sharded)."""
    _LOCAL[0] += 1
    try:
        yield
    finally:
        _LOCAL[0] -= 1


def _dist():
    import torch.distributed as dist
    if not dist.is_initialized():  # torchrun's env:// rendezvous; gloo on CPU, NCCL on GPUs
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist


def shard_map(fn, n):
    """Results of fn for every index 0..n-1, in order, as a list. fn(indices) returns one result per index (a list,
    or an array/tensor along its first axis). In a plain run fn gets every index at once; under torchrun rank r
    computes indices r, r + W, r + 2W, ... and the pieces are gathered, so every rank gets every result. A
    collective: every rank must make the same calls in the same order."""
    rank, world = rank_world()
    if world == 1 or _LOCAL[0]:
        return list(fn(list(range(n))))
    mine = list(range(rank, n, world))
    res = [r.cpu() if torch.is_tensor(r) else r for r in fn(mine)]
    parts = [None] * world
    _dist().all_gather_object(parts, (mine, res))
    out = [None] * n
    for idx, rs in parts:
        for i, r in zip(idx, rs):
            out[i] = r
    return out


def all_ranks(flag):
    """True when flag is true on every torchrun rank (a collective, like shard_map); flag itself in a plain run."""
    if rank_world()[1] == 1 or _LOCAL[0]:
        return bool(flag)
    flags = [None] * rank_world()[1]
    _dist().all_gather_object(flags, bool(flag))
    return all(flags)


def close_distributed():
    """Wait for every rank, then take the process group down: a rank that exits while the gloo group's threads are
    still running can abort ('terminate called without an active exception'). A no-op in a plain run."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_main_process():
    return rank_world()[0] == 0


# ---- trainable parameters ----------------------------------------------------------------------------------------
def _rule_match(rule, name):
    if rule == "esd-x":
        return "attn2" in name
    if rule == "esd-u":
        return not ("attn2" in name or name.startswith(("time_embedding", "conv_out")))
    if rule == "full":
        return True
    if rule == "attn-v":
        return name.endswith(("attn1.to_v.weight", "attn2.to_v.weight"))
    if rule == "text-encoder":
        # transformers 5 names CLIPTextModel's parameters without the 'text_model.' prefix that 4.x used
        return name.removeprefix("text_model.").startswith(("encoder.", "final_layer_norm."))
    raise ValueError(f"unknown parameter rule {rule!r}; accepted: {', '.join(PARAM_RULES)}")


def select_params(sd_or_module, rule, verbose=True):
    """{name: parameter} selected by a rule (PARAM_RULES); sets requires_grad on exactly those, prints counts.

    Raises ValueError if the rule selects nothing: a silent empty selection trains nothing and looks like success."""
    if isinstance(sd_or_module, SD):
        module = sd_or_module.text_encoder if rule == "text-encoder" else sd_or_module.unet
    else:
        module = sd_or_module
    module.requires_grad_(False)
    chosen = {n: p for n, p in module.named_parameters() if _rule_match(rule, n)}
    if not chosen:
        raise ValueError(f"parameter rule {rule!r} ({PARAM_RULES[rule]}) selected nothing in "
                         f"{type(module).__name__}")
    for p in chosen.values():
        p.requires_grad_(True)
    if verbose:
        total = sum(p.numel() for p in module.parameters())
        n = sum(p.numel() for p in chosen.values())
        print(f"trainable ({rule}): {len(chosen)} tensors, {n:,} of {total:,} parameters ({100 * n / total:.1f}%)")
    return chosen


class Timer:
    """Wall seconds and UNet/text-encoder evaluations spent inside a `with` block: the cost of a run."""

    def __init__(self, sd):
        self.sd = sd

    def __enter__(self):
        self.t0, self.c0 = time.time(), dict(self.sd.counts)
        return self

    def __exit__(self, *exc):
        self.seconds, self.unet_evals, self.text_evals = self.so_far()

    def so_far(self):
        """(seconds, UNet evaluations, text-encoder evaluations) since the block began, this process only."""
        return (time.time() - self.t0, self.sd.counts["unet"] - self.c0["unet"],
                self.sd.counts["text_encoder"] - self.c0["text_encoder"])

    def as_dict(self, before=None):
        """Under torchrun: evaluations summed over ranks, seconds of the slowest rank (every rank must call it).
        before: this rank's cost in the stopped processes of a resumed run (plus_before), added first and kept
        as 'resumed_after'."""
        sec, unet, text = plus_before(self.seconds, self.unet_evals, self.text_evals, before)
        if rank_world()[1] > 1:
            parts = [None] * rank_world()[1]
            _dist().all_gather_object(parts, (sec, unet, text))
            sec, unet, text = max(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)
        cost = {"seconds": round(sec, 2), "unet_evals": unet, "text_encoder_evals": text}
        return {**cost, "resumed_after": before} if before else cost


def plus_before(seconds, unet_evals, text_evals, before):
    """A cost plus before: the cost of a resumed run's stopped processes up to their last checkpoint (None if the run
    was not resumed). What a resumed process redoes on start, such as drawing DM2's pool again, is counted again:
    it was spent."""
    if before is None:
        return seconds, unet_evals, text_evals
    return seconds + before["seconds"], unet_evals + before["unet_evals"], text_evals + before["text_encoder_evals"]


def write_cost(path, timer, before):
    """Write the cost so far (this process's, plus before) to path, atomically: beside each checkpoint, so that a
    resumed run reports the whole run's cost, not its last process's. Read it back with read_cost."""
    seconds, unet, text = plus_before(*timer.so_far(), before)
    with open(path + ".part", "w") as f:
        json.dump({"seconds": round(seconds, 2), "unet_evals": unet, "text_encoder_evals": text}, f)
    os.replace(path + ".part", path)


def read_cost(path):
    """What write_cost wrote at path, None where there is nothing (a run that was not resumed)."""
    return json.load(open(path)) if os.path.exists(path) else None


# ---- command-line helpers shared by the entry points -------------------------------------------------------------
def fail(msg, code=2):
    """One clear line on stderr and a non-zero exit: what was wrong and what is accepted."""
    import sys
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(code)


@contextmanager
def output_dir(path, overwrite=False, resume=False):
    """Write into path + '.tmp' and rename into place at the end: a crash never leaves a half-written folder
    under the final name, and an existing folder is only replaced with overwrite=True. With resume=True an
    existing path + '.tmp' (a run that stopped) is kept, so its checkpoint can be picked up."""
    import shutil
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        fail(f"output folder {path} exists; pass --overwrite to replace it or choose another --out")
    if not is_main_process():  # under torchrun rank 0 alone writes; the others write into a scratch folder
        import tempfile
        with tempfile.TemporaryDirectory() as scratch:
            yield scratch
        return
    tmp = path + ".tmp"
    if not resume:
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp, exist_ok=True)
    yield tmp
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
