"""Several concepts erased at once: the combined preset, erase.py and evaluate.py with --concept given more than
once."""
import json
import os
import subprocess
import sys

import pytest

import data

from conftest import ROOT


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_combined_concept_keeps_each_and_preserves_none_of_them():
    parts = [data.get_concept(n) for n in ("van gogh", "triangle", "purple")]
    c = data.combine_concepts(parts)
    assert c.parts == parts and c.name == "van gogh + triangle + purple" and c.kind == "mixed"
    assert c.prompts == parts[0].prompts + parts[1].prompts + parts[2].prompts
    assert len(c.templates) == len(c.guides) == len(c.scene_anchors) == len(c.prompts)
    assert c.implicit_prompts == [p for x in parts for p in x.implicit_prompts]
    # preservation prompts show none of the three (by the mini world's labels), and every other one is there
    assert len(c.other_prompts) == len(c.other_labels) > 0
    for shape, colour, style in c.other_labels:
        assert shape != "triangle" and colour != "purple" and style != "van gogh"
    wanted = {(s, col, st) for s in data.SHAPES for col in data.COLOR_NAMES for st in data.STYLES
              if s != "triangle" and col != "purple" and st != "van gogh"}
    assert set(map(tuple, c.other_labels)) == wanted
    assert not any(data.shows_any(p, None, parts) for p in c.anchors)
    assert data.combine_concepts(parts[:1]) is parts[0]  # one concept is itself
    assert data.combine_concepts([data.get_concept("stripes"), data.get_concept("dots")]).kind == "style"


def test_combined_concepts_refuse_repeats_and_mixed_judges():
    with pytest.raises(data.DataError, match="more than once"):
        data.combine_concepts([data.get_concept("triangle"), data.get_concept("triangle")])
    with pytest.raises(data.DataError, match="different judges"):
        data.combine_concepts([data.get_concept("van gogh", "sd"), data.get_concept("nudity", "sd")])
    # every shape erased: no prompt of another concept is left to measure preservation
    with pytest.raises(data.DataError, match="nothing would measure preservation"):
        data.combine_concepts([data.get_concept(s) for s in data.SHAPES])


def test_evaluate_reports_each_concept_and_preservation_of_the_rest(tiny_model, tmp_path):
    out = tmp_path / "ev"
    r = run("evaluate.py", "evaluate", "--concept", "van gogh", "--concept", "triangle", "--model", tiny_model,
            "--num-seeds", "1", "--num-other", "4", "--num-implicit", "2", "--steps", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.load(open(out / "metrics.json"))
    assert m["concept"] == "van gogh + triangle" and set(m["concepts"]) == {"van gogh", "triangle"}
    per = m["concepts"]
    assert per["van gogh"]["n_concept_images"] == len(data.get_concept("van gogh").prompts)
    assert per["triangle"]["n_concept_images"] == len(data.get_concept("triangle").prompts)
    assert abs(m["concept_rate"] - (per["van gogh"]["concept_rate"] + per["triangle"]["concept_rate"]) / 2) < 1e-9
    assert m["n_other_images"] == 4 and 0 <= m["preservation"] <= 1
    assert all("other_concept_rate" in p for p in per.values())
    assert "| triangle |" in (out / "report.md").read_text()
    r = run("evaluate.py", "evaluate", "--concept", "triangle", "--concept", "triangle", "--model", tiny_model,
            "--out", str(tmp_path / "ev2"))
    assert r.returncode == 2 and "more than once" in r.stderr and not (tmp_path / "ev2").exists()


def test_erase_parses_several_concepts_and_refuses_what_cannot_be(tmp_path):
    import erase
    a = erase.parse(["--method", "uce", "--concept", "van gogh", "--concept", "triangle"])
    assert a.concept == ["van gogh", "triangle"]
    assert erase.parse(["--method", "uce", "--concept", "van gogh"]).concept == "van gogh"  # one: a name
    f = tmp_path / "concepts.txt"
    f.write_text("# to erase\nvan gogh\n\ntriangle  # a shape\npurple\n")
    assert erase.parse(["--method", "esd", "--concepts", str(f)]).concept == ["van gogh", "triangle", "purple"]
    for argv, said in ((["--method", "advunlearn", "--concept", "van gogh", "--concept", "triangle"],
                        "erases one concept per run"),
                       (["--method", "uce"], "give the concept to erase"),
                       (["--method", "uce", "--concepts", str(tmp_path / "none.txt")], "--concepts"),
                       (["--method", "uce", "--concept", "a", "--concept", "b", "--concept-file", str(f)],
                        "--concept-file gives one concept")):
        r = run("erase.py", *argv, "--out", str(tmp_path / "run"))
        assert r.returncode == 2 and said in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "run").exists()


def test_erase_refuses_a_repeat_and_auto_over_mixed_kinds(tiny_model, tmp_path):
    for argv, said in ((["--method", "uce", "--concept", "triangle", "--concept", "triangle"], "more than once"),
                       (["--method", "esd", "--concept", "van gogh", "--concept", "triangle"], "mixes object, style")):
        r = run("erase.py", *argv, "--model", tiny_model, "--out", str(tmp_path / "run"))
        assert r.returncode == 2 and said in r.stderr, r.stderr[-1500:]
        assert not (tmp_path / "run").exists()


def test_helpers_take_each_concept_in_turn():
    import erase
    c = data.combine_concepts([data.get_concept(n) for n in ("van gogh", "triangle")])
    n_vg = len(data.get_concept("van gogh").prompts)
    assert erase.concept_words(c) == ["van gogh", "triangle"]
    words = erase.prompt_words(c)
    assert words[:n_vg] == ["van gogh"] * n_vg and set(words[n_vg:]) == {"triangle"}
    assert all(t.format(w) == p for t, w, p in zip(c.templates, words, c.prompts))
    idx = erase.interleaved(c, 6)
    assert idx == [0, n_vg, 1, n_vg + 1, 2, n_vg + 2]
    assert [erase.part_of(c)[i] for i in idx] == [0, 1, 0, 1, 0, 1]
    single = data.get_concept("van gogh")
    assert erase.interleaved(single, n_vg + 2) == list(range(n_vg)) + [0, 1]  # one concept: cycled, as before
    assert erase.concept_words(single) == ["van gogh"]


def test_uce_and_esd_erase_several_concepts_in_one_run(tiny_model, tmp_path):
    """UCE edits every concept's columns at once; ESD's steps draw every concept's words; the run records them."""
    runs = {}
    for tag, names in (("one", ["van gogh"]), ("two", ["van gogh", "triangle"])):
        out = tmp_path / f"uce_{tag}"
        r = run("erase.py", "--method", "uce", *[x for n in names for x in ("--concept", n)], "--model", tiny_model,
                "--grid-seeds", "0", "--out", str(out))
        assert r.returncode == 0, r.stderr[-1500:]
        runs[tag] = out
    cfg = json.load(open(runs["two"] / "config.json"))
    assert cfg["concept"] == "van gogh + triangle" and cfg["concepts"] == ["van gogh", "triangle"]
    cols = {t: int(open(runs[t] / "loss.csv").read().splitlines()[1].split(",")[2]) for t in runs}
    assert cols["two"] > cols["one"]  # the triangle's prompts add their own erased columns
    # ESD on two styles (auto: esd-x for both): the erase prompts are both concepts' words
    import erase
    import sd as sdlib
    seen = []
    real_encode = sdlib.encode

    def spy(sd, texts, *args, **kw):
        seen.extend(texts)
        return real_encode(sd, texts, *args, **kw)
    sd = sdlib.load(tiny_model, device="cpu")
    a = erase.parse(["--method", "esd", "--concept", "van gogh", "--concept", "stripes", "--iterations", "1",
                     "--ddim-steps", "2"])
    concept = data.combine_concepts([data.get_concept(n) for n in a.concept])
    state = {"dir": str(tmp_path / "esd"), "every": 50, "log": []}
    os.makedirs(state["dir"])
    try:
        sdlib.encode = spy
        erase.esd(sd, concept, a, state)
    finally:
        sdlib.encode = real_encode
    # the erase prompts (frames, the default) are both concepts' words in their sentences
    assert set(data.mini_frames("van gogh")) | set(data.mini_frames("stripes")) <= set(seen)
    assert a.train_method == "esd-x"


def test_dm2_mines_each_concept_in_turn(tiny_model, tmp_path):
    out = tmp_path / "dm2"
    r = run("erase.py", "--method", "dm2", "--concept", "van gogh", "--concept", "triangle", "--model", tiny_model,
            "--dm2-max-loops", "3", "--dm2-mine-steps", "1", "--dm2-circumvent-steps", "1", "--dm2-pool", "4",
            "--dm2-verify-images", "1", "--dm2-threshold", "-2", "--dm2-tokens", "2", "--grid-seeds", "0",
            "--out", str(out))
    assert r.returncode == 0, r.stderr[-1500:]
    rows = open(out / "loss.csv").read().splitlines()
    head = rows[0].split(",")
    parts = [row.split(",")[head.index("part")] for row in rows[1:] if row.split(",")[head.index("verify_score")]]
    assert parts == ["0", "1", "0"]
    assert json.load(open(out / "config.json"))["dm2_loops"] == 3


def test_multi_concept_script_refuses_a_bad_selection():
    """scripts/multi_concept.py: an unknown concept or method, one concept, or a repeated one is refused in one
    line before anything runs."""
    for args in (["--concepts", "van gogh,nope"], ["--concepts", "van gogh"], ["--methods", "sdxl"],
                 ["--concepts", "red,red"]):
        r = subprocess.run([sys.executable, "scripts/multi_concept.py", *args, "--work", "/nonexistent/w"],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode != 0 and "need two or more distinct concepts" in r.stderr, (args, r.stderr)
