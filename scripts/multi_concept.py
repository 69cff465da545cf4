"""Several concepts erased in one run against one run per concept, measured the same way.

    python scripts/multi_concept.py                      # UCE; van gogh, triangle, purple (a style, a shape, a colour)
    python scripts/multi_concept.py --methods uce,esd-x --concepts "van gogh,stripes,red"

For each method: erases each concept alone and all of them in one run (`erase.py --concept A --concept B ...`),
then evaluates the base model and every run on every concept (`evaluate.py evaluate --concept A --concept B ...`:
each concept's explicit and implicit rate under its own judge, preservation on prompts that show none of them).
Finished runs and evaluations are reused, so a stopped call resumes. Prints the table and writes
results/multi_concept/report.md.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

CONCEPTS = "van gogh,triangle,purple"  # one of each kind, so a joint run must serve a style, a shape and a colour
METHODS = "uce"  # UCE's paper erases many concepts in one edit; it is also the cheapest run on 2 cores
METHOD_ARGS = {"uce": ["--method", "uce"], "rece": ["--method", "rece"],
               "esd-x": ["--method", "esd", "--train-method", "esd-x"],  # ESD's 200 iterations, as every profile
               "esd-u": ["--method", "esd", "--train-method", "esd-u"]}
EVAL_ARGS = ["--num-seeds", "1", "--num-other", "30", "--num-implicit", "60"]  # the quick profile's evaluation


def run(cmd, log):
    print(f"[{time.strftime('%H:%M:%S')}] $ {' '.join(cmd)}", flush=True)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "w") as f:
        if subprocess.run([sys.executable, *cmd], cwd=HERE, stdout=f, stderr=subprocess.STDOUT).returncode:
            sys.exit(f"failed: {' '.join(cmd)}; see {log}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concepts", default=CONCEPTS, help="comma-separated mini-world concepts (at least two)")
    p.add_argument("--methods", default=METHODS, help=f"comma-separated, from: {', '.join(METHOD_ARGS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=os.path.join(HERE, "work", "multi_concept"))
    p.add_argument("--out", default=os.path.join(HERE, "results", "multi_concept"))
    a = p.parse_args(argv)
    import data
    concepts = [c.strip() for c in a.concepts.split(",") if c.strip()]
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [c for c in concepts if c not in data.MINI_CONCEPTS] + [m for m in methods if m not in METHOD_ARGS]
    if bad or len(concepts) < 2 or not methods or len(set(concepts)) < len(concepts):
        sys.exit(f"need two or more distinct concepts from {', '.join(data.MINI_CONCEPTS)} and methods from "
                 f"{', '.join(METHOD_ARGS)}; got {', '.join(bad) or a.concepts + ' / ' + a.methods}")
    os.makedirs(a.work, exist_ok=True)
    every = [x for c in concepts for x in ("--concept", c)]
    slug = lambda c: c.replace(" ", "_")  # noqa: E731
    evals = [("base model", "-", None)]  # (run, method, weights folder)
    for m in methods:
        for name, words in [*[(c, ["--concept", c]) for c in concepts], ("all in one run", every)]:
            out = os.path.join(a.work, "runs", f"{m}_{slug(name)}_s{a.seed}")
            if not os.path.exists(os.path.join(out, "config.json")):
                run(["erase.py", *METHOD_ARGS[m], *words, "--seed", str(a.seed), "--overwrite", "--out", out],
                    out + ".log")
            evals.append((name, m, out))
    rows = []
    for name, m, weights in evals:
        ev = os.path.join(a.work, "eval", f"{m}_{slug(name)}_s{a.seed}" if weights else "base")
        if not os.path.exists(os.path.join(ev, "metrics.json")):
            run(["evaluate.py", "evaluate", *every, *(["--weights", weights] if weights else []), "--seed", str(a.seed),
                 *EVAL_ARGS, "--overwrite", "--out", ev], ev + ".log")
        mt = json.load(open(os.path.join(ev, "metrics.json")))
        rows.append((name, m, mt, mt.get("erase_cost") or {}))  # evaluate.py copies the run's cost
    f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    lines = ["# Several concepts in one run against one run each", "",
             f"Regenerate: `python scripts/multi_concept.py --methods {','.join(methods)} --concepts \"{','.join(concepts)}\" "
             f"--seed {a.seed}` (evaluate.py evaluate {' '.join(EVAL_ARGS)}, seed {a.seed}; one picture per prompt).", "",
             "Each row is one model evaluated on every concept: explicit rate / implicit rate of each (its own "
             "judge; lower is more erased), preservation on prompts that show none of them (higher is better), "
             "erase cost.", "",
             "| run | method | " + " | ".join(f"{c} explicit / implicit" for c in concepts) +
             " | preservation | erase s | erase UNet evals |",
             "|---" * (len(concepts) + 5) + "|"]
    for name, m, mt, cost in rows:
        per = mt.get("concepts") or {}
        cells = [f"{f(per.get(c, {}).get('concept_rate'))} / {f(per.get(c, {}).get('implicit_rate'))}" for c in concepts]
        lines.append(f"| {name} | {m} | " + " | ".join(cells) + f" | {f(mt.get('preservation'))} | "
                     f"{cost.get('seconds', '-')} | {cost.get('unet_evals', '-')} |")
    for m in methods:  # the comparison the table is for: each concept after its own run and after the joint run
        own = {c: next(r for r in rows if r[0] == c and r[1] == m)[2]["concepts"][c] for c in concepts}
        joint = next(r for r in rows if r[0] == "all in one run" and r[1] == m)[2]["concepts"]
        lines += ["", f"{m}: explicit rate of each concept after its own run -> after the joint run: " + "; ".join(
            f"{c} {f(own[c]['concept_rate'])} -> {f(joint[c]['concept_rate'])}" for c in concepts) + "."]
    os.makedirs(a.out, exist_ok=True)
    open(os.path.join(a.out, "report.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
