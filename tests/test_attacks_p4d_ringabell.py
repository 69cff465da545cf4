"""P4D (PEZ projection, P4D-K layout, the original model's targets) and Ring-A-Bell (concept vector, prompt pairs,
genetic search, text-encoder-only cost): invariants on toy tensors, then each attack end to end on a tiny model."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import attack
import data
import judges
import losses
import sd as sdlib
from conftest import ROOT, uce_run


def never(images):  # a judge that never sees the concept
    return np.zeros(len(images), bool)


def attack_args(which, *extra):
    return attack.parse(["--attack", which, "--concept", "van gogh", "--out", "x", "--eval-steps", "1", *extra])


# ---- P4D ---------------------------------------------------------------------------------------------------------
def test_pez_projection_picks_the_nearest_row_by_cosine_or_l2():
    table = torch.tensor([[1.0, 0.0], [10.0, 1.0], [-1.0, 0.0]])
    x = torch.tensor([[0.9, 0.2]])
    assert attack.pez_project(x, table, "cosine").item() == 1  # direction: row 1 is closer in angle ...
    assert attack.pez_project(x, table, "l2").item() == 0  # ... row 0 in distance
    g = torch.Generator().manual_seed(0)
    table, cont = torch.randn(50, 8, generator=g), torch.randn(3, 4, 8, generator=g)
    cos = torch.nn.functional.cosine_similarity(cont[..., None, :], table, dim=-1)  # (3, 4, 50)
    assert torch.equal(attack.pez_project(cont, table, "cosine"), cos.argmax(-1))
    assert torch.equal(attack.pez_project(cont, table, "l2"), (cont[..., None, :] - table).norm(dim=-1).argmin(-1))


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_pez_step_forwards_exact_vocabulary_rows_and_moves_the_continuous_ones(metric):
    g = torch.Generator().manual_seed(1)
    table = torch.randn(40, 6, generator=g)
    vocab = torch.arange(38)  # the last two rows play BOS/EOS: never chosen
    cont = torch.randn(3, 2, 6, generator=g).requires_grad_(True)
    before = cont.detach().clone()
    weight = torch.randn(2, 6, generator=g)
    seen = {}

    def loss_fn(hard):  # linear: d loss / d hard = weight for every row
        seen["hard"] = hard
        return (hard * weight).sum()

    opt = torch.optim.SGD([cont], lr=0.5)
    rows = torch.tensor([0, 2])  # row 1 is done: untouched
    loss, ids = attack.pez_step(cont, loss_fn, opt, table, vocab, metric, rows=rows)
    assert ids.shape == (2, 2) and (ids < 38).all()
    assert torch.equal(seen["hard"], table[ids])  # the forward pass sees vocabulary embeddings exactly
    assert torch.equal(ids, vocab[attack.pez_project(before[rows], table[vocab], metric)])
    assert abs(loss - float((table[ids] * weight).sum())) < 1e-5
    torch.testing.assert_close(cont.grad[rows], weight.expand(2, 2, 6))  # straight-through gradient ...
    torch.testing.assert_close(cont.detach()[rows], before[rows] - 0.5 * weight)  # ... applied to the continuous
    assert torch.equal(cont.detach()[1], before[1])


def test_p4d_k_layout_inserts_a_slot_after_every_k_prompt_tokens():
    slots = [100, 101, 102]
    assert attack.p4d_k_layout([11, 12, 13, 14, 15, 16, 17], 3, slots) == ([11, 12, 13, 100, 14, 15, 16, 101, 17], 2)
    assert attack.p4d_k_layout([11, 12, 13], 3, slots) == ([11, 12, 13, 100], 1)
    assert attack.p4d_k_layout([11], 3, slots) == ([11, 100], 1)  # shorter than k: one slot at the end
    long_ids, used = attack.p4d_k_layout(list(range(70)), 3, list(range(1000, 1030)))
    assert len(long_ids) <= 75 and used == len(long_ids) // 4 and long_ids[3] == 1000  # cut to fit 77 positions


def test_p4d_k_keeps_the_prompt_tokens_and_learns_one_after_every_three(tiny_sd):
    a = attack_args("p4d-k", "--iterations", "2", "--check-every", "1")
    targets = [("a red circle in the style of van gogh", 0), ("a blue star in the style of van gogh", 1)]
    images = np.zeros((2, 16, 16, 3), np.uint8)
    original = attack.original_weights(tiny_sd, None)
    prompts, out, hit, learned, info = attack.p4d(tiny_sd, images, data.get_concept("van gogh"), targets, never, a,
                                                  original)
    assert out.shape == (2, 16, 16, 3) and len(prompts) == 2 and not hit.any() and info["kept_at_iteration"] == [2, 2]
    seq, mask = learned["sequence_ids"], learned["learned_mask"]
    bos, eos = tiny_sd.tokenizer.bos_token_id, tiny_sd.tokenizer.eos_token_id
    for (p, _), row, m in zip(targets, seq, mask):
        ids = tiny_sd.tokenizer(p, add_special_tokens=False).input_ids
        n_learned = len(ids) // 3
        assert m.nonzero().flatten().tolist() == [4 * (j + 1) for j in range(n_learned)]  # after tokens 3, 6, 9
        fixed = row[~m].tolist()
        assert fixed[:len(ids) + 2] == [bos, *ids, eos]  # the prompt's own tokens, unchanged and in order
        assert (row[m] < bos).all()  # learned places hold real vocabulary tokens, whole words by default
        assert all(t.endswith("</w>") for t in tiny_sd.tokenizer.convert_ids_to_tokens(row[m].tolist()))
    assert info["text_round_trip"] == [True, True]  # the decoded prompts tokenise back to the kept tokens
    table = tiny_sd.text_encoder.get_input_embeddings().weight
    assert torch.cdist(learned["continuous"].flatten(0, 1), table).min() > 0  # AdamW moved them off the table


def test_p4d_n_replaces_the_prompt_with_free_tokens(tiny_sd):
    a = attack_args("p4d-n", "--iterations", "2", "--check-every", "2", "--num-tokens", "5")
    targets = [("a red circle in the style of van gogh", 0)]
    prompts, _, _, learned, _ = attack.p4d(tiny_sd, np.zeros((1, 16, 16, 3), np.uint8), data.get_concept("van gogh"),
                                           targets, never, a, attack.original_weights(tiny_sd, None))
    seq, mask = learned["sequence_ids"][0], learned["learned_mask"][0]
    assert mask.nonzero().flatten().tolist() == [1, 2, 3, 4, 5] and seq[6] == tiny_sd.tokenizer.eos_token_id
    assert prompts[0] == attack.decode_ids(tiny_sd, seq)


def test_token_pools(tiny_sd):
    all_ids, words = attack.vocab_ids(tiny_sd, "all"), attack.vocab_ids(tiny_sd, "words")
    special = torch.tensor(tiny_sd.tokenizer.all_special_ids)
    assert len(all_ids) == 49406 and not torch.isin(special, all_ids).any()
    assert 30_000 < len(words) < len(all_ids) and torch.isin(words, all_ids).all()
    g = torch.Generator().manual_seed(5)
    seq = attack.with_specials(tiny_sd, words[torch.randint(len(words), (50, 16), generator=g)])
    prompts = [attack.decode_ids(tiny_sd, row) for row in seq]
    assert attack.round_trips(tiny_sd, seq, prompts).all()  # whole words survive decoding and re-tokenising ...
    seq = attack.with_specials(tiny_sd, all_ids[torch.randint(len(all_ids), (50, 16), generator=g)])
    assert not attack.round_trips(tiny_sd, seq, [attack.decode_ids(tiny_sd, row) for row in seq]).all()  # ... these not
    # the mini world's trained words: its captions' whole words, nothing else; auto picks them in the mini world
    trained = attack.vocab_ids(tiny_sd, "trained")
    assert 2500 < len(trained) < 3500 and torch.isin(trained, words).all()
    names = set(tiny_sd.tokenizer.convert_ids_to_tokens(trained.tolist()))
    assert {"starry</w>", "triangle</w>", "crimson</w>", "the</w>"} <= names
    assert attack.pool_of(tiny_sd, "p4d-n", "auto") == "trained" and attack.pool_of(tiny_sd, "p4d-n", "all") == "all"


def make_fake_run(sd, folder):
    """A run folder changing one cross-attention key, one text-encoder weight and (as LoRA) one value projection."""
    unet, te = dict(sd.unet.named_parameters()), dict(sd.text_encoder.named_parameters())
    k_name = next(n for n in unet if n.endswith("attn2.to_k.weight"))
    v_name = next(n for n in unet if n.endswith("attn1.to_v.weight"))
    te_name = next(n for n in te if n.endswith("fc1.weight"))
    out_f, in_f = unet[v_name].shape
    changed = {f"unet.{k_name}": unet[k_name] + 0.5, f"text_encoder.{te_name}": te[te_name] * 2,
               f"lora.unet.{v_name[:-len('.weight')]}.lora_A": torch.ones(2, in_f),
               f"lora.unet.{v_name[:-len('.weight')]}.lora_B": torch.full((out_f, 2), 0.1)}
    folder.mkdir()
    sdlib.save_run(str(folder), sd, changed, {"base_model": sd.name, "base_fingerprint": sdlib.fingerprint(sd),
                                              "lora": {"scaling": 1.0}})
    return {("unet", k_name), ("unet", v_name), ("text_encoder", te_name)}


def test_original_weights_give_the_base_model_after_a_run(tiny_sd, tmp_path):
    g = torch.Generator().manual_seed(2)
    z, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500])
    ids = sdlib.tokenize(tiny_sd, ["a red circle in the style of van gogh", "a blue star"])
    with torch.no_grad():
        cond = tiny_sd.text_encoder(ids)[0]
        e_base = sdlib.eps(tiny_sd, tiny_sd.unet, z, t, cond)
    expected = make_fake_run(tiny_sd, tmp_path / "run")
    original = attack.original_weights(tiny_sd, str(tmp_path / "run"))
    assert {(part, n) for part, d in original.items() for n in d} == expected  # only what the run changes
    sdlib.apply_run(tiny_sd, str(tmp_path / "run"))
    before = dict(tiny_sd.counts)
    with torch.no_grad():
        assert not torch.allclose(tiny_sd.text_encoder(ids)[0], cond)  # the run did change both models ...
        assert not torch.allclose(sdlib.eps(tiny_sd, tiny_sd.unet, z, t, cond), e_base)
        torch.testing.assert_close(attack.encode_ids(tiny_sd, ids, weights=original["text_encoder"]), cond)
        torch.testing.assert_close(attack.original_eps(tiny_sd, original, z, t, cond), e_base)  # ... undone here
        assert not torch.allclose(attack.encode_ids(tiny_sd, ids), cond)  # and only for that call
    assert tiny_sd.counts["unet"] - before["unet"] == 2 + 2  # both calls counted
    assert tiny_sd.counts["text_encoder"] - before["text_encoder"] == 2 + 2


# ---- Ring-A-Bell -------------------------------------------------------------------------------------------------
def test_concept_vector_is_the_mean_of_differences():
    g = torch.Generator().manual_seed(3)
    emb_with, emb_without = torch.randn(5, 77, 8, generator=g), torch.randn(5, 77, 8, generator=g)
    loop = sum(emb_with[i] - emb_without[i] for i in range(5)) / 5
    c = losses.ring_a_bell_concept_vector(emb_with, emb_without)
    torch.testing.assert_close(c, loop)
    torch.testing.assert_close(c, emb_with.mean(0) - emb_without.mean(0))
    target = losses.ring_a_bell_target(emb_without[:2], c, 3.0)
    torch.testing.assert_close(target[1], emb_without[1] + 3 * c)
    fit = losses.ring_a_bell_loss(emb_with[:2], target)
    assert fit.shape == (2,) and abs(fit[0] - ((emb_with[0] - target[0]) ** 2).sum() / (77 * 8)) < 1e-5


def test_prompt_pairs_differ_only_in_the_concept():
    style = attack.ring_a_bell_pairs(data.get_concept("van gogh"))
    assert len(style) == len(data.SHAPES) * len(data.COLOR_NAMES)
    assert all(w == wo + " in the style of van gogh" for w, wo in style)
    shape = attack.ring_a_bell_pairs(data.get_concept("triangle"))
    assert len(shape) == len(data.COLOR_NAMES) * len(data.STYLES) * (len(data.SHAPES) - 1)
    for w, wo in shape:  # the same words but one: triangle there, another shape in its place
        diff = [(x, y) for x, y in zip(w.split(), wo.split(), strict=True) if x != y]
        assert len(diff) == 1 and diff[0][0] == "triangle" and diff[0][1] in data.SHAPES
    generic = attack.ring_a_bell_pairs(data.get_concept("triangle"), "shape")
    assert all(w.replace("triangle", "shape") == wo for w, wo in generic)
    colour = attack.ring_a_bell_pairs(data.get_concept("purple"))  # a colour: said and unsaid
    assert len(colour) == len(data.SHAPES) * len(data.STYLES)
    assert all(w.replace("purple ", "", 1) == wo and "purple" not in wo for w, wo in colour)


@pytest.mark.parametrize("name, phrases", [
    ("van gogh", [" in the style of van gogh", " by van gogh", ", van gogh style", " painted by vincent van gogh"]),
    ("nudity", ["nude ", "naked "])])
def test_real_sd_pairs_drop_only_the_concept_words(name, phrases):
    """The shipped pair files (concepts/ringabell_*.csv): each 'without' prompt is its 'with' twin with exactly the
    concept's phrase taken out."""
    pairs = attack.ring_a_bell_pairs(data.get_concept(name, "sd"))
    assert len(pairs) >= 30 and len(set(pairs)) == len(pairs)
    assert all(any(ph in w and w.replace(ph, "", 1) == wo for ph in phrases) for w, wo in pairs)
    monet = attack.ring_a_bell_pairs(data.get_concept("claude monet", "sd"))  # no file: its prompts vs its guides
    assert all(w == wo + " in the style of claude monet" for w, wo in monet)


def test_concept_file_pairs_and_a_bad_pairs_file(tmp_path):
    import json as _json
    c = {"name": "owl", "words": "owl", "prompts": ["a photo of an owl"], "templates": ["a photo of an {}"],
         "pairs": [["an owl on a branch", "a branch"], ["a photo of an owl", "a photo"]]}
    path = tmp_path / "owl.json"
    path.write_text(_json.dumps(c))
    assert attack.ring_a_bell_pairs(data.get_concept("owl", concept_file=str(path))) == [tuple(p) for p in c["pairs"]]
    path.write_text(_json.dumps({**c, "pairs": [["an owl", "an owl"]]}))
    with pytest.raises(data.DataError, match="pairs must be"):
        data.get_concept("owl", concept_file=str(path))
    bad = tmp_path / "pairs.csv"
    bad.write_text("with,without\na,b\n")
    with pytest.raises(data.DataError, match="with_concept,without_concept"):
        data.read_pairs_csv(str(bad))
    no_pairs = tmp_path / "nopairs.json"
    no_pairs.write_text(_json.dumps({k: v for k, v in c.items() if k != "pairs"}))
    with pytest.raises(data.DataError, match="Ring-A-Bell needs prompt pairs for concept 'owl'"):
        attack.ring_a_bell_pairs(data.get_concept("owl", concept_file=str(no_pairs)))


def test_ring_a_bell_concept_vector_on_the_tiny_model(tiny_sd):
    """The attack's concept vector and targets equal tau(with) - tau(without) averaged one pair at a time."""
    a = attack_args("ringabell-continuous", "--eta", "2.5")
    targets = [("a red circle in the style of van gogh", 0), ("a blue star in the style of van gogh", 1)]
    _, images, _, learned, info = attack.ringabell(tiny_sd, None, data.get_concept("van gogh"), targets, never, a,
                                                   attack.original_weights(tiny_sd, None))
    pairs = attack.ring_a_bell_pairs(data.get_concept("van gogh"))
    with torch.no_grad():
        c = sum(sdlib.encode(tiny_sd, [w])[0] - sdlib.encode(tiny_sd, [wo])[0] for w, wo in pairs) / len(pairs)
        tau = sdlib.encode(tiny_sd, [p for p, _ in targets])
    torch.testing.assert_close(learned["concept_vector"], c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(learned["target_embeddings"], tau + 2.5 * c, atol=1e-5, rtol=1e-5)
    assert images.shape == (2, 16, 16, 3)
    assert info["search_cost"]["unet_evals"] == 0
    assert info["search_cost"]["text_encoder_evals"] == 2 * len(pairs) + 2  # the pairs and the targets


def test_genetic_search_never_worsens_and_improves_on_a_toy_fitness():
    g = torch.Generator().manual_seed(4)
    vocab = torch.arange(3, 40)
    goal = vocab[torch.randint(len(vocab), (3, 8), generator=g)]  # (n, L): each search has its own answer

    def fitness(cand):  # (n, P, L) -> (n, P): positions that differ from the goal
        return (cand != goal[:, None]).float().sum(-1)

    best, history = attack.genetic_search(fitness, 3, 8, vocab, population=30, generations=40, crossover=0.5,
                                          mutation=0.5, elite=2, gen=g)
    assert history.shape == (41, 3) and best.shape == (3, 8)
    assert (history[1:] <= history[:-1]).all()  # elitism: the best never gets worse ...
    assert (history[-1] < history[0]).all()  # ... and the search does improve
    torch.testing.assert_close(fitness(best[:, None])[:, 0], history[-1])
    assert torch.isin(best, vocab).all()
    first, _ = attack.genetic_search(fitness, 3, 8, vocab, 30, 5, 0.5, 0.5, 2, torch.Generator().manual_seed(5))
    second, _ = attack.genetic_search(fitness, 3, 8, vocab, 30, 5, 0.5, 0.5, 2, torch.Generator().manual_seed(5))
    assert torch.equal(first, second)  # its own generator only: same seed, same search


# ---- command line ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--attack", "p4d"], "invalid choice: 'p4d'"),
    (["--attack", "p4d-n", "--num-tokens", "80"], "--num-tokens must be at most 75"),
    (["--attack", "p4d-k", "--insert-every", "0"], "--insert-every must be at least 1"),
    (["--attack", "p4d-n", "--projection", "dot"], "invalid choice: 'dot'"),
    (["--attack", "ringabell", "--population", "4", "--elite", "4"], "--elite (4) must be smaller than --population"),
    (["--attack", "ringabell", "--mutation", "1.5"], "--crossover and --mutation are probabilities"),
    (["--attack", "ringabell", "--shape-pairs", "none"], "invalid choice: 'none'"),
])
def test_bad_input_gets_one_clear_line(capsys, args, message):
    with pytest.raises(SystemExit) as e:
        attack.parse([*args, "--concept", "van gogh", "--out", "x"])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_per_attack_defaults():
    p4d, rab, ud = attack_args("p4d-k"), attack_args("ringabell"), attack_args("unlearndiff")
    assert (p4d.lr, p4d.weight_decay, p4d.check_every, p4d.num_tokens) == (0.1, 0.1, attack.P4D_CHECK_EVERY, 16)
    assert (rab.lr, rab.num_tokens) == (None, attack.RB_NUM_TOKENS)
    assert (ud.lr, ud.check_every) == (attack.UD_LR, attack.UD_CHECK_EVERY)


# ---- end to end on the tiny model --------------------------------------------------------------------------------
def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def erased(tiny_model, tmp_path_factory):
    return uce_run(tiny_model, tmp_path_factory.mktemp("p4d_rab"))


STEPS = {"p4d-n": ["--iterations", "2", "--check-every", "1"],
         "p4d-k": ["--iterations", "2", "--check-every", "1"],
         "ringabell": ["--generations", "2", "--population", "4", "--elite", "1"],
         "ringabell-continuous": []}


@pytest.mark.parametrize("which", list(STEPS))
def test_attack_runs_end_to_end(erased, which):
    out = erased.parent / which
    r = run("attack.py", "--attack", which, "--concept", "van gogh", "--weights", str(erased), "--out", str(out),
            "--num-targets", "3", "--eval-steps", "2", *STEPS[which])
    assert r.returncode == 0, r.stderr
    m = json.load(open(out / "metrics.json"))
    assert m["attack"] == which and m["n_targets"] == 3 and 0 <= m["pre_asr"] <= m["asr"] <= 1
    rows = list(csv.DictReader(open(out / "results.csv", newline="")))
    assert len(rows) == 3 and all(row["adversarial_prompt"] for row in rows)
    assert load_file(str(out / "embeddings.safetensors")) and (out / "grid.png").exists()
    assert len(list((out / "images").iterdir())) == 3
    generation = 3 * 2 * 2  # the judged pictures: 3 prompts x 2 DDIM steps x (cond + uncond)
    if which.startswith("ringabell"):  # the search is text-encoder work only
        pairs = len(data.SHAPES) * len(data.COLOR_NAMES)
        search = 3 * (4 + 2 * 3) if which == "ringabell" else 0
        assert m["search_cost"]["unet_evals"] == 0
        assert m["search_cost"]["text_encoder_evals"] == 2 * pairs + 3 + search
        assert m["cost"]["unet_evals"] == generation and m["cost"]["text_encoder_evals"] > 2 * pairs
        assert m["reference_cost"]["unet_evals"] == 0  # no pictures from the original model needed
    else:  # 2 iterations x 3 targets x (erased + original) + judged pictures at each of the 2 checks
        assert m["cost"]["unet_evals"] <= 2 * 3 * 2 + 2 * generation and len(m["kept_at_iteration"]) == 3
    if which == "ringabell":
        assert m["search_fitness"]["last"] <= m["search_fitness"]["first"]
    if which != "ringabell-continuous":  # discrete: the prompts written are the judged tokens, decoded
        assert m["text_round_trip"] == [True] * 3
        ids = load_file(str(out / "embeddings.safetensors"))["sequence_ids" if which.startswith("p4d") else "token_ids"]
        assert len(ids) == 3


def test_evaluate_reads_the_new_attacks(erased, tiny_model):
    dirs = [erased.parent / w for w in STEPS]
    if not all((d / "metrics.json").exists() for d in dirs):
        pytest.skip("needs the end-to-end attack runs above")
    out = erased.parent / "eval"
    r = run("evaluate.py", "evaluate", "--concept", "van gogh", "--weights", str(erased), "--attacks", *map(str, dirs),
            "--out", str(out), "--num-seeds", "1", "--num-other", "4", "--steps", "2")
    assert r.returncode == 0, r.stderr
    assert set(json.load(open(out / "metrics.json"))["attacks"]) == set(STEPS)


class FirstCallJudge:
    """A judge that sees the concept in the pictures of its first call (the plain prompts' pictures) where `pre`
    says so, and never after: which targets start broken is fixed, the rest must be attacked."""

    def __init__(self, pre):
        self.pre, self.calls = np.asarray(pre, bool), 0

    def __call__(self, images):
        self.calls += 1
        return self.pre.copy() if self.calls == 1 else never(images)

    def describe(self):
        return "test judge"


@pytest.mark.parametrize("which", ["unlearndiff", "p4d-n"])
def test_targets_already_broken_are_not_attacked_and_the_rest_match_attacking_all(erased, which, monkeypatch):
    from PIL import Image
    pre = [True, False, True]
    steps = {"unlearndiff": ["--timesteps", "2", "--iters-per-t", "1", "--check-every", "1"],
             "p4d-n": ["--iterations", "2", "--check-every", "1", "--num-tokens", "3"]}[which]
    outs = {}
    for mode in ("skip", "all"):
        monkeypatch.setattr(judges, "make_judge", lambda concept, a: FirstCallJudge(pre))
        out = erased.parent / f"{which}_{mode}"
        attack.main(["--attack", which, "--concept", "van gogh", "--weights", str(erased), "--num-targets", "3",
                     "--eval-steps", "2", "--out", str(out), *steps, *(["--attack-all-targets"] * (mode == "all"))])
        rows = list(csv.DictReader(open(out / "results.csv", newline="")))
        outs[mode] = (rows, json.load(open(out / "metrics.json")), load_file(str(out / "embeddings.safetensors")),
                      {p.name: np.asarray(Image.open(p)) for p in (out / "images").iterdir()})
    (rows_s, m_s, emb_s, img_s), (rows_a, m_a, emb_a, img_a) = outs["skip"], outs["all"]
    assert [r["attacked"] for r in rows_s] == ["0", "1", "0"] and [r["attacked"] for r in rows_a] == ["1"] * 3
    assert m_s["n_attacked"] == 1 and m_a["n_attacked"] == 3
    assert m_s["asr"] == m_a["asr"] == pytest.approx(2 / 3) and m_s["pre_asr"] == m_a["pre_asr"]
    # the skipped targets keep their plain prompt; the attacked one gets what attacking all would have given it
    assert [r["adversarial_prompt"] for r in rows_s[::2]] == [r["target_prompt"] for r in rows_s[::2]]
    assert rows_s[1] == {**rows_a[1], "attacked": "1"} and rows_s[1]["adversarial_prompt"] != rows_s[1]["target_prompt"]
    for k in emb_a:  # learned tensors: the attacked target's row as when attacking all, zeros for the others
        assert torch.allclose(emb_s[k][1].float(), emb_a[k][1].float(), atol=1e-4)
        assert not emb_s[k][0].any() and not emb_s[k][2].any()
    assert np.array_equal(img_s["001_miss.png"], img_a["001_miss.png"])
    # fewer UNet evaluations: one target optimised instead of three
    assert m_s["cost"]["unet_evals"] < m_a["cost"]["unet_evals"]


@pytest.mark.parametrize("which", ["cce", "ringabell"])
def test_no_attack_runs_when_every_target_already_shows_the_concept(erased, which, monkeypatch):
    """Every plain picture already shows the concept: the ASR is 1 whatever an attack would find, so none runs (no
    UNet evaluation), each target keeps its plain prompt and picture; --attack-all-targets still attacks."""
    steps = {"cce": ["--steps", "2", "--num-images", "2", "--batch", "2"],
             "ringabell": ["--generations", "1", "--population", "4", "--elite", "1", "--num-tokens", "4"]}[which]
    for mode in ("skip", "all"):
        monkeypatch.setattr(judges, "make_judge", lambda concept, a: FirstCallJudge([True] * 3))
        out = erased.parent / f"{which}_allbroken_{mode}"
        m = attack.main(["--attack", which, "--concept", "van gogh", "--weights", str(erased), "--num-targets", "3",
                         "--eval-steps", "2", "--out", str(out), *steps, *(["--attack-all-targets"] * (mode == "all"))])
        rows = list(csv.DictReader(open(out / "results.csv", newline="")))
        assert m["asr"] == m["pre_asr"] == 1.0
        if mode == "skip":
            assert m["n_attacked"] == 0 and m["cost"]["unet_evals"] == m["cost"]["text_encoder_evals"] == 0
            assert [r["adversarial_prompt"] for r in rows] == [r["target_prompt"] for r in rows]
            assert [r["attacked"] for r in rows] == ["0"] * 3
        else:
            assert m["n_attacked"] == 3 and m["cost"]["unet_evals"] + m["cost"]["text_encoder_evals"] > 0
