"""Bad input to the entry points: one clear line, non-zero exit, nothing written."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--prompt", "a red circle", "--model", "/no/such/folder"], "no such folder"),
    (["--prompt", "a red circle", "--model", "nobody/no-such-model"], "cannot be loaded offline"),
    (["--prompts", "/no/such.csv"], "cannot read prompt file"),
    ([], "no prompts given"),
    (["--prompt", "  "], "no prompts given"),
])
def test_generate_bad_input(tmp_path, args, message):
    out = tmp_path / "out"
    r = run("evaluate.py", "generate", "--out", str(out), *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1] and "Traceback" not in r.stderr
    assert not out.exists() and not (tmp_path / "out.tmp").exists()


def test_generate_csv_without_prompt_column(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("text\nhello\n")
    r = run("evaluate.py", "generate", "--out", str(tmp_path / "out"), "--prompts", str(f))
    assert r.returncode == 2 and "no 'prompt' column" in r.stderr and not (tmp_path / "out").exists()


def test_generate_writes_pictures_and_grid(tmp_path, tiny_model):
    f = tmp_path / "p.csv"
    f.write_text("prompt,evaluation_seed\na red circle,3\na blue star,4\n")
    out = tmp_path / "out"
    r = run("evaluate.py", "generate", "--model", tiny_model, "--prompts", str(f), "--prompt", "a green cross",
            "--num-images", "2", "--steps", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    pngs = sorted(p for p in os.listdir(out) if p.endswith(".png") and p != "grid.png")
    assert len(pngs) == 6 and "grid.png" in os.listdir(out) and "prompts.csv" in os.listdir(out)
    assert any(p.endswith("_s4.png") and "red_circle" in p for p in pngs)  # seed 3 and its next
    r2 = run("evaluate.py", "generate", "--model", tiny_model, "--prompt", "x", "--out", str(out))
    assert r2.returncode == 2 and "exists" in r2.stderr  # no silent overwrite


def test_bench_batching_ceiling_alone_writes_its_own_file(tmp_path):
    """--attacks none times only the inner step at batch 1 and 2 and leaves the attack table (report.md) alone."""
    (tmp_path / "report.md").write_text("the attack table\n")
    r = subprocess.run([sys.executable, "scripts/bench_batching.py", "--attacks", "none", "--targets", "2",
                        "--single", "1", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "ceiling.md").read_text()
    assert "| 1 |" in text and "| 2 |" in text and "can win at most" in text
    assert (tmp_path / "report.md").read_text() == "the attack table\n"
    bad = subprocess.run([sys.executable, "scripts/bench_batching.py", "--attacks", "cce"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "unknown attack cce" in bad.stderr


def test_bench_batching_ceiling_times_the_models_own_latent_size(monkeypatch):
    """The ceiling's UNet input has the model's latent shape (the mini VAE halves the picture, SD's divides by 8):
    a smaller latent makes batch 1 mostly overhead and overstates what batching can win."""
    import importlib.util
    import types
    import torch
    spec = importlib.util.spec_from_file_location("bench_batching", os.path.join(ROOT, "scripts", "bench_batching.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    seen = []

    def fake_eps(sd, unet, z, t, cond):
        seen.append(tuple(z.shape))
        return z * cond.mean()
    monkeypatch.setattr(bench.sdlib, "eps", fake_eps)
    sd = types.SimpleNamespace(latent_shape=(4, 16, 16), image_size=32, unet=None,
                               text_encoder=types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=8)))
    assert bench.inner_step_seconds(sd, 3, reps=1) > 0
    assert seen and all(s == (3, 4, 16, 16) for s in seen)


def _sd_concept_file(tmp_path):
    import json
    f = tmp_path / "monet.json"
    f.write_text(json.dumps({"name": "monet", "words": "monet", "prompts": ["a lake by monet"],
                             "templates": ["a lake by {}"], "judge": "clip"}))
    return str(f)


@pytest.mark.parametrize("judge, message", [("clip", "needs --clip-weights"), ("mini", "--judge mini reads")])
def test_attack_refuses_a_judge_that_cannot_judge(tmp_path, tiny_model, judge, message):
    """A judge without its weights, or the mini judge on a concept that is not the mini world's: one line."""
    out = tmp_path / "out"
    r = run("attack.py", "--attack", "cce", "--concept", "monet", "--concept-file", _sd_concept_file(tmp_path),
            "--model", tiny_model, "--judge", judge, "--out", str(out))
    assert r.returncode == 2 and message in r.stderr.strip().splitlines()[-1] and "Traceback" not in r.stderr
    assert not out.exists()


def test_attack_on_implicit_targets_needs_implicit_prompts(tmp_path, tiny_model):
    r = run("attack.py", "--attack", "cce", "--concept", "monet", "--concept-file", _sd_concept_file(tmp_path),
            "--model", tiny_model, "--targets", "implicit", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "has no implicit prompts" in r.stderr and "Traceback" not in r.stderr
