"""scripts/anchor_sdedit.py: redrawing from step 0 is drawing from noise, and the report has a row per anchor."""
import os
import subprocess
import sys

import numpy as np
import torch

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import anchor_sdedit  # noqa: E402


def test_redraw_from_the_first_step_ignores_the_picture(tiny_sd):
    """At k = 0 the noised picture is almost pure noise; with the first timestep's tiny signal weight the redraw of
    two different pictures under the same prompt and noise is nearly the same, and at a late k it is not."""
    import sd as sdlib
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn((2, *tiny_sd.latent_shape), generator=g)
    z0[1] = -z0[0]  # two opposite pictures
    cond = sdlib.encode(tiny_sd, ["a photo"] * 2)
    early, t0 = anchor_sdedit.redraw(tiny_sd, z0, cond, 0, seed=1)
    late, t1 = anchor_sdedit.redraw(tiny_sd, z0, cond, anchor_sdedit.STEPS - 2, seed=1)
    assert t0 > t1
    diff = [np.abs(x[0].astype(int) - x[1].astype(int)).mean() for x in (early, late)]
    assert diff[0] < diff[1], diff


def test_report_has_a_row_per_anchor(tiny_model, tmp_path):
    out = tmp_path / "r.md"
    r = subprocess.run([sys.executable, "scripts/anchor_sdedit.py", "--concept", "van gogh", "--model", tiny_model,
                        "--anchors", "a photo", "<guide>", "--pictures", "2", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    rows = [line.split("|")[2:-1] for line in text.splitlines() if line.startswith(("| a photo |", "| <guide> |"))]
    assert len(rows) == 3  # two redraw rows, one from-noise row (the guide has none)
    assert all(0 <= float(x) <= 1 for row in rows[:2] for x in row) and len(rows[0]) == len(anchor_sdedit.START_STEPS)
    bad = subprocess.run([sys.executable, "scripts/anchor_sdedit.py", "--concept", "van gogh", "--model", tiny_model,
                          "--pictures", "0", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "--pictures must be at least 1" in bad.stderr
