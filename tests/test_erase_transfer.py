"""scripts/erase_transfer.py: the progress ratio's formula, zero for an unchanged model, and a real run's table."""
import os
import subprocess
import sys

import torch

from conftest import ROOT, uce_run

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import erase_transfer  # noqa: E402


def test_progress_is_the_share_of_the_way_to_the_goal():
    g = torch.Generator().manual_seed(0)
    old, goal = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    assert abs(erase_transfer.progress(old + 0.25 * (goal - old), old, goal) - 0.25) < 1e-5
    assert abs(erase_transfer.progress(goal, old, goal) - 1.0) < 1e-5
    d = (goal - old).flatten()
    side = torch.randn(d.shape, generator=g)
    side = side - (side @ d) / (d @ d) * d  # orthogonal to the way: no progress, however large
    assert abs(erase_transfer.progress(old + 10 * side.view(old.shape), old, goal)) < 1e-4


def test_unchanged_model_moves_nothing_and_a_real_edit_does(tiny_model, tmp_path):
    import data
    import sd as sdlib
    original = sdlib.load(tiny_model, "cpu")
    concept = data.get_concept("van gogh", data.world_of(original.image_size))
    kw = dict(timesteps=[100, 700], pictures=2)
    mined = [torch.randn(3, original.text_encoder.config.hidden_size) * 0.1]
    same = erase_transfer.measure(original, sdlib.load(tiny_model, "cpu"), concept, mined, "a photo", **kw)
    assert same["captions"] == 0 and same["others"] == 0 and same["mined"] == [0.0]
    assert same["captions_by_t"] == [0.0, 0.0]
    run = uce_run(tiny_model, tmp_path)
    edited = erase_transfer.measure(original, sdlib.load(tiny_model, "cpu", weights=str(run)), concept, **kw)
    assert edited["captions"] != 0 and edited["others"] > 0 and "mined" not in edited
    r = subprocess.run([sys.executable, "scripts/erase_transfer.py", str(run), "--labels", "uce",
                        "--out", str(tmp_path / "t.md")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    row = [line for line in (tmp_path / "t.md").read_text().splitlines() if line.startswith("| uce |")]
    assert len(row) == 1 and row[0].split("|")[2].strip() == "uce, 0"
    bad = subprocess.run([sys.executable, "scripts/erase_transfer.py", str(run), "--labels", "a,b"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "--labels names 2 runs but 1 were given" in bad.stderr
