"""Several concepts erased at once: the combined preset, erase.py and evaluate.py with --concept given more than
once."""
import json
import os
import subprocess
import sys

import pytest

import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
