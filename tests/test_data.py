"""The mini world's data: deterministic, held-out triples respected, captions name what is drawn; prompt files."""
import json
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


def test_captions_name_the_attributes():
    rng = np.random.default_rng(1)
    style_words = {"stripes": ("strip",), "dots": ("dot",), "van gogh": ("van gogh",)}
    labels = data.sample_labels(300, rng, "any")
    for (s, c, st, b), text in zip(labels, data.captions_for(labels, rng)):
        assert data.SHAPES[s] in text
        for other, words in style_words.items():
            assert any(w in text for w in words) == (data.STYLES[st] == other), text
        assert " a o" not in text and " a a" not in text  # articles fixed: 'an orange'


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
    with pytest.raises(data.DataError, match="mini-world concepts: stripes, dots, van gogh"):
        data.get_concept("picasso")


def test_real_sd_presets_are_consistent():
    for name in data.SD_CONCEPTS:
        c = data.get_concept(name, "sd")
        assert c.prompts and len(c.prompts) == len(c.templates) == len(c.guides) == len(c.scene_anchors)
        assert [t.format(c.words) for t in c.templates] == c.prompts  # attacks put their token where the words were
        assert c.judge in ("clip", "nudenet") and c.other_prompts
        assert not any(c.words in a for row in c.scene_anchors for a in row)  # anchors drop the concept
    assert data.get_concept("van gogh", "sd").prompts != data.get_concept("van gogh", "mini").prompts
    assert data.world_of(32) == "mini" and data.world_of(512) == "sd"
    with pytest.raises(data.DataError, match="real-SD concepts"):
        data.get_concept("nudity", "mini")


def test_concept_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"name": "monet", "words": "monet", "prompts": ["a lake by monet"],
                                "templates": ["a lake by {}"], "judge": "clip"}))
    c = data.get_concept("ignored", "sd", str(path))
    assert c.name == "monet" and c.guides == [""]
    path.write_text(json.dumps({"name": "x", "words": "x", "prompts": ["a x"], "templates": ["a x"]}))
    with pytest.raises(data.DataError, match="must contain"):
        data.get_concept("x", "sd", str(path))
    path.write_text(json.dumps({"name": "x", "words": "x", "prompts": ["a x"], "templates": ["a {}"], "colour": 1}))
    with pytest.raises(data.DataError, match="unknown keys"):
        data.get_concept("x", "sd", str(path))
    path.write_text(json.dumps({"name": "x", "words": "x", "prompts": ["a x"], "templates": ["a {}"], "kind": "thing"}))
    with pytest.raises(data.DataError, match="kind must be one of style, object"):
        data.get_concept("x", "sd", str(path))
    path.write_text(json.dumps({"name": "x", "words": "x", "prompts": ["a x"], "templates": ["a {}"], "kind": "object"}))
    assert data.get_concept("x", "sd", str(path)).kind == "object" and c.kind == "style"
