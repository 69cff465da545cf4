"""AdvUnlearn and RECE: their formulas against independent computations, what each changes, 2-step runs end to
end with run folders that round-trip, and AdvUnlearn's bit-identical resume."""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import data
import erase
import losses
import sd as sdlib
from conftest import ROOT


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def changed_names(before, module):
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p)}


def advunlearn_args(*extra):
    return erase.parse(["--method", "advunlearn", "--concept", "van gogh", "--ddim-steps", "3",
                        "--advunlearn-prefix", "2", "--advunlearn-attack-steps", "2", *extra])


# ---- formulas ----------------------------------------------------------------------------------------------------
def test_rece_adversarial_embedding_equals_least_squares():
    g = torch.Generator().manual_seed(2)
    d_in, lam = 6, 0.2
    w_orig = [torch.randn(d, d_in, generator=g, dtype=torch.float64) for d in (4, 9, 5)]
    w_edit = [w + 0.3 * torch.randn(w.shape, generator=g, dtype=torch.float64) for w in w_orig]
    c = torch.randn(3, d_in, generator=g, dtype=torch.float64)
    c_adv = losses.rece_adversarial_embedding(w_edit, w_orig, c, lam)
    # min_x sum_l ||W'_l x - W_l c||^2 + lam ||x||^2 as one stacked least-squares problem per row of c
    a = torch.cat(w_edit + [lam ** 0.5 * torch.eye(d_in, dtype=torch.float64)])
    for row, x in zip(c, c_adv):
        b = torch.cat([w @ row for w in w_orig] + [torch.zeros(d_in, dtype=torch.float64)])
        torch.testing.assert_close(x, torch.linalg.lstsq(a, b[:, None]).solution[:, 0])
    # and the objective's gradient vanishes there (autograd, a third way)
    x = c_adv.clone().requires_grad_(True)
    obj = sum(((x @ we.T - c @ wo.T) ** 2).sum() for we, wo in zip(w_edit, w_orig)) + lam * (x ** 2).sum()
    grad, = torch.autograd.grad(obj, x)
    assert grad.abs().max() < 1e-9
    # an unedited model maps the concept to itself (up to the ridge); a single vector keeps its shape
    same = losses.rece_adversarial_embedding(w_orig, w_orig, c[0], 1e-9)
    assert same.shape == (d_in,) and torch.allclose(same, c[0], atol=1e-6)


def test_advunlearn_loss_equals_formula():
    g = torch.Generator().manual_seed(3)
    e_adv, e0, ec, er, er0 = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(5))
    eta, gamma = 1.3, 0.3
    expected = ((e_adv - (e0 - eta * (ec - e0))) ** 2).mean() + gamma * ((er - er0) ** 2).mean()
    torch.testing.assert_close(losses.advunlearn_loss(e_adv, e0, ec, eta, er, er0, gamma), expected)


@pytest.mark.parametrize("args, message", [
    (["--rece-lambda", "0"], "--rece-lambda must be positive"),
    (["--advunlearn-prefix", "0"], "--advunlearn-prefix must be at least 1"),
    (["--rece-rounds", "0"], "--rece-rounds must be at least 1"),
])
def test_bad_settings_get_one_line(capsys, args, message):
    with pytest.raises(SystemExit) as e:
        erase.parse(["--method", "rece", "--concept", "triangle", *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


# ---- AdvUnlearn --------------------------------------------------------------------------------------------------
def test_advunlearn_changes_only_text_encoder_layers(tiny_sd, tmp_path):
    unet, text = snapshot(tiny_sd.unet), snapshot(tiny_sd.text_encoder)
    state = {"dir": str(tmp_path), "every": 100, "log": []}
    changed = erase.advunlearn(tiny_sd, data.get_concept("van gogh"), advunlearn_args("--iterations", "2",
                                                                                       "--lr", "1e-2"), state)
    assert not changed_names(unet, tiny_sd.unet)  # the UNet is frozen
    moved = changed_names(text, tiny_sd.text_encoder)
    rule = set(sdlib.select_params(tiny_sd, "text-encoder", verbose=False))
    assert moved and moved <= rule and {k.split(".", 1)[1] for k in changed} == rule
    assert not any("embeddings" in n for n in moved)  # token and position embeddings stay
    assert all(k.startswith("text_encoder.") for k in changed)
    assert len(state["log"]) == 2 and all(torch.isfinite(torch.tensor([r["loss"], r["attack_loss"]])).all()
                                          for r in state["log"])
    prefix = torch.stack(list(state["extra_tensors"].values()))
    assert prefix.shape == (2, tiny_sd.text_encoder.config.hidden_size)


def test_advunlearn_resume_is_bit_identical(tiny_model, tmp_path):
    concept = data.get_concept("van gogh")
    full = sdlib.load(tiny_model, "cpu")
    erase.advunlearn(full, concept, advunlearn_args("--iterations", "4"),
                     {"dir": str(tmp_path / "a"), "every": 100, "log": []})
    os.makedirs(tmp_path / "b")
    part = sdlib.load(tiny_model, "cpu")  # stopped after 2 iterations (checkpoint every iteration) ...
    erase.advunlearn(part, concept, advunlearn_args("--iterations", "2"),
                     {"dir": str(tmp_path / "b"), "every": 1, "log": []})
    assert "prefix" in torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["extra"]
    resumed = sdlib.load(tiny_model, "cpu")  # ... and a fresh model picks it up
    state = {"dir": str(tmp_path / "b"), "every": 1, "log": []}
    erase.advunlearn(resumed, concept, advunlearn_args("--iterations", "4"), state)
    for (n, p), q in zip(full.text_encoder.named_parameters(), resumed.text_encoder.parameters()):
        assert torch.equal(p, q), n
    assert [r["step"] for r in state["log"]] == [0, 1, 2, 3]


def test_advunlearn_run_folder_round_trip(tiny_model, tmp_path):
    out = tmp_path / "run"
    r = run("erase.py", "--method", "advunlearn", "--concept", "triangle", "--model", tiny_model, "--iterations",
            "2", "--ddim-steps", "3", "--lr", "1e-2", "--advunlearn-prefix", "2", "--advunlearn-attack-steps", "2",
            "--out", str(out), "--grid-seeds", "1")
    assert r.returncode == 0, r.stderr
    assert {"weights.safetensors", "config.json", "loss.csv", "before_after.png",
            "embeddings.safetensors"} <= set(os.listdir(out))
    config = json.load(open(out / "config.json"))
    assert config["settings"]["train_method"] == "text-encoder"
    assert config["cost"]["unet_evals"] > 0 and config["cost"]["text_encoder_evals"] > 0
    rows = list(csv.DictReader(open(out / "loss.csv", newline="")))
    assert len(rows) == 2 and all(r["attack_loss"] for r in rows)
    tensors = load_file(str(out / "weights.safetensors"))
    assert tensors and all(k.startswith("text_encoder.") for k in tensors)
    reloaded, base = sdlib.load(weights=str(out)), sdlib.load(tiny_model)
    params, base_params = dict(reloaded.text_encoder.named_parameters()), dict(base.text_encoder.named_parameters())
    for key, value in tensors.items():
        assert torch.equal(params[key.split(".", 1)[1]], value), key
    assert any(not torch.equal(base_params[k.split(".", 1)[1]], v) for k, v in tensors.items())
    for (n, p), q in zip(reloaded.unet.named_parameters(), base.unet.parameters()):
        assert torch.equal(p, q), n


# ---- RECE --------------------------------------------------------------------------------------------------------
def test_rece_goes_past_uce_and_edits_only_cross_attention(tiny_model, tmp_path):
    concept = data.get_concept("van gogh")
    a = erase.parse(["--method", "rece", "--concept", "van gogh", "--rece-rounds", "2"])
    sd, plain = sdlib.load(tiny_model, "cpu"), sdlib.load(tiny_model, "cpu")
    before = snapshot(sd.unet)
    state = {"dir": str(tmp_path), "log": []}
    changed = erase.rece(sd, concept, a, state)
    erase.uce(plain, concept, a, {"dir": str(tmp_path), "log": []})
    moved = changed_names(before, sd.unet)
    assert moved == {k.split(".", 1)[1] for k in changed}
    assert moved and all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in moved)
    uce_params = dict(plain.unet.named_parameters())
    assert all(not torch.equal(p, uce_params[n]) for n, p in sd.unet.named_parameters() if n in moved)
    rounds = [r for r in state["log"] if "rece_regen_before" in r]
    assert len(rounds) == 2
    for r in rounds:  # erasing c' moves it away from where the original puts the concept
        assert r["rece_regen_after"] > r["rece_regen_before"]
    # ... and the concept itself stays erased: W' c as close to the guide as after UCE alone (it drifted back
    # when the rounds erased c' only)
    base = sdlib.load(tiny_model, "cpu")
    c_e, c_g, _ = erase.uce_columns(base, concept, a)
    w0 = list(erase.cross_attention_kv(base).values())

    def residual(model):
        w = list(erase.cross_attention_kv(model).values())
        return sum(float(((c_e @ we.T - c_g @ wo.T) ** 2).sum()) for we, wo in zip(w, w0))
    assert residual(sd) <= 1.05 * residual(plain), (residual(sd), residual(plain))


def test_rece_run_folder_round_trip(tiny_model, tmp_path):
    out = tmp_path / "run"
    r = run("erase.py", "--method", "rece", "--concept", "triangle", "--model", tiny_model, "--rece-rounds", "2",
            "--out", str(out), "--grid-seeds", "1")
    assert r.returncode == 0, r.stderr
    config = json.load(open(out / "config.json"))
    assert config["settings"]["rece_rounds"] == 2 and config["cost"]["text_encoder_evals"] > 0
    rows = list(csv.DictReader(open(out / "loss.csv", newline="")))
    assert len(rows) == 1 + 2 and rows[1]["rece_regen_before"] and rows[2]["rece_concept_residual"]
    tensors = load_file(str(out / "weights.safetensors"))
    assert tensors and all(k.startswith("unet.") and k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))
                           for k in tensors)
    reloaded, base = sdlib.load(weights=str(out)), sdlib.load(tiny_model)
    params, base_params = dict(reloaded.unet.named_parameters()), dict(base.unet.named_parameters())
    for key, value in tensors.items():
        name = key.split(".", 1)[1]
        assert torch.equal(params[name], value) and not torch.equal(base_params[name], value), key
