"""Shared fixtures: a tiny randomly initialised SD-architecture pipeline (seconds to build), and the mini world."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import mini  # noqa: E402
import sd  # noqa: E402

MINI_PIPELINE = os.path.join(ROOT, "mini", "pipeline")
needs_mini = pytest.mark.skipif(not os.path.exists(os.path.join(MINI_PIPELINE, "model_index.json")),
                                reason="the committed mini world (mini/pipeline) is missing: python mini.py train")


def build_tiny_pipeline(folder, tokenizer_dir, seed=0):
    """A StableDiffusionPipeline of SD v1.4's classes at toy size: 16x16 pictures, 8x8x4 latents."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer
    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline(
        vae=mini.build_vae(channels=(16, 16)),
        text_encoder=mini.build_text_encoder(hidden=32, layers=1, heads=2),
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
        unet=mini.build_unet(channels=(32, 32), cross_attention_dim=32, heads=2, sample_size=8),
        scheduler=mini.build_scheduler("ddim"), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(folder)
    sd.mark_mini_world(folder)  # a toy stand-in for the mini world: its presets and judge
    return folder


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tokenizer"))
    mini.build_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tokenizer_dir):
    """Path of a saved tiny pipeline folder."""
    return build_tiny_pipeline(str(tmp_path_factory.mktemp("tiny") / "pipeline"), tokenizer_dir)


@pytest.fixture
def tiny_sd(tiny_model):
    import sd
    torch.set_num_threads(2)
    return sd.load(tiny_model, device="cpu")


def uce_run(tiny_model, folder):
    """A UCE run folder erasing "van gogh" from the tiny model (seconds): the erased model attack tests use."""
    import pathlib
    import subprocess
    out = os.path.join(str(folder), "uce")
    r = subprocess.run([sys.executable, "erase.py", "--method", "uce", "--concept", "van gogh", "--model", tiny_model,
                        "--out", out, "--grid-seeds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return pathlib.Path(out)

