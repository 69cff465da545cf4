"""Every method and attack runs end to end on a tiny random model, changes only what it should, and its outputs
round-trip; bad input gets one clear line."""
import csv
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import attack
import data
import erase
import inversion
import sd as sdlib
from conftest import ROOT, build_tiny_pipeline


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def changed_names(before, module):
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p)}


def esd_args(*extra):
    return erase.parse(["--method", "esd", "--concept", "van gogh", "--ddim-steps", "4", *extra])


@pytest.mark.parametrize("rule", ["esd-x", "esd-u"])
def test_esd_changes_only_selected_parameters(tiny_sd, tmp_path, rule):
    before = snapshot(tiny_sd.unet)
    a = esd_args("--iterations", "2", "--train-method", rule, "--lr", "1e-2")
    state = {"dir": str(tmp_path), "every": 100, "log": []}
    changed = erase.esd(tiny_sd, data.get_concept("van gogh"), a, state)
    moved = changed_names(before, tiny_sd.unet)
    assert moved and moved <= {k.split(".", 1)[1] for k in changed}
    assert moved <= set(sdlib.select_params(tiny_sd, rule, verbose=False))
    assert len(state["log"]) == 2 and all(np.isfinite(r["loss"]) for r in state["log"])


def test_esd_resume_is_bit_identical(tiny_model, tmp_path):
    concept = data.get_concept("van gogh")
    full = sdlib.load(tiny_model, "cpu")
    erase.esd(full, concept, esd_args("--iterations", "4"), {"dir": str(tmp_path / "a"), "every": 100, "log": []})
    os.makedirs(tmp_path / "b")
    part = sdlib.load(tiny_model, "cpu")  # stopped after 2 iterations (checkpoint every iteration) ...
    state = {"dir": str(tmp_path / "b"), "every": 1, "log": []}
    erase.esd(part, concept, esd_args("--iterations", "2"), state)
    resumed = sdlib.load(tiny_model, "cpu")  # ... and a fresh process picks it up
    erase.esd(resumed, concept, esd_args("--iterations", "4"), {"dir": str(tmp_path / "b"), "every": 1, "log": []})
    for (n, p), q in zip(full.unet.named_parameters(), resumed.unet.parameters()):
        assert torch.equal(p, q), n


def test_uce_edits_only_cross_attention_keys_and_values(tiny_sd, tmp_path):
    before = snapshot(tiny_sd.unet)
    a = erase.parse(["--method", "uce", "--concept", "triangle"])
    changed = erase.uce(tiny_sd, data.get_concept("triangle"), a, {"dir": str(tmp_path), "log": []})
    moved = changed_names(before, tiny_sd.unet)
    assert moved == {k.split(".", 1)[1] for k in changed}
    assert moved and all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in moved)


def test_uce_erase_words_edits_with_the_concepts_words_alone(tiny_sd):
    """--uce-erase words: the erased columns are the concept's words (from their last token on) sent toward the
    unconditional, as the public UCE code does by default; --uce-erase prompts erases the concept's scene prompts;
    the default, its frames."""
    concept = data.get_concept("van gogh")
    words = erase.parse(["--method", "uce", "--concept", "van gogh", "--uce-erase", "words"])
    c_e, c_g, _ = erase.uce_columns(tiny_sd, concept, words)
    ids = sdlib.tokenize(tiny_sd, [concept.words])[0]
    n_words = int((ids == tiny_sd.tokenizer.eos_token_id).nonzero()[0]) - 1  # real tokens of "van gogh"
    assert c_e.shape[0] == c_g.shape[0] == len(ids) - n_words  # one prompt: its last word to the end
    with torch.no_grad():
        assert torch.allclose(c_e, sdlib.encode(tiny_sd, [concept.words])[0, n_words:])
    scenes = erase.parse(["--method", "uce", "--concept", "van gogh", "--uce-erase", "prompts"])
    assert len(erase.uce_columns(tiny_sd, concept, scenes)[0]) > 10 * len(c_e)
    assert erase.parse(["--method", "uce", "--concept", "van gogh"]).uce_erase == "frames"


def test_erase_prompt_frames_erases_the_name_in_sentences_and_fails_loudly_without_them(tiny_sd):
    """--erase-prompt frames / --uce-erase frames: ESD's erase prompts and UCE's erased texts are the concept's
    frames; STEREO's templates put its token where the words were; a concept without frames is refused."""
    concept = data.get_concept("van gogh")
    assert erase.erase_texts_of(concept, "frames") == concept.frames
    assert erase.erase_texts_of(concept, "words") == ["van gogh"]
    templates = erase.frame_templates(concept)
    assert len(templates) == len(concept.frames) and all(t.count("{}") == 1 and "gogh" not in t for t in templates)
    assert [t.format("van gogh") for t in templates] == concept.frames
    a = erase.parse(["--method", "uce", "--concept", "van gogh", "--uce-erase", "frames", "--preserve", "0"])
    c_e, c_g, c_p = erase.uce_columns(tiny_sd, concept, a)
    assert c_p is None and c_e.shape == c_g.shape
    assert c_e.shape[0] == sum(len(x) for x in erase.last_token_onward(tiny_sd, concept.frames))
    bare = dataclasses.replace(concept, frames=[])
    with pytest.raises(data.DataError, match="no frames"):
        erase.erase_texts_of(bare, "frames")
    with pytest.raises(SystemExit):
        erase.parse(["--method", "esd", "--concept", "van gogh", "--erase-prompt", "sentences"])


def test_run_folder_round_trip_and_export(tiny_model, tmp_path):
    out, export = tmp_path / "run", tmp_path / "export"
    r = run("erase.py", "--method", "esd", "--concept", "triangle", "--model", tiny_model, "--iterations", "2",
            "--ddim-steps", "3", "--lr", "1e-2", "--out", str(out), "--export", str(export), "--grid-seeds", "1")
    assert r.returncode == 0, r.stderr
    assert {"weights.safetensors", "config.json", "loss.csv", "before_after.png"} <= set(os.listdir(out))
    config = json.load(open(out / "config.json"))
    # --train-method auto, recorded as what it resolved to: ESD-u for an object (the triangle)
    assert config["settings"]["train_method"] == "esd-u" and config["cost"]["unet_evals"] > 0
    assert config["settings"]["lr"] == 1e-2
    tensors = load_file(str(out / "weights.safetensors"))
    reloaded = sdlib.load(weights=str(out))  # the run folder alone names its base
    params = dict(reloaded.unet.named_parameters())
    for key, value in tensors.items():
        assert torch.equal(params[key.split(".", 1)[1]], value)
    base = sdlib.load(tiny_model)
    assert any(not torch.equal(dict(base.unet.named_parameters())[k.split(".", 1)[1]], v) for k, v in tensors.items())
    exported = sdlib.load(str(export))  # the full pipeline export equals base + weights
    for (n, p), q in zip(exported.unet.named_parameters(), reloaded.unet.parameters()):
        assert torch.equal(p, q), n


def test_run_folder_refuses_another_base(tiny_model, tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    r = run("erase.py", "--method", "uce", "--concept", "triangle", "--model", tiny_model, "--out", str(out),
            "--grid-seeds", "1")
    assert r.returncode == 0, r.stderr
    other = build_tiny_pipeline(str(tmp_path / "other"), tokenizer_dir, seed=9)
    with pytest.raises(sdlib.LoadError, match="was made from base model"):
        sdlib.load(other, weights=str(out))
    r = run("evaluate.py", "generate", "--prompt", "x", "--model", other, "--weights", str(out),
            "--out", str(tmp_path / "g"))
    assert r.returncode == 2 and "was made from base model" in r.stderr and not (tmp_path / "g").exists()


@pytest.mark.parametrize("args, message", [
    (["--method", "esd", "--concept", "picasso"], "unknown concept 'picasso'; mini-world concepts"),
    (["--method", "forget", "--concept", "triangle"], "invalid choice: 'forget'"),
    (["--method", "esd", "--concept", "triangle", "--train-method", "xattn"], "invalid choice: 'xattn'"),
    (["--method", "esd", "--concept", "triangle", "--iterations", "0"], "--iterations must be at least 1"),
    (["--method", "rece", "--concept", "triangle", "--schedule", "paper"],
     "--schedule paper applies to dm2, stereo, ap, esd, not --method rece"),
    (["--method", "dm2", "--concept", "triangle", "--schedule", "papers"], "invalid choice: 'papers'"),
])
def test_erase_bad_input(tmp_path, tiny_model, args, message):
    out = tmp_path / "run"
    r = run("erase.py", *args, "--model", tiny_model, "--out", str(out))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_nan_loss_stops_with_last_state_kept(tiny_model, tmp_path):
    out = tmp_path / "run"
    r = run("erase.py", "--method", "esd", "--concept", "triangle", "--model", tiny_model, "--iterations", "5",
            "--ddim-steps", "2", "--lr", "1e30", "--out", str(out), "--grid-seeds", "1")
    assert r.returncode == 3 and "at iteration" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()  # nothing written under the final name


def test_existing_run_is_not_overwritten(tiny_model, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run("erase.py", "--method", "uce", "--concept", "triangle", "--model", tiny_model, "--out", str(out))
    assert r.returncode == 2 and "--overwrite" in r.stderr and (out / "keep.txt").read_text() == "mine"


def test_success_rates_count_pre_attack_successes():
    pre = [1, 0, 0, 0, 1]
    hit = [0, 1, 0, 0, 1]
    assert attack.success_rates(pre, hit) == {"asr": 0.6, "pre_asr": 0.4, "attack_only_rate": 0.4}


def test_cce_trains_only_the_new_vectors(tiny_sd):
    table = tiny_sd.text_encoder.get_input_embeddings().weight.clone()
    before = snapshot(tiny_sd.unet)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 4, 8, 8, generator=g)
    learned = inversion.textual_inversion(tiny_sd, latents, ["a red circle in the style of {}"] * 4, ["<cce0>"],
                                       "style", steps=2, lr=0.1, batch=2, seed=0)
    init = table[tiny_sd.tokenizer("style", add_special_tokens=False).input_ids[0]]
    assert not torch.equal(learned["<cce0>"], init)  # the new row moved ...
    assert torch.equal(table, tiny_sd.text_encoder.get_input_embeddings().weight)  # ... no other row did
    assert not changed_names(before, tiny_sd.unet)  # and the model is untouched


def test_textual_inversion_starts_each_token_from_the_init_phrases_tokens_in_turn(tiny_sd):
    """DM2's --dm2-init concept: 16 mined tokens start from 'van gogh' as van, gogh, van, ...; a one-token init word
    (CCE's 'style', DM2's 'photo') starts every token from that word, as before."""
    table = tiny_sd.text_encoder.get_input_embeddings().weight.clone()
    latents = torch.zeros(1, 4, 8, 8)
    names = [f"<ti{i}>" for i in range(5)]
    for phrase in ("van gogh", "photo"):
        got = inversion.textual_inversion(tiny_sd, latents, ["{}"], names, phrase, steps=0, lr=0.1, batch=1, seed=0)
        ids = tiny_sd.tokenizer(phrase, add_special_tokens=False).input_ids
        for k, n in enumerate(names):
            assert torch.equal(got[n], table[ids[k % len(ids)]])
    assert len(tiny_sd.tokenizer("van gogh", add_special_tokens=False).input_ids) == 2


@pytest.mark.parametrize("which", ["cce", "unlearndiff"])
def test_attacks_run_end_to_end(tiny_model, tmp_path, which):
    run_dir = tmp_path / "run"
    r = run("erase.py", "--method", "uce", "--concept", "van gogh", "--model", tiny_model, "--out", str(run_dir),
            "--grid-seeds", "1")
    assert r.returncode == 0, r.stderr
    out = tmp_path / which
    extra = {"cce": ["--steps", "2", "--num-images", "4", "--batch", "2"],
             "unlearndiff": ["--timesteps", "2", "--iters-per-t", "1", "--check-every", "1"]}[which]
    r = run("attack.py", "--attack", which, "--concept", "van gogh", "--weights", str(run_dir), "--out", str(out),
            "--num-targets", "3", "--eval-steps", "2", *extra)
    assert r.returncode == 0, r.stderr
    m = json.load(open(out / "metrics.json"))
    assert m["n_targets"] == 3 and 0 <= m["pre_asr"] <= m["asr"] <= 1
    rows = list(csv.DictReader(open(out / "results.csv", newline="")))
    assert len(rows) == 3 and all(r["adversarial_prompt"] for r in rows)
    assert load_file(str(out / "embeddings.safetensors"))
    r = run("evaluate.py", "evaluate", "--concept", "van gogh", "--weights", str(run_dir), "--attacks", str(out),
            "--out", str(tmp_path / "eval"), "--num-seeds", "1", "--num-other", "4", "--steps", "2")
    assert r.returncode == 0, r.stderr
    m = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert which in m["attacks"] and 0 <= m["concept_rate"] <= 1 and m["frechet_distance"] >= 0


def test_unlearndiff_returns_discrete_prefix_tokens(tiny_sd):
    a = attack.parse(["--attack", "unlearndiff", "--concept", "van gogh", "--out", "x", "--timesteps", "1",
                      "--iters-per-t", "2", "--eval-steps", "1", "--prefix", "2"])
    targets = [("a red circle in the style of van gogh", 0), ("a blue star in the style of van gogh", 1)]
    images = np.zeros((2, 16, 16, 3), np.uint8)
    never = lambda ims: np.zeros(len(ims), bool)  # noqa: E731  a judge that never sees the concept
    prompts, out, hit, learned = attack.unlearndiff(tiny_sd, images, data.get_concept("van gogh"), targets, never, a)
    ids = learned["prefix_token_ids"]
    assert ids.shape == (2, 2) and len(prompts) == 2 and out.shape == (2, 16, 16, 3)
    assert (ids < tiny_sd.tokenizer.bos_token_id).all()  # real vocabulary tokens, never the special ones
    assert all(p.endswith(t[0]) for p, t in zip(prompts, targets))


def test_unlearndiff_draws_each_judged_picture_once(tiny_sd):
    """Pictures are drawn only at the checks, for the targets still active there; the returned pictures and verdicts
    are each target's last judged ones, equal to drawing its final prompt again (which the attack no longer does)."""
    a = attack.parse(["--attack", "unlearndiff", "--concept", "van gogh", "--out", "x", "--timesteps", "3",
                      "--iters-per-t", "1", "--check-every", "1", "--eval-steps", "2", "--prefix", "2"])
    targets = [("a red circle in the style of van gogh", 0), ("a blue star in the style of van gogh", 1)]
    calls = []

    def first_target_at_first_check(ims):  # sees the concept in target 0's picture at the first check only
        calls.append(len(ims))
        return np.array([len(calls) == 1 and i == 0 for i in range(len(ims))])

    before = tiny_sd.counts["unet"]
    prompts, out, hit, learned = attack.unlearndiff(tiny_sd, np.zeros((2, 16, 16, 3), np.uint8),
                                                    data.get_concept("van gogh"), targets,
                                                    first_target_at_first_check, a)
    active = 2 + 1 + 1  # targets active at the three timesteps (and drawn at their checks): both, then one
    assert calls == [2, 1, 1] and hit.tolist() == [True, False]
    # one UNet evaluation per active target and iteration, and 2 DDIM steps x (cond + uncond) per drawn picture
    assert tiny_sd.counts["unet"] - before == active * 1 + active * 2 * 2
    again = attack.generate_with_prefix(tiny_sd, learned["prefix_token_ids"], targets,
                                        [tiny_sd.tokenizer.convert_tokens_to_ids(f"<ud{j}>") for j in range(2)], a)
    assert np.array_equal(again, out)  # the final prompts' pictures


def test_stereo_runs_both_stages_and_resumes(tiny_model, tmp_path):
    args = ["--method", "stereo", "--concept", "van gogh", "--model", tiny_model, "--rounds", "2",
            "--ste-iterations", "2", "--ti-steps", "2", "--ti-images", "2", "--reo-iterations", "3",
            "--ddim-steps", "3", "--grid-seeds", "1"]
    r = run("erase.py", *args, "--out", str(tmp_path / "full"))
    assert r.returncode == 0, r.stderr
    emb = load_file(str(tmp_path / "full" / "embeddings.safetensors"))
    assert set(emb) == {"adversarial.<stereo0>", "adversarial.<stereo1>"}  # one token per stage-1 round
    log = (tmp_path / "full" / "loss.csv").read_text().splitlines()
    assert len(log) == 1 + 2 * 2 + 3  # header, 2 rounds x 2 ESD iterations, 3 REO iterations
    # a run stopped after stage 1 (simulated by a stage-1-only run's leftovers) resumes to the same result
    sd = sdlib.load(tiny_model, "cpu")
    a = erase.parse(args[:-2] + ["--reo-iterations", "3"])
    os.makedirs(tmp_path / "part")
    state = {"dir": str(tmp_path / "part"), "every": 1, "log": []}
    erase.stereo(sd, data.get_concept("van gogh"), a, state)
    assert os.path.exists(tmp_path / "part" / "stereo_rounds.pt")
    resumed = sdlib.load(tiny_model, "cpu")
    erase.stereo(resumed, data.get_concept("van gogh"), a, {"dir": str(tmp_path / "part"), "every": 1, "log": []})
    full = sdlib.load(weights=str(tmp_path / "full"))
    for (n, p), q in zip(full.unet.named_parameters(), resumed.unet.parameters()):
        torch.testing.assert_close(p, q, msg=n)
    # --stereo-tokens: stage 2 alone on the full run's tokens gives the full run's model; other scales another one
    r = run("erase.py", *args, "--stereo-tokens", str(tmp_path / "full"), "--out", str(tmp_path / "reo"))
    assert r.returncode == 0, r.stderr
    assert "stage 1 skipped" in r.stdout + r.stderr
    reo = sdlib.load(weights=str(tmp_path / "reo"))
    for (n, p), q in zip(full.unet.named_parameters(), reo.unet.parameters()):
        torch.testing.assert_close(p, q, msg=n)
    r = run("erase.py", *args, "--stereo-tokens", str(tmp_path / "full"), "--erase-scale-reo", "1",
            "--out", str(tmp_path / "sym"))
    assert r.returncode == 0, r.stderr
    sym = sdlib.load(weights=str(tmp_path / "sym"))
    assert any(not torch.equal(p, q) for p, q in zip(full.unet.parameters(), sym.unet.parameters()))
    bad = run("erase.py", *args, "--rounds", "3", "--stereo-tokens", str(tmp_path / "full"), "--out",
              str(tmp_path / "bad"))
    assert bad.returncode != 0 and "holds 2 adversarial tokens; --rounds is 3" in bad.stderr
    assert not os.path.exists(tmp_path / "bad")


def test_ap_adversary_moves_toward_the_more_damaged_concept():
    """Toy case: two candidate embeddings, erasure damages only the second (its preservation loss is larger);
    the adversary's hard Gumbel-softmax ascent must raise the second candidate's logit."""
    gen = torch.Generator().manual_seed(0)
    cand = torch.stack([torch.zeros(1, 4, 3), torch.ones(1, 4, 3)])  # (C=2, B=1, L=4, D=3)
    pi = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([pi], lr=0.1)
    for _ in range(30):
        erase.ap_adversary_step(pi, opt, cand, lambda c: (c ** 2).mean(), 2.0, gen)
    assert pi[1] > pi[0] + 0.5, pi


@pytest.mark.parametrize("name", ["van gogh", "triangle"])
def test_ap_candidates_in_the_mini_world_are_caption_words_but_not_the_concepts(tiny_sd, name):
    """The mini text encoder learned only its captions' words: AP may preserve those and no others, and never the
    concept's own names and synonyms (preserving 'vincent' would preserve van gogh)."""
    concept = data.get_concept(name)
    words = erase.ap_candidates(tiny_sd, concept, 64, 4000)
    known = set(data.mini_vocabulary())
    assert words and set(words) <= known and not data.own_words(name) & set(words)
    assert len(set(words)) == len(words)
    other = "triangle" if name == "van gogh" else "van gogh"
    assert data.own_words(name) & set(erase.ap_candidates(tiny_sd, data.get_concept(other), 4000, 4000))


def test_ap_runs_and_records_its_candidates(tiny_sd, tmp_path, monkeypatch):
    monkeypatch.setattr(erase, "ap_candidates", lambda sd, c, n, pool: ["circle", "square", "star"])
    a = erase.parse(["--method", "ap", "--concept", "van gogh", "--iterations", "2", "--ddim-steps", "2"])
    before = snapshot(tiny_sd.unet)
    state = {"dir": str(tmp_path), "every": 1, "log": []}
    erase.ap(tiny_sd, data.get_concept("van gogh"), a, state)
    assert changed_names(before, tiny_sd.unet) <= set(sdlib.select_params(tiny_sd, "esd-x", verbose=False))
    assert state["extra_json"]["ap_candidates"] == ["circle", "square", "star"]
    assert "pi" in torch.load(tmp_path / "checkpoint.pt", weights_only=True)["extra"]  # resumable adversary


def test_ap_resume_is_bit_identical(tiny_model, tmp_path, monkeypatch):
    """AP stopped after 2 of 4 iterations and resumed in a fresh model ends where an uninterrupted run does: the
    model, the adversary's logits pi (checkpointed) and its Gumbel noise (drawn from the step's generator)."""
    monkeypatch.setattr(erase, "ap_candidates", lambda sd, c, n, pool: ["circle", "square", "star"])
    concept = data.get_concept("van gogh")

    def run(model, iterations, folder, every):
        a = erase.parse(["--method", "ap", "--concept", "van gogh", "--iterations", str(iterations), "--ddim-steps",
                         "2", "--ap-adv-lr", "0.5"])
        os.makedirs(folder, exist_ok=True)
        state = {"dir": str(folder), "every": every, "log": []}
        erase.ap(model, concept, a, state)
        return state["extra_json"]["ap_pi"]

    full = sdlib.load(tiny_model, "cpu")
    pi_full = run(full, 4, tmp_path / "a", 100)
    run(sdlib.load(tiny_model, "cpu"), 2, tmp_path / "b", 1)  # stopped after 2, a checkpoint every iteration
    resumed = sdlib.load(tiny_model, "cpu")
    assert run(resumed, 4, tmp_path / "b", 1) == pi_full and len(set(pi_full)) > 1  # pi moved, and the same
    for (n, p), q in zip(full.unet.named_parameters(), resumed.unet.parameters()):
        assert torch.equal(p, q), n


def test_gumbel_softmax_hard_is_one_hot_with_the_softmax_gradient():
    logits = torch.tensor([0.5, 2.0, -1.0], requires_grad=True)
    g = erase.gumbel_softmax_hard(logits, 1.0, torch.Generator().manual_seed(0))
    assert sorted(g.tolist()) == [0.0, 0.0, 1.0]
    assert torch.equal(g, erase.gumbel_softmax_hard(logits, 1.0, torch.Generator().manual_seed(0)))  # seeded
    (g * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert logits.grad.abs().sum() > 0  # straight-through: the soft sample's gradient reaches the logits


def test_dm2_verify_score_equals_formula():
    g = torch.Generator().manual_seed(4)
    f_c, f_r, f_e = torch.randn(5, 6, generator=g), torch.randn(7, 6, generator=g), torch.randn(3, 6, generator=g)
    ref = f_r.mean(0)
    expected = np.mean([float((c - ref) @ (e - ref) / ((c - ref).norm() * (e - ref).norm())) for c in f_c for e in f_e])
    assert abs(erase.verify_score(f_c, f_r, f_e) - expected) < 1e-6
    same = erase.verify_score(f_e, f_r, f_e)  # pictures like the pool's score high, their mirror image its negative
    assert same > 0.3 and abs(erase.verify_score(2 * f_r.mean(0) - f_e, f_r, f_e) + same) < 1e-6


def test_dm2_verify_ceiling_is_the_pool_against_itself():
    """The ceiling scores one half of the pool pictures against the other: high when the anchor's features lie away
    from the concept's, near zero when the anchor looks like the concept."""
    g = torch.Generator().manual_seed(5)
    concept_dir = torch.randn(6, generator=g)
    f_e = concept_dir + 0.3 * torch.randn(8, 6, generator=g)
    far, near = torch.zeros(4, 6), f_e.mean(0).expand(4, 6)
    assert abs(erase.verify_ceiling(f_e, far) - erase.verify_score(f_e[:4], far, f_e[4:])) < 1e-6
    assert erase.verify_ceiling(f_e, far) > 0.8 and abs(erase.verify_ceiling(f_e, near)) < 0.4


def test_dm2_anchor_rule_keeps_the_papers_anchor_unless_the_verifier_cannot_see_the_concept():
    asked = []

    def ceiling_of(prompt):
        asked.append(prompt)
        return {"a photo": 0.26, "a thing": 0.49, "an image": 0.44, "a picture": 0.29, "a drawing": 0.27}[prompt]

    candidates = [erase.DM2_ANCHOR, *erase.DM2_ANCHOR_FALLBACKS]
    assert candidates[0] == "a photo" and erase.DM2_ANCHOR_RULE == "auto"
    assert erase.choose_anchor(candidates, ceiling_of, 0.4) == ("a thing", {"a photo": 0.26, "a thing": 0.49})
    assert asked == ["a photo", "a thing"]  # stops at the first that reaches the bar
    assert erase.choose_anchor(candidates, ceiling_of, 0.2)[0] == "a photo"  # the paper's, when it can see
    assert erase.choose_anchor(candidates, ceiling_of, 0.9)[0] == "a thing"  # none reaches: the highest ceiling
    assert erase.PAPER_SCHEDULE["dm2"]["dm2_anchor"] == "a photo"  # --schedule paper keeps the paper's c0
    assert erase.parse(["--method", "dm2", "--concept", "purple", "--out", "x", "--dm2-anchor", "an image"]
                       ).dm2_anchor == "an image"


def test_dm2_runs_and_its_lora_run_folder_round_trips(tiny_model, tmp_path):
    out, export = tmp_path / "run", tmp_path / "export"
    r = run("erase.py", "--method", "dm2", "--concept", "van gogh", "--model", tiny_model, "--dm2-pool", "4",
            "--dm2-mine-steps", "2", "--dm2-circumvent-steps", "2", "--dm2-batch", "2", "--dm2-max-loops", "2",
            "--dm2-threshold", "-2", "--dm2-lr", "0.05", "--out", str(out), "--export", str(export), "--grid-seeds", "1")
    assert r.returncode == 0, r.stderr
    config = json.load(open(out / "config.json"))
    assert config["dm2_loops"] == 2
    assert len(config["dm2_verify_scores"]) == len(config["dm2_verify_scores_after"]) == 2
    assert -1 <= config["dm2_verify_ceiling"] <= 1
    assert config["dm2_anchor"] in (erase.DM2_ANCHOR, *erase.DM2_ANCHOR_FALLBACKS)  # --dm2-anchor auto
    tensors = load_file(str(out / "weights.safetensors"))
    assert tensors and all(k.startswith("lora.unet.") and ".to_v." in k for k in tensors)
    applied = sdlib.load(weights=str(out))  # base + merged LoRA ...
    exported = sdlib.load(str(export))  # ... equals the exported, merged pipeline
    base = sdlib.load(tiny_model)
    moved = 0
    for (n, p), q, b in zip(applied.unet.named_parameters(), exported.unet.parameters(), base.unet.parameters()):
        torch.testing.assert_close(p, q, msg=n)
        moved += int(not torch.equal(p, b))
        assert torch.equal(p, b) or n.endswith("to_v.weight"), n  # only value projections changed
    assert moved > 0


def test_resumed_run_reports_the_whole_runs_cost(tiny_model, tmp_path, monkeypatch):
    """A run stopped during DM2's second loop and resumed reports the cost of both processes: the start (drawing
    the pool) and loop 1 up to its checkpoint, then the start again and loop 2. Every loop costs the same UNet
    evaluations, so that is exactly twice a one-loop run's, more than an uninterrupted two-loop run's."""
    common = ["--method", "dm2", "--concept", "van gogh", "--model", tiny_model, "--dm2-pool", "2",
              "--dm2-mine-steps", "1", "--dm2-circumvent-steps", "2", "--dm2-batch", "1", "--dm2-threshold", "-2",
              "--dm2-verify-images", "1", "--ddim-steps", "2", "--grid-seeds", "0"]
    def evals(name, loops, *extra):
        erase.main([*common, "--dm2-max-loops", str(loops), "--out", str(tmp_path / name), *extra])
        return json.load(open(tmp_path / name / "config.json"))["cost"]
    full, one = evals("full", 2)["unet_evals"], evals("one", 1)["unet_evals"]
    invert, calls = erase.textual_inversion, []
    def stop_in_loop_2(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process stops during loop 2's mining, after loop 1's checkpoint
        return invert(*args, **kw)
    monkeypatch.setattr(erase, "textual_inversion", stop_in_loop_2)
    with pytest.raises(KeyboardInterrupt):
        evals("resumed", 2)
    assert os.path.exists(tmp_path / "resumed.tmp" / erase.COST_FILE)
    monkeypatch.setattr(erase, "textual_inversion", invert)
    cost = evals("resumed", 2, "--resume")
    assert cost["unet_evals"] == 2 * one > full and cost["resumed_after"]["unet_evals"] == one
    assert cost["seconds"] >= cost["resumed_after"]["seconds"] > 0
    assert not os.path.exists(tmp_path / "resumed" / erase.COST_FILE)  # the run folder keeps no checkpoint files


def test_erase_grid_reads_the_original_models_pictures_from_the_picture_cache(tiny_model, tmp_path, monkeypatch):
    """--picture-cache: the 'before' half of before_after.png is drawn once and reused by the next run (the
    benchmark's erase cells share it); the grid equals one drawn without a cache."""
    from PIL import Image
    cache = tmp_path / "pictures"
    common = ["--method", "uce", "--concept", "van gogh", "--model", tiny_model, "--grid-seeds", "1"]
    erase.main([*common, "--out", str(tmp_path / "none")])
    erase.main([*common, "--out", str(tmp_path / "first"), "--picture-cache", str(cache)])
    assert len(list(cache.iterdir())) == 1
    drawn = []
    generate = sdlib.generate
    monkeypatch.setattr(sdlib, "generate", lambda sd, prompts, *a, **k: drawn.append(len(prompts)) or
                        generate(sd, prompts, *a, **k))
    erase.main([*common, "--out", str(tmp_path / "second"), "--picture-cache", str(cache)])
    assert len(drawn) == 1 and len(list(cache.iterdir())) == 1  # only the 'after' pictures were drawn
    grids = [np.asarray(Image.open(tmp_path / n / "before_after.png")) for n in ("none", "first", "second")]
    assert np.array_equal(grids[0], grids[1]) and np.array_equal(grids[0], grids[2])
    config = json.load(open(tmp_path / "second" / "config.json"))  # what the grid shows
    assert config["before_after_prompts"] and len(config["before_after_rows"]) == 4


def test_train_method_auto_follows_the_concept_kind():
    """--train-method auto: ESD-x (cross-attention) for a style, ESD-u for an object, as the ESD paper splits
    them; the learning rate follows the resolved method unless --lr is given; an explicit method is kept."""
    for name, method, lr in (("van gogh", "esd-x", erase.ESD_LR["esd-x"]), ("triangle", "esd-u", erase.ESD_LR["esd-u"])):
        for m in ("esd", "stereo", "ap"):
            a = erase.parse(["--method", m, "--concept", name])
            assert a.train_method == "auto" and a.lr is None
            erase.resolve_for_concept(a, data.get_concept(name))
            assert (a.train_method, a.lr) == (method, lr)
    a = erase.parse(["--method", "stereo", "--concept", "triangle", "--train-method", "esd-x", "--lr", "1e-3"])
    erase.resolve_for_concept(a, data.get_concept("triangle"))
    assert (a.train_method, a.lr) == ("esd-x", 1e-3)
    assert data.get_concept("nudity", "sd").kind == "object" and data.get_concept("claude monet", "sd").kind == "style"


def test_ap_candidates_on_a_real_size_vocabulary_encode_a_shortlist(tiny_sd):
    """Real SD's vocabulary (the tiny model has CLIP's 49,408 tokens; a 512 px world reads all whole words): AP
    encodes a shortlist of AP_SHORTLIST x pool words, not all 32,607, before its first step."""
    from unittest import mock
    concept = data.get_concept("van gogh", "sd")
    before = tiny_sd.counts["text_encoder"]
    with mock.patch.object(tiny_sd, "world", "sd"):
        words = erase.ap_candidates(tiny_sd, concept, 16, 64)
    calls = tiny_sd.counts["text_encoder"] - before
    assert len(erase.vocabulary_words(tiny_sd)) > 30000
    assert len(words) == 16 and calls <= erase.AP_SHORTLIST * 64 + 1, calls


# ---- --schedule paper --------------------------------------------------------------------------------------------
DM2_APPENDIX_A = dict(dm2_mine_images=3, dm2_mine_steps=1000, dm2_mine_lr=0.1, dm2_mine_lr_end=0.01,
                      dm2_mine_decay="step", dm2_mine_decay_at=0.5, dm2_mine_clip=10.0, dm2_threshold=0.2,
                      dm2_newest_prob=0.7, dm2_circumvent_steps=1000, dm2_batch=1, dm2_optimizer="sgd",
                      dm2_lr=0.01, dm2_lr_end=0.001, dm2_decay_at=0.8, dm2_clip=100.0, dm2_loss="sum", dm2_rank=8,
                      dm2_alpha_c=1.0, dm2_alpha_p=0.5)


def test_schedule_paper_sets_the_papers_numbers():
    """DM2: Appendix A, number by number; STEREO and AP: their public code's; --schedule default (or none) keeps
    the mini world's defaults. Written out here, not read from erase.PAPER_SCHEDULE."""
    a = erase.parse(["--method", "dm2", "--concept", "van gogh", "--schedule", "paper"])
    assert a.schedule == "paper" and {k: getattr(a, k) for k in DM2_APPENDIX_A} == DM2_APPENDIX_A
    for argv in ([], ["--schedule", "default"]):
        d = erase.parse(["--method", "dm2", "--concept", "van gogh", *argv])
        assert (d.schedule, d.dm2_optimizer, d.dm2_lr, d.dm2_lr_end, d.dm2_clip, d.dm2_mine_decay,
                d.dm2_circumvent_steps, d.dm2_batch, d.dm2_mine_steps, d.dm2_loss) == \
            ("default", "adam", 3e-3, None, None, "linear", 300, 4, 100, "mean")
    s = erase.parse(["--method", "stereo", "--concept", "van gogh", "--schedule", "paper"])
    assert (s.rounds, s.ste_iterations, s.ste_lr, s.ddim_steps, s.start_guidance, s.batch, s.ti_steps, s.ti_lr,
            s.ti_images, s.ti_batch, s.reo_iterations, s.lr, s.stereo_optimizer, s.anchor_scale,
            s.erase_scale_reo) == (4, 200, 5e-6, 50, 3.0, 1, 3000, 5e-3, 125, 1, 200, 2e-5, "adamw", 1.0, 3.0)
    # the public code's stage-1 target, APG's normalized_guidance(e_c, e_0, 2) at its defaults (eta 1, no momentum,
    # no threshold: the parallel and orthogonal parts add back up to the difference): e_c - (2 - 1)(e_c - e_0)
    g = torch.Generator().manual_seed(0)
    e_0, e_c = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    torch.testing.assert_close(erase.losses.esd_target(e_0, e_c, s.eta), e_c - (2 - 1) * (e_c - e_0))
    ap = erase.parse(["--method", "ap", "--concept", "van gogh", "--schedule", "paper"])
    assert (ap.iterations, ap.lr, ap.eta, ap.start_guidance, ap.ddim_steps, ap.batch, ap.ap_lambda,
            ap.ap_temperature, ap.ap_adv_lr, ap.ap_candidates, ap.ap_vocab_pool) == \
        (1000, 1e-5, 1.0, 3.0, 50, 1, 1.0, 2.0, 1e-2, 100, 1000)
    erase.resolve_for_concept(ap, data.get_concept("van gogh"))  # the schedule's lr is not replaced by ESD_LR's
    assert ap.lr == 1e-5 and ap.train_method == "esd-x"
    esd = erase.parse(["--method", "esd", "--concept", "triangle", "--schedule", "paper"])  # ESD's public code
    erase.resolve_for_concept(esd, data.get_concept("triangle"))
    assert (esd.iterations, esd.lr, esd.eta, esd.start_guidance, esd.ddim_steps, esd.batch, esd.train_method) == \
        (1000, 1e-5, 1.0, 3.0, 50, 1, "esd-u")


def test_an_explicit_flag_wins_over_the_schedule():
    """In any order and spelling, and also when the value given is the default's (DM2_BATCH is 4)."""
    a = erase.parse(["--dm2-lr=0.5", "--method", "dm2", "--concept", "van gogh", "--dm2-circumvent-steps", "7",
                     "--schedule", "paper", "--dm2-batch", "4", "--dm2-optimizer", "adam", "--dm2-clip", "1"])
    given = dict(dm2_lr=0.5, dm2_circumvent_steps=7, dm2_batch=4, dm2_optimizer="adam", dm2_clip=1.0)
    assert {k: getattr(a, k) for k in given} == given
    assert {k: getattr(a, k) for k in DM2_APPENDIX_A if k not in given} == \
        {k: v for k, v in DM2_APPENDIX_A.items() if k not in given}
    s = erase.parse(["--method", "stereo", "--concept", "van gogh", "--schedule", "paper", "--lr", "3e-4",
                     "--rounds", "2"])
    assert (s.lr, s.rounds, s.ste_lr, s.ste_iterations) == (3e-4, 2, 5e-6, 200)


def test_schedule_paper_with_another_method_fails_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        erase.parse(["--method", "uce", "--concept", "van gogh", "--schedule", "paper"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and lines == ["error: --schedule paper applies to dm2, stereo, ap, esd, not --method uce"]


def test_dm2_paper_schedule_circumvents_with_sgd_and_steps_its_rates():
    """Circumventing: SGD (no momentum) at 0.01, 0.001 from 80% of the steps on; mining: 0.1, then 0.01 from half
    of its steps on (a step, not linear). The default keeps Adam at a constant rate and mining's linear decay."""
    a = erase.parse(["--method", "dm2", "--concept", "van gogh", "--schedule", "paper"])
    opt = erase.dm2_optimizer([torch.nn.Parameter(torch.zeros(3))], a)
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0
    assert [erase.dm2_circumvent_lr(a, s) for s in range(1000)] == [0.01] * 800 + [0.001] * 200
    mining = [inversion.scheduled_lr(a.dm2_mine_lr, a.dm2_mine_lr_end, s, 1000, a.dm2_mine_decay, a.dm2_mine_decay_at)
              for s in range(1000)]
    assert mining == [0.1] * 500 + [0.01] * 500
    d = erase.parse(["--method", "dm2", "--concept", "van gogh"])
    assert type(erase.dm2_optimizer([torch.nn.Parameter(torch.zeros(3))], d)) is torch.optim.Adam
    assert {erase.dm2_circumvent_lr(d, s) for s in range(d.dm2_circumvent_steps)} == {d.dm2_lr}
    linear = [inversion.scheduled_lr(0.1, 0.01, s, 100) for s in range(100)]
    assert linear[0] == 0.1 and abs(linear[-1] - 0.01) < 1e-12 and abs(linear[50] - (0.1 - 0.09 * 50 / 99)) < 1e-12


def test_dm2_paper_schedule_in_the_loop(tiny_model, tmp_path, monkeypatch):
    """dm2() itself under --schedule paper (its step counts cut by flags): every circumvent step is SGD's at the
    stepped rate with its gradients clipped to 100; every mining step is Adam's at 0.1 then 0.01, clipped to 10."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    a = erase.parse(["--method", "dm2", "--concept", "van gogh", "--schedule", "paper", "--dm2-pool", "2",
                     "--dm2-mine-steps", "4", "--dm2-circumvent-steps", "5", "--dm2-verify-images", "1",
                     "--dm2-max-loops", "1", "--dm2-threshold", "-2"])
    steps, clips = [], []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, max_norm, *x, **k: clips.append(max_norm) or
                        clip(p, max_norm, *x, **k))
    handle = register_optimizer_step_pre_hook(lambda opt, *_: steps.append((type(opt), opt.param_groups[0]["lr"])))
    try:
        erase.dm2(sdlib.load(tiny_model, device="cpu"), data.get_concept("van gogh"), a,
                  {"dir": str(tmp_path), "every": 100, "log": []})
    finally:
        handle.remove()
    adam, sgd = torch.optim.Adam, torch.optim.SGD
    assert steps == [(adam, 0.1), (adam, 0.1), (adam, 0.01), (adam, 0.01)] + [(sgd, 0.01)] * 4 + [(sgd, 0.001)]
    assert clips == [10.0] * 4 + [100.0] * 5


def test_resume_refuses_a_changed_schedule(tiny_model, tmp_path, monkeypatch, capsys):
    """A DM2 run stopped after its first loop's checkpoint cannot be resumed under --schedule paper."""
    common = ["--method", "dm2", "--concept", "van gogh", "--model", tiny_model, "--dm2-pool", "2",
              "--dm2-mine-steps", "1", "--dm2-circumvent-steps", "2", "--dm2-batch", "1", "--dm2-threshold", "-2",
              "--dm2-verify-images", "1", "--dm2-max-loops", "2", "--grid-seeds", "0", "--out", str(tmp_path / "r")]
    invert, calls = erase.textual_inversion, []
    def stop_in_loop_2(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return invert(*args, **kw)
    monkeypatch.setattr(erase, "textual_inversion", stop_in_loop_2)
    with pytest.raises(KeyboardInterrupt):
        erase.main(common)
    monkeypatch.setattr(erase, "textual_inversion", invert)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        erase.main([*common, "--resume", "--schedule", "paper"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "was made with other settings" in err and "schedule" in err.split("(")[1]
    assert not (tmp_path / "r").exists()
