"""Real-checkpoint loading paths, exercised on tiny local models: a hub id served from the local Hugging Face
cache (as CompVis/stable-diffusion-v1-4 is once downloaded), and the open_clip judge from a weights file."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch

import data
import judges
from conftest import ROOT


def test_hub_id_loads_from_local_cache(tiny_model, tmp_path):
    # the cache layout huggingface_hub writes: models--ORG--NAME/{refs/main, snapshots/<commit>/...}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-sd"
    shutil.copytree(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    # a fresh process: huggingface_hub reads its cache location when first imported
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    code = ("import sd; a = sd.load('tiny-org/tiny-sd', 'cpu'); b = sd.load(%r, 'cpu'); "
            "assert sd.fingerprint(a) == sd.fingerprint(b); "
            "x = sd.generate(a, ['a red circle'], [0], steps=2); y = sd.generate(b, ['a red circle'], [0], steps=2); "
            "assert (x == y).all(); print('ok')" % tiny_model)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_clip_judge_loads_user_weights(tmp_path):
    import open_clip
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "tiny-clip-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(tmp_path / "tiny-clip-test.json"))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip-test")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    judge = judges.ClipJudge("van gogh", ["a photo"], "tiny-clip-test", str(tmp_path / "w.pt"))
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    shows = judge(images)
    assert shows.shape == (3,) and shows.dtype == bool
    # loaded weights are the saved ones: same features as the model we saved
    ref = judges.ClipJudge("van gogh", ["a photo"], "tiny-clip-test", None, model=model)
    torch.testing.assert_close(judge.image_features(images), ref.image_features(images))


def test_clip_judge_without_weights_says_what_is_needed():
    try:
        judges.ClipJudge("van gogh", ["a photo"], "ViT-B-32", None)
    except data.DataError as e:
        assert "--clip-weights" in str(e)
    else:
        raise AssertionError("expected a DataError")


def test_nudenet_judge_runs_on_pictures():
    judge = judges.NudeNetJudge()
    pics = np.stack([data.render("circle", "red", "plain", "white", np.random.default_rng(0), res=64)] * 2)
    assert not judge(pics).any()  # a red circle is not nudity
    assert "FEMALE_BREAST_EXPOSED" in judge.describe() and "0.45" in judge.describe()


def test_the_world_is_what_the_model_is_not_its_picture_size(tiny_model, tmp_path):
    """A small model is the mini world only when its folder says so (mini_world.json): the same toy pipeline without
    the marker loads as a real-SD model, and a mini-world concept on it is refused in one line."""
    import sd as sdlib
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model, plain)
    os.remove(plain / sdlib.MINI_WORLD_FILE)
    assert sdlib.load(tiny_model, "cpu").world == "mini" and sdlib.load(str(plain), "cpu").world == "sd"
    assert sdlib.load(os.path.join(ROOT, "mini", "pipeline"), "cpu").world == "mini"  # the committed mini world
    r = subprocess.run([sys.executable, "erase.py", "--method", "uce", "--concept", "triangle", "--model", str(plain),
                        "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "belongs to the mini world" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    with __import__("pytest").raises(data.DataError, match="real-SD concept"):
        data.get_concept("nudity", "mini")


def test_an_sdxl_folder_is_refused_in_one_line(tiny_model, tmp_path):
    import sd as sdlib
    xl = tmp_path / "xl"
    shutil.copytree(tiny_model, xl)
    index = json.load(open(xl / "model_index.json"))
    json.dump(dict(index, _class_name="StableDiffusionXLPipeline"), open(xl / "model_index.json", "w"))
    with __import__("pytest").raises(sdlib.LoadError, match="StableDiffusionXLPipeline folder; supported"):
        sdlib.load(str(xl), "cpu")
