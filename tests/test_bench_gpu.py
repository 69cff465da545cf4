"""scripts/bench_gpu.py on the tiny SD v1.4 architecture on the CPU: a row per requested method and attack with finite
positive numbers (fp32 and bf16 autocast), the batched-vs-one-at-a-time table, a run
that fails reported with its reason, and a bad choice refused in one line."""
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "bench_gpu.py")
METHODS = ["esd-x", "uce"]  # a training method and the closed-form one
ATTACKS = ["unlearndiff"]  # a batched per-target attack
# one OpenMP thread: on 2 busy cores a second thread spin-waits for a descheduled partner (measured 100x slower)
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def bench(*args, timeout=600):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    """(out folder, report.json, report.md) of the small subset, fp32 and bf16 autocast."""
    out = tmp_path_factory.mktemp("bench") / "gpu"
    r = bench("--size", "tiny", "--device", "cpu", "--methods", *METHODS, "--attacks", *ATTACKS,
              "--precisions", "fp32", "bf16", "--out", str(out), "--work", str(out / "work"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "s/iteration" in r.stdout  # the numbers are printed too
    return out, json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_row_per_method_and_attack_with_finite_positive_numbers(tiny_report, precision):
    _, rep, md = tiny_report
    rows = {r["name"]: r for r in rep["rows"] if r["precision"] == precision}
    assert sorted(rows) == sorted(METHODS + ATTACKS)
    for name, r in rows.items():
        assert r["status"] == "ok", r
        for key in ("s_per_iteration", "seconds", "peak_memory_gb", "iterations"):
            assert positive(r[key]), (name, key, r[key])
        assert r["within_memory_goal"] is (r["peak_memory_gb"] <= 24)
        # UCE is closed-form: text-encoder evaluations only; everything else runs the UNet
        assert positive(r["text_encoder_evals_per_s"] if name == "uce" else r["unet_evals_per_s"]), r
    assert rows["uce"]["unet_evals"] == 0
    # the costs are the run folders' own, run at this precision
    cfg = json.load(open(os.path.join(rows["esd-x"]["run"], "config.json")))
    assert cfg["settings"]["bf16"] is (precision == "bf16")
    esd = rows["esd-x"]
    assert (cfg["cost"]["seconds"], cfg["cost"]["unet_evals"]) == (esd["seconds"], esd["unet_evals"])
    section = md.split(f"## {precision}\n", 1)[1]
    for name in METHODS + ATTACKS:
        kind = "method" if name in METHODS else "attack"
        line = next(x for x in section.splitlines() if x.startswith(f"| {kind} | {name}"))
        assert "| ok |" in line, line


def test_batched_against_one_at_a_time(tiny_report):
    _, rep, md = tiny_report
    (s,) = [s for s in rep["speedups"] if s["precision"] == "fp32"]
    assert s["name"] == "unlearndiff" and s["knob"] == "--num-targets" and s["status"] == "ok"
    assert positive(s["batched_per_s"]) and positive(s["single_per_s"]) and positive(s["speedup"])
    assert s["meets_goal"] is (s["speedup"] >= 5)
    assert "--num-targets 4 vs 1" in md and "at least 5x" in md


def test_header(tiny_report):
    out, rep, md = tiny_report
    h = rep["header"]
    assert h["torch"] in md and h["device"] in md and "scripts/bench_gpu.py --size tiny --device cpu" in md
    assert h["image_px"] == 128 and "24 GB" in h["goal"]
    assert "## fp32" in md and "## bf16" in md


def test_a_failing_run_is_a_row_with_its_reason(tiny_report):
    out, _, _ = tiny_report  # the same work folder: its tiny pipeline is reused
    r = bench("--size", "tiny", "--device", "cpu", "--methods", "uce", "--attacks", "--precisions", "fp16",
              "--out", str(out), "--work", str(out / "work"))
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = json.loads((out / "report.json").read_text())["rows"]
    assert row["name"] == "uce" and row["status"] == "failed" and "--half needs a GPU" in row["reason"]
    assert "failed: error: --half needs a GPU" in (out / "report.md").read_text()


@pytest.mark.parametrize("args", [["--methods", "nope"], ["--attacks", "cce", "nope"], ["--precisions", "fp64"],
                                  ["--size", "huge"], ["--device", "tpu"]])
def test_a_bad_choice_fails_in_one_line(args, tmp_path):
    r = bench(*args, "--out", str(tmp_path / "x"), "--work", str(tmp_path / "w"), timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and args[-1] in lines[0], r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "w").exists()  # refused before anything was built
