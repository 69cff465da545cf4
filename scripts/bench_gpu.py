"""Cost of every erasure method and attack on Stable Diffusion v1.4's architecture: seconds per iteration, UNet
evaluations per second and peak memory, per precision, and batched attacks against one target at a time.

    python scripts/bench_gpu.py --size sd14 --device cuda          # writes results/gpu/report.md and report.json
    python scripts/bench_gpu.py --size tiny --device cpu --methods esd-x uce --attacks unlearndiff --precisions fp32

The model is built here with random weights (nothing is downloaded): SD v1.4's published UNet, VAE, CLIP ViT-L/14
text encoder and DDIM configs (--size sd14, 512 px), or the same architecture narrowed (--size tiny, 128 px, seconds
on a CPU), saved as a StableDiffusionPipeline folder in --work. Every method and attack runs through its own command
line (erase.py, attack.py) in a fresh process for a few iterations; the numbers are the costs those runs record in their
run folders (config.json / metrics.json "cost") and the process's peak memory (GPU: torch.cuda.max_memory_allocated;
CPU: peak resident set size). The concept is real SD's "van gogh" preset, judged by open_clip zero-shot with a
random CLIP whose weights are written here; attacks attack a UCE erasure of it. A run that fails (out of memory, a
precision the code refuses) is a row saying so with its one-line reason.
"""
import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)  # the repository: erase.py and attack.py run from here

# ---- settings ----------------------------------------------------------------------------------------------------
METHODS = ["esd-x", "esd-u", "uce", "stereo", "ap", "dm2", "advunlearn", "rece"]  # erase.py --method (ESD twice)
ATTACKS = ["cce", "unlearndiff", "p4d-n", "p4d-k", "ringabell"]  # attack.py --attack
PRECISIONS = ["fp32", "fp16", "bf16"]  # --precisions; PRECISION_FLAGS: the command-line flags of each
PRECISION_FLAGS = {"fp32": [], "fp16": ["--half"], "bf16": ["--bf16"]}  # fp16 weights (GPU only); bf16 autocast
CONCEPT = "van gogh"  # real SD's preset (data.sd_concept): a style, so ESD's auto train method is esd-x
MEMORY_GOAL_GB = 24.0  # goal: every method fits a 24 GB card
SPEEDUP_GOAL = 5.0  # goal: batched attacks at least 5x the target prompts per second of one at a time
EVAL_STEPS = 2  # DDIM steps of the pictures attacks draw to judge: the timed cost is the attack's iterations
DM2_NEVER_STOP = -2.0  # --dm2-threshold below any verify score (a mean cosine, in [-1, 1]): the loop always runs
RUN_TIMEOUT = {"tiny": 600, "sd14": 3600}  # seconds one method or attack run may take before it counts as failed
# per size: optimisation steps per run (a rate: a few suffice), target prompts in a batched attack, pool pictures
# STEREO, DM2 and CCE draw (at the code's own 25 DDIM steps, so few), and the CLIP judge's open_clip architecture
BUDGET = {"tiny": {"iterations": 2, "targets": 4, "pictures": 1, "clip_arch": "bench-tiny-clip"},
          "sd14": {"iterations": 5, "targets": 8, "pictures": 4, "clip_arch": "ViT-B-32"}}

# SD v1.4's published configs (CompVis/stable-diffusion-v1-4: unet/, vae/, text_encoder/, scheduler/)
SD14_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 norm_num_groups=32, act_fn="silu", downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
                 mid_block_scale_factor=1, norm_eps=1e-5, center_input_sample=False)
SD14_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, act_fn="silu", scaling_factor=0.18215)
SD14_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
                 bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)  # ids: the CLIP tokenizer's own
SD14_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
# tiny: the same blocks, depth, vocabulary and schedule, narrowed; 16x16 latents -> 128 px pictures, above the mini
# world's 64 px, so the runs take real SD's code path (its concept presets, the CLIP judge, DM2's CLIP verifier)
TINY_UNET = dict(SD14_UNET, sample_size=16, block_out_channels=(32, 32, 64, 64), cross_attention_dim=32,
                 attention_head_dim=2)
TINY_VAE = dict(SD14_VAE, sample_size=128, block_out_channels=(8, 16, 16, 16), norm_num_groups=8)
TINY_TEXT = dict(SD14_TEXT, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 projection_dim=32)
ARCH = {"sd14": (SD14_UNET, SD14_VAE, SD14_TEXT), "tiny": (TINY_UNET, TINY_VAE, TINY_TEXT)}
# open_clip config of the tiny judge (registered in each run's process: open_clip knows only its own configs)
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
CLIP_CONFIG_ENV = "BENCH_GPU_CLIP_CONFIG"  # tells a run's process which open_clip config file to register


# ---- the model and the judge's weights ---------------------------------------------------------------------------
def build_pipeline(size, folder):
    """SD v1.4's architecture at `size` with random weights, saved as a StableDiffusionPipeline folder (reused when
    the folder was built from the same configs)."""
    unet_cfg, vae_cfg, text_cfg = ARCH[size]
    stamp = os.path.join(folder, "bench_configs.json")
    wanted = json.loads(json.dumps({"unet": unet_cfg, "vae": vae_cfg, "text": text_cfg, "ddim": SD14_SCHEDULER}))
    if os.path.exists(stamp) and json.load(open(stamp)) == wanted:
        return folder
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    sys.path.insert(0, ROOT)
    import mini  # its build_tokenizer writes CLIP's tokenizer from the BPE merges open_clip ships (offline)
    torch.manual_seed(0)
    print(f"building SD v1.4's architecture ({size}) with random weights in {folder}", flush=True)
    tokenizer = mini.build_tokenizer(folder + ".tokenizer")
    pipe = StableDiffusionPipeline(vae=AutoencoderKL(**vae_cfg), text_encoder=CLIPTextModel(CLIPTextConfig(**text_cfg)),
                                   tokenizer=tokenizer, unet=UNet2DConditionModel(**unet_cfg),
                                   scheduler=DDIMScheduler(**SD14_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    json.dump(wanted, open(stamp, "w"), indent=1)
    return folder


def clip_judge_files(size, folder):
    """(open_clip architecture, weights file, config file to register or None): a random CLIP for the judge and DM2."""
    arch = BUDGET[size]["clip_arch"]
    os.makedirs(folder, exist_ok=True)
    weights = os.path.join(folder, f"{arch}.pt")
    config = None
    if arch == "bench-tiny-clip":
        config = os.path.join(folder, f"{arch}.json")
        json.dump(TINY_CLIP, open(config, "w"))
    if not os.path.exists(weights):
        import open_clip
        import torch
        if config:
            open_clip.add_model_config(config)
        torch.manual_seed(0)
        torch.save(open_clip.create_model(arch).state_dict(), weights + ".part")
        os.replace(weights + ".part", weights)
    return arch, weights, config


# ---- one run of a command line in its own process ----------------------------------------------------------------
def child():
    """Inside a run's process: argv is [script, record file, *the script's arguments]. Runs the script as its command
    line does, then writes the process's peak memory to the record file, whether the script succeeded or not."""
    import resource
    import runpy
    script, record, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if os.environ.get(CLIP_CONFIG_ENV):
        import open_clip
        open_clip.add_model_config(os.environ[CLIP_CONFIG_ENV])
    sys.path.insert(0, ROOT)
    sys.argv = [script, *args]
    try:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    finally:
        import torch
        gpu = torch.cuda.is_available() and torch.cuda.is_initialized()
        json.dump({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
                   "peak_gpu_bytes": torch.cuda.max_memory_allocated() if gpu else None,
                   "gpu_name": torch.cuda.get_device_name() if gpu else None}, open(record, "w"))


def one_line_reason(stderr, rc):
    """The line that says why a run failed: our CLIs' 'error: ...' line, else the exception's last line."""
    lines = [x.strip() for x in stderr.replace("\r", "\n").splitlines() if x.strip()]
    said = [x for x in lines if x.startswith("error:")] or [x for x in lines if "Error" in x.split(":")[0]] or lines
    return (said[-1] if said else f"exit status {rc}, nothing on stderr")[:240]


def run_cli(script, args, out, timeout, env):
    """Run `script` (erase.py or attack.py) with args; (the record of its peak memory, None or the reason it
    failed). Its output goes to out/../<name>.log."""
    record = out + ".memory.json"
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if os.path.exists(record):
        os.remove(record)
    cmd = [sys.executable, "-c", f"import sys; sys.path.insert(0, {HERE!r}); import bench_gpu; bench_gpu.child()",
           script, record, *args]
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        open(out + ".log", "w").write(f"$ python {script} {shlex.join(args)}\n{e.stdout}\n{e.stderr}\ntimed out")
        return None, f"timed out after {timeout} s"
    open(out + ".log", "w").write(f"$ python {script} {shlex.join(args)}\n{r.stdout}\n{r.stderr}")
    memory = json.load(open(record)) if os.path.exists(record) else None
    return memory, (None if r.returncode == 0 else one_line_reason(r.stderr, r.returncode))


# ---- what each method and attack runs, and how many iterations that is --------------------------------------------
def method_args(method, n, pictures):
    """erase.py arguments that run `method` for about n iterations, and the iterations that makes (DM2: per loop)."""
    if method in ("esd-x", "esd-u"):
        return ["--method", "esd", "--train-method", method, "--iterations", str(n)], n
    if method == "uce":  # closed form: the one edit is its iteration
        return ["--method", "uce"], 1
    if method == "stereo":  # one round: n ESD steps, n inversion steps, then n stage-2 steps
        return ["--method", "stereo", "--rounds", "1", "--ste-iterations", str(n), "--ti-steps", str(n),
                "--ti-images", str(pictures), "--reo-iterations", str(n)], 3 * n
    if method == "ap":
        return ["--method", "ap", "--iterations", str(n)], n
    if method == "dm2":  # one loop: n mining steps, then n circumventing steps
        return ["--method", "dm2", "--dm2-max-loops", "1", "--dm2-mine-steps", str(n), "--dm2-circumvent-steps",
                str(n), "--dm2-pool", str(max(pictures, 1)), "--dm2-mine-images", str(max(pictures, 1)),
                "--dm2-verify-images", str(pictures), "--dm2-threshold", str(DM2_NEVER_STOP)], 2 * n
    if method == "advunlearn":
        return ["--method", "advunlearn", "--iterations", str(n)], n
    if method == "rece":  # the UCE edit, then n closed-form rounds
        return ["--method", "rece", "--rece-rounds", str(n)], n + 1
    raise ValueError(f"unknown method {method!r}")


BATCH_KNOB = {"cce": "--batch"}  # CCE learns one token for every target: it batches pool pictures; the rest batch
#   target prompts (--num-targets), each optimised on its own


def attack_args(attack, n, batch, pictures):
    """attack.py arguments for `attack` over n iterations with `batch` in its batching knob, and the iterations."""
    if attack == "cce":  # one target prompt: the inversion is the work
        return ["--attack", "cce", "--steps", str(n), "--num-images", str(pictures), "--batch", str(batch),
                "--num-targets", "1"], n
    targets = ["--num-targets", str(batch)]
    if attack == "unlearndiff":  # one iteration per timestep of the sweep; judged once, at the end
        return ["--attack", "unlearndiff", *targets, "--timesteps", str(n), "--iters-per-t", "1",
                "--check-every", str(n)], n
    if attack in ("p4d-n", "p4d-k"):
        return ["--attack", attack, *targets, "--iterations", str(n), "--check-every", str(n)], n
    if attack == "ringabell":  # a generation of the genetic search is its iteration
        return ["--attack", "ringabell", *targets, "--generations", str(n)], n
    raise ValueError(f"unknown attack {attack!r}")


# ---- measuring ---------------------------------------------------------------------------------------------------
def row_of(kind, name, precision, iterations, cost, memory, reason, device, cli):
    """One table row as a dict: the recorded cost turned into rates, the memory goal checked on the measurement."""
    row = {"kind": kind, "name": name, "precision": precision, "cli": cli, "status": "ok" if reason is None
           else "failed", "reason": reason, "iterations": iterations}
    if memory:
        peak = memory["peak_gpu_bytes"] if device == "cuda" else memory["peak_rss_bytes"]
        row["peak_memory_gb"] = None if peak is None else round(peak / 1e9, 3)
        row["gpu_name"] = memory.get("gpu_name")
    if reason is None:
        seconds = cost["seconds"]
        row.update(seconds=seconds, unet_evals=cost["unet_evals"], text_encoder_evals=cost["text_encoder_evals"],
                   s_per_iteration=seconds / iterations if iterations else None,
                   unet_evals_per_s=cost["unet_evals"] / seconds if seconds else None,
                   text_encoder_evals_per_s=cost["text_encoder_evals"] / seconds if seconds else None)
        if row.get("peak_memory_gb") is not None:
            row["within_memory_goal"] = row["peak_memory_gb"] <= MEMORY_GOAL_GB
    return row


def measure_method(method, precision, ctx):
    args, iterations = method_args(method, ctx["iterations"], ctx["pictures"])
    out = os.path.join(ctx["work"], precision, method)
    cli = args + ["--concept", CONCEPT, "--model", ctx["model"], "--device", ctx["device"], "--out", out,
                  "--overwrite", "--grid-seeds", "0", "--clip-arch", ctx["clip_arch"], "--clip-weights",
                  ctx["clip_weights"], *PRECISION_FLAGS[precision]]
    memory, reason = run_cli("erase.py", cli, out, ctx["timeout"], ctx["env"])
    config = json.load(open(os.path.join(out, "config.json"))) if reason is None else {}
    if method == "dm2" and reason is None:
        iterations *= max(1, config.get("dm2_loops", 1))
    row = row_of("method", method, precision, iterations, config.get("cost"), memory, reason, ctx["device"],
                 "python erase.py " + shlex.join(cli))
    row["run"] = out
    return row


def measure_attack(attack, precision, batch, ctx):
    args, iterations = attack_args(attack, ctx["iterations"], batch, ctx["pictures"])
    out = os.path.join(ctx["work"], precision, f"{attack}_batch{batch}")
    cli = args + ["--concept", CONCEPT, "--weights", ctx["weights"], "--device", ctx["device"], "--out", out,
                  "--overwrite", "--eval-steps", str(EVAL_STEPS), "--attack-all-targets", "--checkpoint-every", "0",
                  "--judge", "clip", "--clip-arch", ctx["clip_arch"], "--clip-weights", ctx["clip_weights"],
                  *PRECISION_FLAGS[precision]]
    memory, reason = run_cli("attack.py", cli, out, ctx["timeout"], ctx["env"])
    metrics = json.load(open(os.path.join(out, "metrics.json"))) if reason is None else {}
    row = row_of("attack", attack, precision, iterations, metrics.get("cost"), memory, reason, ctx["device"],
                 "python attack.py " + shlex.join(cli))
    row.update(batch=batch, knob=BATCH_KNOB.get(attack, "--num-targets"))
    if reason is None:  # work units per second: pool pictures (CCE's knob) or target prompts
        units = iterations * batch if attack == "cce" else batch
        row["units_per_s"] = units / row["seconds"] if row["seconds"] else None  # None: under the 0.01 s recorded
    return row


def attacked_model(rows, ctx):
    """(the run folder attacks attack, None) or (None, why there is none): the fp32 UCE run when it was measured and
    succeeded, else a fresh one."""
    for r in rows:
        if r["name"] == "uce" and r["precision"] == "fp32" and r["status"] == "ok":
            return r["run"], None
    row = guarded(measure_method, "method", "uce", "fp32", dict(ctx, work=os.path.join(ctx["work"], "attacked")))
    if row["status"] != "ok":
        return None, f"the UCE run they attack failed: {row['reason']}"
    return row["run"], None


def guarded(fn, kind, name, precision, *args, **fields):
    """fn(name, precision, *args), or a failed row saying what went wrong in this script (a run folder it could
    not read, say): one bad row never loses the others."""
    try:
        return fn(name, precision, *args)
    except Exception as e:  # anything; the row carries its one line
        why = f"bench_gpu: {type(e).__name__}: {e}".splitlines()[0][:240]
        return {"kind": kind, "name": name, "precision": precision, "status": "failed", "reason": why, **fields}


def speedup_of(batched, single):
    """The batched-vs-one-at-a-time comparison of one attack: the goal checked on the measured rates."""
    s = {"name": batched["name"], "precision": batched["precision"], "knob": batched["knob"],
         "batch": batched["batch"], "status": "ok", "reason": None}
    failed = [r for r in (batched, single) if r["status"] != "ok"]
    if failed:
        s.update(status=failed[0]["status"], reason=failed[0]["reason"])
        return s
    if not (batched["units_per_s"] and single["units_per_s"]):
        s.update(status="failed", reason="a run recorded 0 seconds (its cost has 0.01 s resolution): no rate")
        return s
    s.update(batched_per_s=batched["units_per_s"], single_per_s=single["units_per_s"],
             speedup=batched["units_per_s"] / single["units_per_s"])
    s["meets_goal"] = s["speedup"] >= SPEEDUP_GOAL
    return s


def say(row):
    """Print a row's measured numbers as it finishes."""
    what = f"{row['precision']} {row['kind']} {row['name']}" + (f" ({row['knob']} {row['batch']})" if "batch" in row
                                                                   else "")
    if row["status"] != "ok":
        print(f"{what}: {row['status'].upper()}: {row['reason']}", flush=True)
        return
    print(f"{what}: {fmt(row['s_per_iteration'])} s/iteration over {row['iterations']}, "
          f"{fmt(row['unet_evals_per_s'])} UNet evals/s, peak memory {fmt(row.get('peak_memory_gb'))} GB", flush=True)


def measure(a, ctx, save):
    """Every requested method and attack at every requested precision: (rows, speed-ups); save(rows, speed-ups)
    after each, so that a stopped benchmark leaves a report of what it measured."""
    rows, speedups = [], []
    for precision in a.precisions:
        for method in a.methods:
            rows.append(guarded(measure_method, "method", method, precision, ctx))
            say(rows[-1])
            save(rows, speedups)
        if a.attacks and "weights" not in ctx:
            ctx["weights"], ctx["no_weights"] = attacked_model(rows, ctx)
        for attack in a.attacks:
            pair = [attack_row(attack, precision, b, ctx) for b in (ctx["targets"], 1)]
            for r in pair:
                say(r)
            rows.append(dict(pair[0], one_at_a_time=pair[1]))
            speedups.append(speedup_of(*pair))
            save(rows, speedups)
    return rows, speedups


def attack_row(attack, precision, batch, ctx):
    fields = {"knob": BATCH_KNOB.get(attack, "--num-targets"), "batch": batch}
    if ctx["no_weights"]:
        return {"kind": "attack", "name": attack, "precision": precision, "status": "failed",
                "reason": ctx["no_weights"], **fields}
    return guarded(measure_attack, "attack", attack, precision, batch, ctx, **fields)


# ---- the report --------------------------------------------------------------------------------------------------
def fmt(x, digits=3):
    """A number with `digits` significant figures; '-' for none."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def goal_cell(value):
    return "-" if value is None else ("yes" if value else "**no**")


def table(rows, precision):
    head = ["", "method / attack", "iterations", "s/iteration", "UNet evals/s", "text-encoder evals/s",
            "peak memory GB", f"within {MEMORY_GOAL_GB:g} GB", "status"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        if r["precision"] != precision:
            continue
        name = r["name"] + (f" ({r['knob']} {r['batch']})" if "batch" in r else "")
        status = "ok" if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        lines.append("| " + " | ".join([r["kind"], name, fmt(r.get("iterations")), fmt(r.get("s_per_iteration")),
                                        fmt(r.get("unet_evals_per_s")), fmt(r.get("text_encoder_evals_per_s")),
                                        fmt(r.get("peak_memory_gb")), goal_cell(r.get("within_memory_goal")),
                                        status.replace("|", "/")]) + " |")
    return lines


def speedup_table(speedups, precision):
    head = ["attack", "batching knob", "units", "batched: units/s", "one at a time: units/s", "speed-up",
            f"at least {SPEEDUP_GOAL:g}x", "status"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for s in speedups:
        if s["precision"] != precision:
            continue
        units = "pool pictures" if s["knob"] == "--batch" else "target prompts"
        knob = f"{s['knob']} {s['batch']} vs 1" if "batch" in s else s["knob"]
        status = "ok" if s["status"] == "ok" else f"{s['status']}: {s['reason']}"
        lines.append("| " + " | ".join([s["name"], knob, units, fmt(s.get("batched_per_s")),
                                        fmt(s.get("single_per_s")), fmt(s.get("speedup")) + ("x" if "speedup" in s
                                                                                             else ""),
                                        goal_cell(s.get("meets_goal")), status.replace("|", "/")]) + " |")
    return lines


ITERATION_MEANS = ("an iteration: ESD-x/ESD-u, AP, AdvUnlearn: one training step (ESD's partial DDIM sampling of "
                   "x_t included); UCE: its one closed-form edit; RECE: the UCE edit and each closed-form round; "
                   "STEREO: each stage-1 ESD step, inversion step and stage-2 step of one round; DM2: each mining and "
                   "circumventing step of one loop; CCE: an inversion step; UnlearnDiff: a timestep of the sweep (one "
                   "step); P4D: a step; Ring-A-Bell: a generation of the genetic search. Costs are whole runs: "
                   "pictures a method draws for itself (STEREO's and DM2's pools, DM2's verification, the attacks' "
                   f"judged pictures at {EVAL_STEPS} DDIM steps) are in them; model loading and the pictures an attack "
                   "draws before attacking are not")


def header(a, ctx, rows):
    import platform
    import torch
    gpu = next((r["gpu_name"] for r in rows if r.get("gpu_name")), None)
    device = gpu if a.device == "cuda" else cpu_name()
    memory = ("torch.cuda.max_memory_allocated of the run's process" if a.device == "cuda"
              else "peak resident set size of the run's process (CPU)")
    return {"device": device or "unknown (no run reached the GPU)", "device_flag": a.device,
            "torch": torch.__version__, "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
            "command": command_line(a), "size": a.size, "image_px": image_px(a.size), "concept": CONCEPT,
            "model": ctx["model"], "runs": ctx["work"], "attacked_model": ctx.get("weights"),
            "memory_measure": memory,
            "iterations": ctx["iterations"], "batched_targets": ctx["targets"],
            "goal": f"every method within {MEMORY_GOAL_GB:g} GB peak memory; batched attacks at least "
                    f"{SPEEDUP_GOAL:g}x the throughput of one at a time",
            "iteration_means": ITERATION_MEANS}


def report_md(h, rows, speedups, precisions):
    lines = [f"# Cost of erasure methods and attacks: SD v1.4 architecture ({h['size']}, {h['image_px']} px)", "",
             f"- device: {h['device']} (`--device {h['device_flag']}`); torch {h['torch']}, python {h['python']}, "
             f"{h['cpu_threads']} CPU threads",
             f"- regenerate: `{h['command']}`",
             f"- goal: {h['goal']}; every row says whether it meets it, from its own measurement",
             f"- model: random weights, SD v1.4's configs; concept \"{h['concept']}\"; "
             + (f"attacks attack a UCE erasure (`{h['attacked_model']}`)" if h["attacked_model"] else "no attacks")
             + f"; {h['iterations']} iterations a run; batched attacks {h['batched_targets']} at once",
             f"- peak memory: {h['memory_measure']}; rates from the cost each run records (config.json / "
             f"metrics.json; run folders and logs in `{h['runs']}`)",
             f"- {h['iteration_means']}"]
    for p in precisions:
        lines += ["", f"## {p}", "", *table(rows, p), "", f"### {p}: batched against one at a time", "",
                  *speedup_table(speedups, p)]
    return "\n".join(lines) + "\n"


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return "CPU: " + (platform.processor() or "unknown")


def image_px(size):
    unet, vae, _ = ARCH[size]
    return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)


def command_line(a):
    """The command that regenerates the report, run from the repository; paths relative to it when inside it."""
    def rel(path):
        return os.path.relpath(path, ROOT) if os.path.commonpath([path, ROOT]) == ROOT else path
    return shlex.join(["python", "scripts/bench_gpu.py", "--size", a.size, "--device", a.device, "--methods",
                       *a.methods, "--attacks", *a.attacks, "--precisions", *a.precisions, "--out", rel(a.out),
                       "--work", rel(a.work)])


def finite(x):
    """x with every float that is not finite (nan, inf) made None: report.json stays strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite(v) for v in x]
    return x


# ---- command line ------------------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse(argv=None):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="sd14", choices=list(ARCH), help="sd14: SD v1.4's sizes; tiny: toy sizes (CPU)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--methods", nargs="*", default=METHODS, choices=METHODS, metavar="METHOD",
                   help=f"any of: {', '.join(METHODS)} (--methods alone: none)")
    p.add_argument("--attacks", nargs="*", default=ATTACKS, choices=ATTACKS, metavar="ATTACK",
                   help=f"any of: {', '.join(ATTACKS)} (--attacks alone: none)")
    p.add_argument("--precisions", nargs="+", default=PRECISIONS, choices=PRECISIONS, metavar="PRECISION",
                   help=f"any of: {', '.join(PRECISIONS)}")
    p.add_argument("--out", default=os.path.join(ROOT, "results", "gpu"),
                   help="report.md and report.json (default: results/gpu in the repository)")
    p.add_argument("--work", default=os.path.join(ROOT, "work", "bench_gpu"),
                   help="the built model, the CLIP judge's weights and the runs (default: work/bench_gpu in the "
                        "repository, which git ignores: SD v1.4's pipeline is 4 GB)")
    a = p.parse_args(argv)
    a.out, a.work = os.path.abspath(a.out), os.path.abspath(a.work)
    for name in ("methods", "attacks", "precisions"):
        setattr(a, name, list(dict.fromkeys(getattr(a, name))))  # each once, in the order given
    return a


def write_report(a, ctx, rows, speedups, t0):
    """report.json and report.md in --out; returns the Markdown."""
    h = dict(header(a, ctx, rows), wall_seconds=round(time.time() - t0, 1))
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump(finite({"header": h, "rows": rows, "speedups": speedups}), f, indent=1, allow_nan=False)
    md = report_md(h, rows, speedups, a.precisions)
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write(md)
    return md


def main(argv=None):
    a = parse(argv)
    t0 = time.time()
    import torch
    if a.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is available here; use --device cpu", file=sys.stderr)
        raise SystemExit(2)
    os.makedirs(a.work, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    model = build_pipeline(a.size, os.path.join(a.work, f"pipeline_{a.size}"))
    arch, weights, config = clip_judge_files(a.size, os.path.join(a.work, "clip"))
    env = dict(os.environ, **({CLIP_CONFIG_ENV: config} if config else {}))
    b = BUDGET[a.size]
    ctx = {"work": os.path.join(a.work, a.size), "model": model, "device": a.device, "clip_arch": arch,
           "clip_weights": weights, "env": env, "iterations": b["iterations"], "targets": b["targets"],
           "pictures": b["pictures"], "timeout": RUN_TIMEOUT[a.size]}
    rows, speedups = measure(a, ctx, lambda r, s: write_report(a, ctx, r, s, t0))
    print(write_report(a, ctx, rows, speedups, t0))
    print(f"-> {os.path.join(a.out, 'report.md')}, report.json ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
