"""Integration tests on the committed mini world (mini/): it loads as a plain diffusers pipeline, generates
deterministically, its judge is accurate on fresh pictures, and it draws what it is asked to."""
import numpy as np
import pytest
import torch

import data
import mini
import sd as sdlib
from conftest import MINI_PIPELINE, needs_mini

pytestmark = needs_mini


@pytest.fixture(scope="module")
def mini_sd():
    torch.set_num_threads(2)
    return sdlib.load(MINI_PIPELINE, "cpu")


def test_loads_with_plain_diffusers_pipeline():
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(MINI_PIPELINE, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red circle", num_inference_steps=3, guidance_scale=5.0, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 32, 32, 3)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.scheduler.config.beta_end == 0.012


def test_generation_is_deterministic(mini_sd):
    a = sdlib.generate(mini_sd, ["a red circle", "a blue star in the style of van gogh"], [3, 4], steps=10)
    b = sdlib.generate(mini_sd, ["a red circle", "a blue star in the style of van gogh"], [3, 4], steps=10)
    assert np.array_equal(a, b)


def test_judge_is_accurate_on_fresh_pictures(mini_sd):
    judge = mini.load_judge()
    images, labels = data.make_dataset(600, seed=777, held_out="any")
    acc = mini.judge_accuracy(judge, images, labels)
    assert min(acc.values()) >= 0.98, acc
    # and on the same pictures passed through the committed VAE
    x = mini.to_tensor(images).to(mini_sd.device)
    with torch.no_grad():
        rec = mini.to_uint8(mini_sd.vae.decode(mini_sd.vae.encode(x).latent_dist.mode()).sample)
    acc_rec = mini.judge_accuracy(judge, rec, labels)
    assert min(acc_rec[k] for k in ("shape", "color", "style")) >= 0.98, acc_rec
