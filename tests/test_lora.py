"""The hand-written LoRA layer: equals the base at init, merge equals unmerged, save/load round-trips."""
import pytest
import torch
import torch.nn as nn

import lora


def toy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)))


def test_equals_base_at_init_and_only_lora_trains():
    model, x = toy(), torch.randn(5, 6)
    ref = model(x).detach()
    wrapped = lora.inject(model, lambda n: n.startswith("2."), r=2)
    assert set(wrapped) == {"2.0", "2.1"}
    torch.testing.assert_close(model(x), ref)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if "lora_" not in n} == {"0.weight", "0.bias"}  # un-wrapped layers untouched
    assert all(("lora_A" in n or "lora_B" in n) for n in trainable if n.startswith("2."))


def test_forward_is_base_plus_scaled_low_rank_and_merge_matches():
    model, x = toy(), torch.randn(5, 6)
    wrapped = lora.inject(model, lambda n: n in ("0", "2.1"), r=3, alpha=6)
    for layer in wrapped.values():
        nn.init.normal_(layer.lora_B)
    layer = wrapped["0"]
    expected = layer.base(x) + 2.0 * x @ layer.lora_A.T @ layer.lora_B.T  # scaling = alpha / r = 2
    torch.testing.assert_close(layer(x), expected)
    unmerged = model(x).detach()
    w0 = layer.base.weight.detach().clone()
    lora.merge_all(wrapped)
    torch.testing.assert_close(model(x), unmerged, rtol=1e-5, atol=1e-5)
    lora.unmerge_all(wrapped)
    torch.testing.assert_close(layer.base.weight, w0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model(x), unmerged, rtol=1e-5, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    model = toy()
    wrapped = lora.inject(model, lambda n: n == "2.0", r=2)
    nn.init.normal_(wrapped["2.0"].lora_B)
    lora.save(wrapped, str(tmp_path / "l.safetensors"))
    other = toy()
    w2 = lora.inject(other, lambda n: n == "2.0", r=2)
    lora.load(w2, str(tmp_path / "l.safetensors"))
    x = torch.randn(3, 6)
    torch.testing.assert_close(other(x), model(x))


def test_refuses_empty_selection_and_bad_rank():
    with pytest.raises(ValueError, match="matched no"):
        lora.inject(toy(), lambda n: "attn" in n)
    with pytest.raises(ValueError, match="rank"):
        lora.LoRALinear(nn.Linear(4, 4), r=5)
