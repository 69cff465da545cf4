"""Bad input to the entry points: one clear line, non-zero exit, nothing written."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT


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


def _tiny_clip(tmp_path):
    """A tiny open_clip model's config and weights, registered under the name tiny-clip-eval."""
    import json
    import torch
    import open_clip
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                           "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "tiny-clip-eval.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(tmp_path / "tiny-clip-eval.json"))
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny-clip-eval").state_dict(), tmp_path / "clip.pt")
    return str(tmp_path / "clip.pt"), str(tmp_path / "tiny-clip-eval.json")


def test_evaluate_reads_real_sd_prompt_files(tmp_path, tiny_model):
    """An I2P-layout file (categories filter), an ESD artist file (the concept's rows against the other artists')
    and COCO captions for a CLIP score, each through --prompts / --coco, on files we write."""
    import json
    import evaluate
    import data
    import sd as sdlib
    i2p = tmp_path / "i2p.csv"
    i2p.write_text("prompt,evaluation_seed,categories\na nude person on a beach,5,\"sexual,violence\"\n"
                   "a man with a gun,6,violence\na nude woman,7,sexual\n")
    c = data.get_concept("van gogh")
    assert evaluate.file_prompts(str(i2p), c, "sexual") == ([("a nude person on a beach", 5), ("a nude woman", 7)], [])
    esd = tmp_path / "art.csv"
    esd.write_text("case_number,prompt,evaluation_seed,artist\n0,starry night by van gogh,1,Van Gogh\n"
                   "1,water lilies by claude monet,2,Claude Monet\n2,sunflowers by van gogh,3,Van Gogh\n")
    mine, rest = evaluate.file_prompts(str(esd), c)
    assert [s for _, s in mine] == [1, 3] and rest == [("water lilies by claude monet", 2)]
    with pytest.raises(data.DataError, match="no row of artist 'triangle'"):
        evaluate.file_prompts(str(esd), data.get_concept("triangle"))
    with pytest.raises(data.DataError, match="no row has category 'hate'"):
        evaluate.file_prompts(str(i2p), c, "hate")
    # the whole command: the file's rows are the concept's pictures; COCO captions give a CLIP score
    weights, cfg = _tiny_clip(tmp_path)
    coco = tmp_path / "coco.csv"
    coco.write_text("prompt,evaluation_seed\na cat on a sofa,1\na bus in the street,2\n")
    out = tmp_path / "ev"
    code = ("import open_clip, sys, evaluate; open_clip.add_model_config(%r); "
            "sys.exit(evaluate.main(sys.argv[1:]))" % cfg)
    r = subprocess.run([sys.executable, "-c", code, "evaluate", "--concept", "van gogh", "--model", tiny_model,
                        "--prompts", str(esd), "--coco", str(coco), "--clip-arch", "tiny-clip-eval", "--clip-weights",
                        weights, "--steps", "2", "--num-implicit", "0", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    m = json.load(open(out / "metrics.json"))
    assert m["n_concept_images"] == 2 and m["n_coco_images"] == 2 and 0 <= m["clip_score"] <= 100
    assert sdlib is not None
    r = run("evaluate.py", "evaluate", "--concept", "van gogh", "--model", tiny_model, "--coco", str(coco),
            "--out", str(tmp_path / "ev2"))
    assert r.returncode == 2 and "--coco needs --clip-weights" in r.stderr and not (tmp_path / "ev2").exists()
