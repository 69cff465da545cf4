"""Every attack checkpoints and resumes: killed right after a checkpoint at a random step, then rerun with --resume,
it ends with exactly the outputs of a run that was never stopped."""
import csv
import json
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import attack
from conftest import uce_run

STEPS = {  # attack -> (its arguments, how many checkpointed steps they make)
    "cce": (["--steps", "6", "--num-images", "3", "--batch", "2"], 6),
    "unlearndiff": (["--timesteps", "4", "--iters-per-t", "1", "--check-every", "1"], 4),
    "p4d-n": (["--iterations", "5", "--check-every", "2", "--num-tokens", "3"], 5),
    "p4d-k": (["--iterations", "5", "--check-every", "2"], 5),
    "ringabell": (["--generations", "5", "--population", "4", "--elite", "1", "--num-tokens", "4"], 5),
}


@pytest.fixture(scope="module")
def erased(tiny_model, tmp_path_factory):
    return uce_run(tiny_model, tmp_path_factory.mktemp("resume"))


class Killed(Exception):
    pass


def outputs(folder):
    rows = list(csv.DictReader(open(folder / "results.csv", newline="")))
    emb = load_file(str(folder / "embeddings.safetensors"))
    images = {p.name: np.asarray(Image.open(p)) for p in sorted((folder / "images").iterdir())}
    m = json.load(open(folder / "metrics.json"))
    return rows, emb, images, {k: m[k] for k in ("asr", "pre_asr", "attack_only_rate")}


@pytest.mark.parametrize("which", list(STEPS))
def test_attack_killed_at_a_random_step_resumes_bit_identically(erased, which, monkeypatch):
    torch.set_num_threads(2)
    extra, steps = STEPS[which]
    common = ["--attack", which, "--concept", "van gogh", "--weights", str(erased), "--num-targets", "3",
              "--eval-steps", "2", "--checkpoint-every", "1", *extra]
    full, part = erased.parent / f"{which}_full", erased.parent / f"{which}_part"
    attack.main([*common, "--out", str(full)])
    assert not any(f.startswith("state_") for f in os.listdir(full))  # checkpoints are gone once it is done

    stop_at = random.Random(f"kill {which}").randint(1, steps - 1)
    print(f"{which}: killed after step {stop_at} of {steps}")
    save = attack.Checkpoint.save

    def save_then_die(self, step, make_state):
        save(self, step, make_state)
        if step == stop_at:
            raise Killed
    monkeypatch.setattr(attack.Checkpoint, "save", save_then_die)
    with pytest.raises(Killed):
        attack.main([*common, "--out", str(part)])
    monkeypatch.undo()
    assert not part.exists() and any(f.startswith("state_") for f in os.listdir(f"{part}.tmp"))

    resumed_from = []
    load = attack.Checkpoint.load
    monkeypatch.setattr(attack.Checkpoint, "load", lambda self: resumed_from.append(load(self)) or resumed_from[-1])
    attack.main([*common, "--out", str(part), "--resume"])
    assert [s["step"] for s in resumed_from if s] == [stop_at]  # it really started from the checkpoint

    (rows_a, emb_a, img_a, m_a), (rows_b, emb_b, img_b, m_b) = outputs(full), outputs(part)
    assert rows_a == rows_b and m_a == m_b and img_a.keys() == img_b.keys()
    assert all(np.array_equal(img_a[k], img_b[k]) for k in img_a)
    assert emb_a.keys() == emb_b.keys() and all(torch.equal(emb_a[k], emb_b[k]) for k in emb_a)
    # the resumed run reports the whole run's cost: the stopped process's up to its checkpoint, plus its own
    cost_a, cost_b = (json.load(open(f / "metrics.json"))["cost"] for f in (full, part))
    assert "resumed_after" not in cost_a and cost_b["resumed_after"]["text_encoder_evals"] > 0
    assert cost_b["unet_evals"] == cost_a["unet_evals"]  # no UNet step is lost or done twice
    # what the resumed process redoes on start is counted (Ring-A-Bell encodes its concept prompt pairs again)
    assert cost_b["text_encoder_evals"] >= cost_a["text_encoder_evals"]


def test_resume_with_other_settings_is_refused(erased, monkeypatch):
    common = ["--attack", "unlearndiff", "--concept", "van gogh", "--weights", str(erased), "--num-targets", "2",
              "--eval-steps", "2", "--checkpoint-every", "1", "--timesteps", "3", "--iters-per-t", "1"]
    out = erased.parent / "ud_other"
    save = attack.Checkpoint.save

    def save_then_die(self, step, make_state):
        save(self, step, make_state)
        raise Killed
    monkeypatch.setattr(attack.Checkpoint, "save", save_then_die)
    with pytest.raises(Killed):
        attack.main([*common, "--out", str(out)])
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        attack.main([*common, "--out", str(out), "--resume", "--lr", "0.5"])
    assert not out.exists()


def test_picture_cache_gives_the_same_outputs_and_draws_each_picture_set_once(erased, tiny_model, tmp_path):
    """The benchmark's attack cells share the pictures drawn before attacking: with --picture-cache the outputs equal
    a run without it, and a second run draws neither the original model's reference pictures nor the plain ones."""
    torch.set_num_threads(2)
    cache = tmp_path / "pictures"
    common = ["--attack", "unlearndiff", "--concept", "van gogh", "--weights", str(erased), "--num-targets", "3",
              "--eval-steps", "2", *STEPS["unlearndiff"][0]]
    plain_run = attack.main([*common, "--out", str(tmp_path / "none")])
    first = attack.main([*common, "--out", str(tmp_path / "first"), "--picture-cache", str(cache)])
    assert len(list(cache.iterdir())) == 2  # the reference pictures (original model) and the plain ones (erased)
    second = attack.main([*common, "--out", str(tmp_path / "second"), "--picture-cache", str(cache)])
    assert first["reference_cost"]["unet_evals"] == plain_run["reference_cost"]["unet_evals"] > 0
    assert second["reference_cost"]["unet_evals"] == 0 and len(list(cache.iterdir())) == 2
    a, b, c = (outputs(tmp_path / n) for n in ("none", "first", "second"))
    for other in (b, c):
        assert a[0] == other[0] and a[3] == other[3] and a[2].keys() == other[2].keys()
        assert all(np.array_equal(a[2][k], other[2][k]) for k in a[2])
        assert all(torch.equal(a[1][k], other[1][k]) for k in a[1])
    base = attack.main([*common[:4], *common[6:], "--model", tiny_model, "--out", str(tmp_path / "base"),
                        "--picture-cache", str(cache)])
    assert base["reference_cost"]["unet_evals"] == 0  # the base model's target pictures were drawn already
    assert len(list(cache.iterdir())) == 2  # ... and its plain pictures are the same pictures


def test_ring_a_bell_search_is_shared_through_the_cache(erased, tiny_model, tmp_path):
    """Ring-A-Bell's search sees the original text encoder only, so with --picture-cache a second run (here on another
    model: the base) reuses the first run's tokens instead of searching again; the outputs equal uncached runs'."""
    torch.set_num_threads(2)
    cache = tmp_path / "pictures"
    common = ["--attack", "ringabell", "--concept", "van gogh", "--num-targets", "3", "--eval-steps", "2",
              "--attack-all-targets", *STEPS["ringabell"][0]]
    on_erased, on_base = ["--weights", str(erased)], ["--model", tiny_model]
    uncached = [attack.main([*common, *w, "--out", str(tmp_path / f"plain{i}")]) for i, w in
                enumerate((on_erased, on_base))]
    first = attack.main([*common, *on_erased, "--out", str(tmp_path / "first"), "--picture-cache", str(cache)])
    second = attack.main([*common, *on_base, "--out", str(tmp_path / "second"), "--picture-cache", str(cache)])
    assert len([f for f in os.listdir(cache) if f.startswith("ringabell_")]) == 1
    searched = uncached[1]["search_cost"]["text_encoder_evals"]
    assert first["search_cost"]["text_encoder_evals"] == searched > 0 and "reused_from" not in first["search_cost"]
    assert second["search_cost"]["reused_from"].startswith(str(cache))  # reported as the run that made it ...
    assert second["search_cost"]["text_encoder_evals"] == searched
    assert second["cost"]["text_encoder_evals"] < uncached[1]["cost"]["text_encoder_evals"] - searched / 2  # ... not run
    for cached, plain in (("first", "plain0"), ("second", "plain1")):
        a, b = outputs(tmp_path / cached), outputs(tmp_path / plain)
        assert a[0] == b[0] and a[3] == b[3] and all(np.array_equal(a[2][k], b[2][k]) for k in a[2])
        assert all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    other = attack.main([*common[:-len(STEPS["ringabell"][0])], "--generations", "4", "--population", "4",
                         "--elite", "1", "--num-tokens", "4", *on_base, "--out", str(tmp_path / "other"),
                         "--picture-cache", str(cache)])
    assert "reused_from" not in other["search_cost"]  # other search settings: a search of its own
    assert len([f for f in os.listdir(cache) if f.startswith("ringabell_")]) == 2
