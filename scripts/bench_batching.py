"""Attacks batch their target prompts. This measures target prompts per second with all targets in one batch
against the same code run one target at a time, on the mini world's "van gogh" erased by UCE (or --weights).
Each target draws its own random stream and its loss is its own, so both ways find the same prompts (checked).

    python scripts/bench_batching.py                      # writes results/batching/report.md and prints it
    python scripts/bench_batching.py --attacks unlearndiff --targets 8 --single 2
    python scripts/bench_batching.py --attacks none       # only the ceiling below

The report starts with the ceiling: the attacks' inner step (a UNet forward and backward to the conditioning) timed
per sample at batch 1 and at --targets. Batching can only win what that ratio allows: on a CPU, where the UNet is
compute-bound already at batch 1, it is small; on a GPU, where batch 1 leaves the device mostly idle, it is large.
"""
import time
import argparse
import os
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

import attack  # noqa: E402
import data  # noqa: E402
import judges  # noqa: E402
import erase  # noqa: E402
import sd as sdlib  # noqa: E402

ATTACKS = ["unlearndiff", "p4d-n", "p4d-k"]  # the attacks that optimise each target prompt on its own
TARGETS = 16  # target prompts attacked in one batch
SINGLE = 4  # of them, attacked one at a time (prompts per second is a rate: a few suffice)
CONCEPT = "van gogh"
CEILING_REPS = 5  # timed repetitions of the inner step at each batch size (after one warm-up)


def inner_step_seconds(sd, batch, reps=CEILING_REPS):
    """Seconds per sample of the attacks' inner step: UNet forward at a random timestep, backward to the text
    conditioning (what UnlearnDiff and P4D differentiate), at `batch` samples."""
    g = torch.Generator().manual_seed(0)
    hidden = sd.text_encoder.config.hidden_size
    z = torch.randn(batch, *sd.latent_shape, generator=g)  # the model's own latent size (the mini VAE halves, SD's
    #   divides by 8): a latent too small makes batch 1 all overhead and overstates what batching wins
    t = torch.randint(0, 1000, (batch,), generator=g)
    cond = torch.randn(batch, 77, hidden, generator=g)
    times = []
    for k in range(reps + 1):
        c = cond.clone().requires_grad_(True)
        t0 = time.perf_counter()
        sdlib.eps(sd, sd.unet, z, t, c).square().mean().backward()
        if k:  # the first is a warm-up
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] / batch


def time_attacks(a, attacks):
    """Table rows: each attack on --targets targets in one batch against --single of them one at a time."""
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        weights = a.weights
        if weights is None:
            weights = os.path.join(scratch, "uce")
            erase.main(["--method", "uce", "--concept", CONCEPT, "--out", weights, "--grid-seeds", "1"])
        run = sdlib.read_run_config(weights)
        sd = sdlib.load(sdlib.base_model_of(run))  # the original model first: it draws the target pictures
        concept = data.get_concept(CONCEPT, sd.world)
        targets = attack.pick_targets(concept, a.targets, 0)
        reference = sdlib.generate(sd, [t for t, _ in targets], [s for _, s in targets], attack.EVAL_STEPS,
                                   attack.EVAL_GUIDANCE)
        original = attack.original_weights(sd, weights)
        sdlib.apply_run(sd, weights, run)
        for name in attacks:
            args = attack.parse(["--attack", name, "--concept", CONCEPT, "--out", os.path.join(scratch, name)])
            judge = judges.make_judge(concept, args)
            extra = [original] if name.startswith("p4d") else []
            fn = attack.unlearndiff if name == "unlearndiff" else attack.p4d
            with sdlib.Timer(sd) as batched:
                together = fn(sd, reference, concept, targets, judge, args, *extra)
            with sdlib.Timer(sd) as alone:
                apart = [fn(sd, reference[[i]], concept, [targets[i]], judge, args, *extra) for i in range(a.single)]
            same = all(apart[i][0][0] == together[0][i] for i in range(a.single))
            rate_b, rate_s = a.targets / batched.seconds, a.single / alone.seconds
            rows.append([name, f"{a.targets}", f"{rate_b:.3f}", f"{batched.unet_evals / a.targets:.0f}",
                         f"{rate_s:.4f}", f"{alone.unet_evals / a.single:.0f}", f"{rate_b / rate_s:.1f}x",
                         "yes" if same else "NO"])
            print(f"{name}: batched {rate_b:.3f} prompts/s, one at a time {rate_s:.4f} prompts/s, "
                  f"speed-up {rate_b / rate_s:.1f}x, same prompts: {same}", flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated, from: {', '.join(ATTACKS)}")
    p.add_argument("--targets", type=int, default=TARGETS)
    p.add_argument("--single", type=int, default=SINGLE)
    p.add_argument("--weights", default=None, help="run folder to attack (default: a fresh UCE run of van gogh)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "batching"))
    a = p.parse_args()
    attacks = [] if a.attacks == "none" else [x.strip() for x in a.attacks.split(",") if x.strip()]
    bad = [x for x in attacks if x not in ATTACKS] + (["(none given)"] if not attacks and a.attacks != "none" else [])
    if bad:
        sdlib.fail(f"unknown attack {', '.join(bad)}; choose from: none, {', '.join(ATTACKS)}")
    if not 1 <= a.single <= a.targets:
        sdlib.fail("--single must be between 1 and --targets")
    torch.manual_seed(0)
    sd = sdlib.load(None)
    one, many = inner_step_seconds(sd, 1), inner_step_seconds(sd, a.targets)
    ceiling = [f"Ceiling: the attacks' inner step (UNet forward + backward to the conditioning, median of "
               f"{CEILING_REPS}) on {torch.get_num_threads()} CPU threads; batching can win at most about "
               f"{one / many:.1f}x here.", "",
               "| batch | ms per sample | samples/s |", "|---|---|---|",
               f"| 1 | {one * 1000:.1f} | {1 / one:.1f} |", f"| {a.targets} | {many * 1000:.1f} | {1 / many:.1f} |"]
    print("\n".join(ceiling), flush=True)
    rows = time_attacks(a, attacks) if attacks else []
    head = ["attack", "targets in the batch", "prompts/s batched", "UNet evals per prompt",
            "prompts/s one at a time", "UNet evals per prompt", "speed-up", "same prompts"]
    lines = ["# Batched attacks: target prompts per second", "",
             f"`python scripts/bench_batching.py --attacks {a.attacks} --targets {a.targets} --single "
             f"{a.single}` on {torch.get_num_threads()} CPU threads ({'UCE' if a.weights is None else a.weights} "
             f"erasing \"{CONCEPT}\", seed 0, default attack budgets; one at a time: the first {a.single} targets).",
             "", *ceiling]
    if rows:
        lines += ["", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    os.makedirs(a.out, exist_ok=True)
    # --attacks none measures the ceiling alone: it goes to its own file, the attack table stays as it was
    open(os.path.join(a.out, "report.md" if rows else "ceiling.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
