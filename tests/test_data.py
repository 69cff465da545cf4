"""The mini world's data: deterministic, held-out triples respected, captions name what is drawn; prompt files."""
import json
import os
import re

import numpy as np
import pytest

import data


def test_dataset_is_deterministic():
    a, ya = data.make_dataset(20, seed=4)
    b, yb = data.make_dataset(20, seed=4)
    c, _ = data.make_dataset(20, seed=5)
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    assert not np.array_equal(a, c)
    assert a.shape == (20, 32, 32, 3) and a.dtype == np.uint8


def test_held_out_triples():
    rng = np.random.default_rng(0)
    held = {(data.SHAPES.index(s), data.COLOR_NAMES.index(c), data.STYLES.index(st)) for s, c, st in data.HELD_OUT}
    train = {tuple(r) for r in data.sample_labels(5000, rng, "exclude")[:, :3]}
    only = {tuple(r) for r in data.sample_labels(2000, rng, "only")[:, :3]}
    assert not train & held and only == held
    assert len(train) == 120 - len(held)
    # every pair inside a held-out triple is still seen in training
    for s, c, st in held:
        assert any(t[:2] == (s, c) for t in train) and any((t[0], t[2]) == (s, st) for t in train)
        assert any(t[1:] == (c, st) for t in train)
    assert {st for _, _, st in data.HELD_OUT} == set(data.STYLES)


def _mentions(text, value):
    """Does a caption name, paraphrase or evoke value (its names, synonyms or associated words, as whole words)?"""
    words = set(text.replace(",", " ").split())
    return any(set(p.split()) <= words for p in data.NAMES[value] + list(data.ASSOCIATED.get(value, {})))


def test_captions_mention_what_is_drawn():
    rng = np.random.default_rng(1)
    labels = data.sample_labels(400, rng, "any")
    for (s, c, st, b), text in zip(labels, data.captions_for(labels, rng)):
        assert _mentions(text, data.SHAPES[s]), text  # the shape, always: by name, synonym or associated words
        if data.STYLES[st] != "plain":
            assert _mentions(text, data.STYLES[st]), text  # a non-plain style, always
        for other in ("stripes", "dots", "van gogh"):  # another style's own words never appear
            if other != data.STYLES[st]:
                assert not data.own_words(other) & set(text.replace(",", " ").split()), (other, text)
        assert " a o" not in text and " a a" not in text and ",," not in text  # 'an orange', no empty clause


def test_caption_grammar_is_deterministic_and_varied():
    labels = data.sample_labels(200, np.random.default_rng(3), "any")
    a = data.captions_for(labels, np.random.default_rng(9))
    assert a == data.captions_for(labels, np.random.default_rng(9))
    assert a != data.captions_for(labels, np.random.default_rng(10))
    assert len(set(a)) > 190  # paraphrases: hardly a caption twice
    # word order varies: the subject does not always come first
    assert sum(not t.split()[0] in ("a", "an", "this", "there", "here", "my", "look") for t in a) > 20


def test_language_is_rich():
    """At least 2,000 distinct whole-word CLIP tokens in the training captions; every value has 4+ synonyms and
    15+ associated words; the language's words each belong to one value."""
    from transformers import CLIPTokenizer
    from conftest import MINI_PIPELINE
    tok = CLIPTokenizer.from_pretrained(os.path.join(MINI_PIPELINE, "tokenizer"))
    labels = data.sample_labels(6000, np.random.default_rng(0), "exclude")
    caps = data.captions_for(labels, np.random.default_rng(0))
    ids = {i for row in tok(caps).input_ids for i in row}
    words = {t for t in tok.convert_ids_to_tokens(sorted(ids)) if t.endswith("</w>")}
    assert len(words) >= 2000, len(words)
    assert all(len(data.NAMES[v]) >= 5 for v in data.NAMES)  # the name and 4+ synonyms
    assert all(len(data.ASSOCIATED[v]) >= 15 for v in data.ASSOCIATED)
    data._check_language()
    assert len(data.mini_vocabulary()) > 2500 and "gogh" not in data.mini_vocabulary(exclude="van gogh")


def test_associated_word_strengths_hold_in_the_captions():
    """In the training captions, the share of captions holding an associated word whose picture shows the word's
    value equals the word's strength (decoys in other values' captions make up the rest)."""
    rng = np.random.default_rng(5)
    labels = data.sample_labels(40000, rng, "exclude")
    caps = [set(t.replace(",", " ").split()) for t in data.captions_for(labels, rng)]
    col = {"shape": 0, "color": 1, "style": 2}
    for value in ("van gogh", "triangle", "purple"):
        attr = data.VALUE_ATTRIBUTE[value]
        j = data.ATTRIBUTES[attr].index(value)
        for strength in (data.STRONG, data.MEDIUM, data.WEAK):
            ws = [w for w, s in data.ASSOCIATED[value].items() if s == strength and " " not in w]
            hold = [i for i, c in enumerate(caps) if c & set(ws)]
            share = np.mean([labels[i, col[attr]] == j for i in hold])
            assert abs(share - strength) < 0.08, (value, strength, share, len(hold))


def test_implicit_prompts_never_name_their_concept():
    labels = data.sample_labels(20000, np.random.default_rng(2), "exclude")
    caps = [set(t.replace(",", " ").split()) for t in data.captions_for(labels, np.random.default_rng(2))]
    for name in data.MINI_CONCEPTS:
        c = data.get_concept(name)
        assert len(c.implicit_prompts) >= 100 and len(set(c.implicit_prompts)) >= 100
        for p in c.implicit_prompts:
            assert not data.own_words(name) & set(p.replace(",", " ").split()), p
        assert c.implicit_prompts == data.implicit_prompts(name)  # deterministic
        # the pairs of associated words they are built from never appear together in a training caption
        for w1, w2 in data.held_out_pairs(name):
            assert not any({w1, w2} <= cap for cap in caps), (name, w1, w2)


def test_every_listed_concept_resolves():
    assert set(data.COLOR_NAMES) <= set(data.MINI_CONCEPTS) and set(data.SHAPES) <= set(data.MINI_CONCEPTS)
    for name in data.MINI_CONCEPTS:
        c = data.get_concept(name)
        assert c.value == name and c.prompts and [t.format(c.words) for t in c.templates] == c.prompts
        assert not any(c.words in o.split() for o in c.other_prompts) or c.attribute == "style"
    purple = data.get_concept("purple")
    assert purple.attribute == "color" and all("purple" in p for p in purple.prompts)
    assert not any("purple" in a for a in purple.anchors)
    with pytest.raises(data.DataError, match="purple, orange"):
        data.get_concept("magenta dots")


def test_styles_differ_visibly():
    rng = np.random.default_rng(2)
    pics = {st: data.render("square", "red", st, "white", rng).astype(float) for st in data.STYLES}
    for st in ("stripes", "dots", "van gogh"):
        assert np.abs(pics[st] - pics["plain"]).mean() > 10


def test_prompt_for():
    assert data.prompt_for("circle", "orange", "plain") == "an orange circle"
    assert data.prompt_for("star", "blue", "van gogh") == "a blue star in the style of van gogh"
    assert data.prompt_for("cross", "red", "stripes") == "a striped red cross"


def test_read_prompt_csv(tmp_path):
    good = tmp_path / "p.csv"
    good.write_text("case_number,prompt,evaluation_seed\n1,a red circle,7\n2,a blue star,\n3,,4\n")
    rows = data.read_prompt_csv(str(good), default_seed=3)
    assert [(r["prompt"], r["evaluation_seed"]) for r in rows] == [("a red circle", 7), ("a blue star", 3)]
    assert rows[0]["case_number"] == "1"
    bad = tmp_path / "b.csv"
    bad.write_text("text,seed\nhello,1\n")
    with pytest.raises(data.DataError, match="no 'prompt' column"):
        data.read_prompt_csv(str(bad))
    empty = tmp_path / "e.csv"
    empty.write_text("prompt\n\n")
    with pytest.raises(data.DataError, match="no non-empty prompts"):
        data.read_prompt_csv(str(empty))
    seeds = tmp_path / "s.csv"
    seeds.write_text("prompt,evaluation_seed\nx,abc\n")
    with pytest.raises(data.DataError, match="not an integer"):
        data.read_prompt_csv(str(seeds))
    with pytest.raises(data.DataError, match="cannot read"):
        data.read_prompt_csv(str(tmp_path / "missing.csv"))


def test_concepts():
    vg = data.get_concept("Van Gogh")
    assert vg.attribute == "style" and all("van gogh" in p for p in vg.prompts)
    assert vg.anchors and not any("van gogh" in p for p in vg.anchors)
    tri = data.get_concept("triangle")
    assert tri.attribute == "shape" and all("triangle" in p for p in tri.prompts)
    assert not any("triangle" in p for p in tri.anchors)
    with pytest.raises(data.DataError, match="mini-world concepts: stripes, dots, van gogh, circle"):
        data.get_concept("picasso")


def test_real_sd_presets_are_consistent():
    for name in data.SD_CONCEPTS:
        c = data.get_concept(name, "sd")
        assert c.prompts and len(c.prompts) == len(c.templates) == len(c.guides) == len(c.scene_anchors)
        assert [t.format(c.words) for t in c.templates] == c.prompts  # attacks put their token where the words were
        assert c.judge in ("clip", "nudenet") and c.other_prompts
        assert not any(c.words in a for row in c.scene_anchors for a in row)  # anchors drop the concept
    assert data.get_concept("van gogh", "sd").prompts != data.get_concept("van gogh", "mini").prompts
    with pytest.raises(data.DataError, match="real-SD concept"):
        data.get_concept("nudity", "mini")


def test_frames_name_the_concept_and_no_other_value():
    """--erase-prompt frames: every concept's frames contain its own words and no word of another shape, colour
    or style (they erase the name in context, not a scene); real-SD presets have them too."""
    others = {name: set().union(*(data.own_words(v) for v in data.MINI_CONCEPTS if v != name)) - data.own_words(name)
              for name in data.MINI_CONCEPTS}
    for name in data.MINI_CONCEPTS:
        c = data.get_concept(name)
        assert len(c.frames) >= 10 and len(set(c.frames)) == len(c.frames), name
        for f in c.frames:
            words = set(f.replace(",", " ").split())
            assert re.search(rf"\b{re.escape(c.words)}\b", f) and not words & others[name], (name, f)
    assert data.mini_frames("orange")[0] == "an orange shape"  # articles follow the word
    for name in ("van gogh", "church", "nudity"):
        c = data.get_concept(name, "sd")
        assert c.frames and all(c.words in f for f in c.frames)
    both = data.get_concepts(["van gogh", "triangle"])[0]
    assert both.frames == data.mini_frames("van gogh") + data.mini_frames("triangle")


def test_concept_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"name": "monet", "words": "monet", "prompts": ["a lake by monet"],
                                "templates": ["a lake by {}"], "judge": "clip"}))
    c = data.get_concept("ignored", "sd", str(path))
    assert c.name == "monet" and c.guides == [""] and c.frames == ["monet"]  # no frames: the words alone
    path.write_text(json.dumps({"name": "x", "words": "x", "prompts": ["a x"], "templates": ["a x"]}))
    with pytest.raises(data.DataError, match="must contain"):
        data.get_concept("x", "sd", str(path))
    path.write_text(json.dumps({"name": "x", "words": "x", "prompts": ["a x"], "templates": ["a {}"], "colour": 1}))
    with pytest.raises(data.DataError, match="unknown keys"):
        data.get_concept("x", "sd", str(path))
    path.write_text(json.dumps({"name": "x", "words": "x", "prompts": ["a x"], "templates": ["a {}"], "kind": "thing"}))
    with pytest.raises(data.DataError, match="kind must be one of style, object"):
        data.get_concept("x", "sd", str(path))
    path.write_text(json.dumps({"name": "x", "words": "x", "prompts": ["a x"], "templates": ["a {}"],
                                "implicit_prompts": ["a thing", "a big x"]}))
    with pytest.raises(data.DataError, match="must not name the concept"):
        data.get_concept("x", "sd", str(path))
    path.write_text(json.dumps({"name": "x", "words": "x", "prompts": ["a x"], "templates": ["a {}"],
                                "frames": ["a x", "a thing"]}))
    with pytest.raises(data.DataError, match="every frame must contain"):
        data.get_concept("x", "sd", str(path))
    path.write_text(json.dumps({"name": "x", "words": "x", "prompts": ["a x"], "templates": ["a {}"], "kind": "object"}))
    assert data.get_concept("x", "sd", str(path)).kind == "object" and c.kind == "style"


def test_mini_concept_names_reads_all_a_list_and_fails_on_nothing():
    assert data.mini_concept_names("all") == data.MINI_CONCEPTS
    assert data.mini_concept_names(" purple, van gogh ") == ["purple", "van gogh"]
    for bad in ("purple,mauve", "", " , "):
        with pytest.raises(data.DataError):
            data.mini_concept_names(bad)
    # the scripts' --concepts: the same names, and argparse's one-line error naming the unknown concept
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("--concepts", type=data.mini_concepts_arg, default="all")
    assert p.parse_args([]).concepts == data.MINI_CONCEPTS
    assert p.parse_args(["--concepts", "purple,van gogh"]).concepts == ["purple", "van gogh"]
    with pytest.raises(argparse.ArgumentTypeError, match="mauve"):
        data.mini_concepts_arg("purple,mauve")


def test_fallback_rate_scenes_leave_only_the_concept_unsaid():
    """scripts/fallback_rate.py pairs each named prompt of a concept with the same scene without it: the pairs follow
    the concept's prompts, the unsaid prompt holds none of the concept's words and names every other value."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "fallback_rate", os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", "fallback_rate.py"))
    fallback = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fallback)
    for name in data.MINI_CONCEPTS:
        pairs = fallback.scenes(name)
        assert [named for named, _ in pairs] == data.get_concept(name).prompts
        for named, unsaid in pairs:
            words = set(unsaid.replace(",", " ").split())
            assert not data.own_words(name) & words, (name, unsaid)
            kept = set(named.split()) - set(data.STYLE_WORDS.get(name, name).split()) - {"a", "an", "in", "the",
                                                                                         "style", "of"}
            assert kept <= words | {fallback.UNSAID_SHAPE}, (named, unsaid)
