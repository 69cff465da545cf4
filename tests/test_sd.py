"""The shared Stable Diffusion core on a tiny random pipeline: loading, DDIM, generation, parameter rules."""
import os

import numpy as np
import pytest
import torch

import sd as sdlib
from conftest import ROOT, build_tiny_pipeline


def test_save_load_round_trip(tmp_path, tokenizer_dir):
    from diffusers import StableDiffusionPipeline
    folder = build_tiny_pipeline(str(tmp_path / "p"), tokenizer_dir, seed=3)
    ref = StableDiffusionPipeline.from_pretrained(folder)
    got = sdlib.load(folder, device="cpu")
    for name in ("unet", "text_encoder", "vae"):
        a, b = getattr(ref, name).state_dict(), getattr(got, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert got.image_size == 16 and got.latent_shape == (4, 8, 8)


def test_load_errors(tmp_path):
    with pytest.raises(sdlib.LoadError, match="no model_index.json"):
        sdlib.load(str(tmp_path))
    with pytest.raises(sdlib.LoadError, match="no such folder"):
        sdlib.load(str(tmp_path / "missing"))
    with pytest.raises(sdlib.LoadError, match="cannot be loaded offline"):
        sdlib.load("nobody/no-such-model")


def test_ddim_step_matches_scheduler(tiny_sd):
    sched = tiny_sd.scheduler
    ts = sdlib.ddim_timesteps(tiny_sd, 10)
    gen = torch.Generator().manual_seed(0)
    z, e = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    for i in (0, 4, 9):  # includes the last step, whose previous alpha is final_alpha_cumprod
        t = int(ts[i])
        ours = sdlib.ddim_step(tiny_sd, z, e, t, t - 100)
        theirs = sched.step(e, t, z, eta=0.0).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_add_noise_matches_scheduler(tiny_sd):
    gen = torch.Generator().manual_seed(1)
    z0, noise = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([0, 421, 999])  # one timestep per row
    torch.testing.assert_close(sdlib.add_noise(tiny_sd, z0, noise, t), tiny_sd.scheduler.add_noise(z0, noise, t))
    one = sdlib.add_noise(tiny_sd, z0, noise, np.int64(421))  # one timestep for all rows (UnlearnDiff's sweep)
    torch.testing.assert_close(one, tiny_sd.scheduler.add_noise(z0, noise, torch.full((3,), 421)))


@pytest.mark.parametrize("stop_at", [0, 3, 10])
def test_ddim_to_step_matches_scheduler_loop(tiny_sd, stop_at):
    cond = sdlib.encode(tiny_sd, ["a red circle"])
    uncond = sdlib.encode(tiny_sd, [""])
    z0 = sdlib.initial_latents(tiny_sd, [5])
    with torch.no_grad():
        ours, t_now = sdlib.ddim(tiny_sd, tiny_sd.unet, z0, cond, uncond, 3.0, num_steps=10, stop_at=stop_at)
        sched = tiny_sd.scheduler
        sched.set_timesteps(10)
        z = z0
        for t in sched.timesteps[:stop_at]:
            e_u, e_c = tiny_sd.unet(torch.cat([z, z]), t, torch.cat([uncond, cond])).sample.chunk(2)
            z = sched.step(e_u + 3.0 * (e_c - e_u), t, z).prev_sample
    torch.testing.assert_close(ours, z, rtol=1e-4, atol=1e-5)
    assert t_now == (int(sched.timesteps[stop_at]) if stop_at < 10 else 0)


def test_generation_is_deterministic_and_batch_independent(tiny_sd):
    prompts, seeds = ["a red circle", "a blue star", "a green cross"], [1, 2, 3]
    a = sdlib.generate(tiny_sd, prompts, seeds, steps=4, batch=3)
    b = sdlib.generate(tiny_sd, prompts, seeds, steps=4, batch=1)
    c = sdlib.generate(tiny_sd, prompts[1:], seeds[1:], steps=4, batch=2)
    assert a.shape == (3, 16, 16, 3) and a.dtype == np.uint8
    # per-seed noise: the same picture whatever the batch (1 level of rounding slack for batched matmuls)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert np.abs(a[1:].astype(int) - c.astype(int)).max() <= 1
    d = sdlib.generate(tiny_sd, prompts, [7, 8, 9], steps=4)
    assert np.abs(a.astype(int) - d.astype(int)).mean() > 1  # other seeds, other pictures


def test_counts_unet_evaluations(tiny_sd):
    with sdlib.Timer(tiny_sd) as timer:
        sdlib.generate(tiny_sd, ["a", "b"], [0, 1], steps=3)
    assert timer.unet_evals == 2 * 2 * 3  # prompts x (cond + uncond) x steps
    assert timer.text_evals == 4


def test_injected_embedding_replaces_only_placeholder(tiny_sd):
    (tid,) = sdlib.add_tokens(tiny_sd, ["<adv0>"])
    table = tiny_sd.text_encoder.get_input_embeddings().weight.clone()
    vec = torch.randn(32, requires_grad=True)
    with_tok = sdlib.encode(tiny_sd, ["a <adv0> circle"], inject={tid: vec})
    with_tok.sum().backward()
    assert vec.grad is not None and vec.grad.abs().sum() > 0  # gradients reach the injected vector
    assert torch.equal(table, tiny_sd.text_encoder.get_input_embeddings().weight)  # table untouched
    # with the vector set to an existing word's embedding, the prompt encodes exactly like that word
    word = tiny_sd.tokenizer.convert_tokens_to_ids("square</w>")
    as_word = sdlib.encode(tiny_sd, ["a <adv0> circle"], inject={tid: table[word]})
    torch.testing.assert_close(as_word, sdlib.encode(tiny_sd, ["a square circle"]))
    plain = sdlib.encode(tiny_sd, ["a circle"], inject={tid: vec})  # no placeholder: nothing changes
    torch.testing.assert_close(plain, sdlib.encode(tiny_sd, ["a circle"]))


def test_parameter_rules(tiny_sd):
    unet_names = {n for n, _ in tiny_sd.unet.named_parameters()}
    sel = {r: set(sdlib.select_params(tiny_sd, r, verbose=False)) for r in sdlib.PARAM_RULES}
    assert all(sel.values()), "every rule selects something"
    assert sel["esd-x"] and all("attn2" in n for n in sel["esd-x"])
    assert not sel["esd-x"] & sel["esd-u"]
    rest = unet_names - sel["esd-x"] - sel["esd-u"]
    assert rest and all(n.startswith(("time_embedding", "conv_out")) for n in rest)
    assert sel["full"] == unet_names
    assert all(n.endswith("to_v.weight") for n in sel["attn-v"]) and any("attn1" in n for n in sel["attn-v"])
    assert all(n.removeprefix("text_model.").startswith(("encoder.", "final_layer_norm")) for n in sel["text-encoder"])
    assert not any("embedding" in n for n in sel["text-encoder"])
    # requires_grad is set on exactly the selection
    sdlib.select_params(tiny_sd, "esd-x", verbose=False)
    assert {n for n, p in tiny_sd.unet.named_parameters() if p.requires_grad} == sel["esd-x"]


def test_parameter_rule_refuses_empty_and_unknown(tiny_sd):
    with pytest.raises(ValueError, match="selected nothing"):
        sdlib.select_params(tiny_sd.vae, "esd-x", verbose=False)  # the VAE has no cross-attention
    with pytest.raises(ValueError, match="accepted: esd-x"):
        sdlib.select_params(tiny_sd, "xattn", verbose=False)


@pytest.fixture(scope="module")
def tiny_v_model(tmp_path_factory, tokenizer_dir):
    """The tiny pipeline with a v-prediction scheduler (as SD 2.x at 768 px)."""
    import json
    folder = build_tiny_pipeline(str(tmp_path_factory.mktemp("tiny_v") / "pipeline"), tokenizer_dir, seed=4)
    path = os.path.join(folder, "scheduler", "scheduler_config.json")
    cfg = json.load(open(path))
    json.dump(dict(cfg, prediction_type="v_prediction"), open(path, "w"))
    return folder


def test_v_prediction_ddim_matches_diffusers_pipeline(tiny_v_model):
    from diffusers import StableDiffusionPipeline
    sd = sdlib.load(tiny_v_model, device="cpu")
    assert sd.prediction_type == "v_prediction"
    z_T = sdlib.initial_latents(sd, [7])
    with torch.no_grad():
        ours, _ = sdlib.ddim(sd, sd.unet, z_T, sdlib.encode(sd, ["a red circle"]), sdlib.encode(sd, [""]), 4.0,
                             num_steps=6)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_v_model)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe("a red circle", num_inference_steps=6, guidance_scale=4.0, latents=z_T.clone(),
                  output_type="latent").images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_v_prediction_output_is_turned_into_noise(tiny_v_model):
    """eps() of a v model is sqrt(a_t) v + sqrt(1 - a_t) z_t: ESD's target, built from eps() outputs, is its formula
    in eps (the losses never see v)."""
    import losses
    sd = sdlib.load(tiny_v_model, device="cpu")
    gen = torch.Generator().manual_seed(2)
    z, t = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([100, 800])
    c, u = sdlib.encode(sd, ["a red circle", "a blue star"]), sdlib.encode(sd, ["", ""])
    with torch.no_grad():
        a_t = sd.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        v_c, v_u = sd.unet(z, t, c).sample, sd.unet(z, t, u).sample
        e_c, e_u = a_t.sqrt() * v_c + (1 - a_t).sqrt() * z, a_t.sqrt() * v_u + (1 - a_t).sqrt() * z
        torch.testing.assert_close(sdlib.eps(sd, sd.unet, z, t, c), e_c)
        torch.testing.assert_close(losses.esd_target(sdlib.eps(sd, sd.unet, z, t, u), sdlib.eps(sd, sd.unet, z, t, c),
                                                     1.0), e_u - 1.0 * (e_c - e_u))


def test_unknown_prediction_type_is_refused(tmp_path, tokenizer_dir):
    import json
    folder = build_tiny_pipeline(str(tmp_path / "p"), tokenizer_dir)
    path = os.path.join(folder, "scheduler", "scheduler_config.json")
    json.dump(dict(json.load(open(path)), prediction_type="sample"), open(path, "w"))
    with pytest.raises(sdlib.LoadError, match="predicts 'sample'; supported: epsilon, v_prediction"):
        sdlib.load(folder, device="cpu")


def test_bf16_autocast_gives_fp32_noise_close_to_fp32(tiny_model):
    """--bf16: fp32 weights, the UNet under bf16 autocast; eps comes back in fp32, near the fp32 model's, and the
    picture cache tells the two apart."""
    plain, auto = sdlib.load(tiny_model, "cpu"), sdlib.load(tiny_model, "cpu", bf16=True)
    z = torch.randn(2, *plain.latent_shape, generator=torch.Generator().manual_seed(0))
    cond = sdlib.encode(plain, ["a red circle", "a blue star"])
    with torch.no_grad():
        e32, e16 = sdlib.eps(plain, plain.unet, z, 500, cond), sdlib.eps(auto, auto.unet, z, 500, cond)
    assert e16.dtype == torch.float32 and next(auto.unet.parameters()).dtype == torch.float32
    assert not torch.equal(e16, e32) and (e16 - e32).abs().max() < 0.1 * e32.abs().max()
    assert sdlib.model_identity(plain) != sdlib.model_identity(auto)
    with pytest.raises(sdlib.LoadError, match="choose one"):
        sdlib.load(tiny_model, "cpu", half=True, bf16=True)
