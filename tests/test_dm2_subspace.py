"""scripts/dm2_subspace.py: the cancelled share's formula, and a table from a real (tiny) DM2 run."""
import os
import subprocess
import sys

import torch

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import dm2_subspace  # noqa: E402


def test_cancelled_is_the_share_of_w_d_the_update_takes_away():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=g)
    h0, h = torch.randn(1, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    for share in (0.0, 0.25, 1.0):
        got = dm2_subspace.cancelled([(w, -share * w)], h, h0)
        assert got.shape == (3,) and torch.allclose(got, torch.full((3,), share), atol=1e-6)
    # an update that only sees a direction none of the departures h - h0 has cancels nothing, however large
    flat = h.clone()
    flat[..., -1] = h0[..., -1]  # departures without the last coordinate
    e = torch.zeros(5)
    e[-1] = 1
    assert abs(dm2_subspace.cancelled([(w, -100 * w @ torch.outer(e, e))], flat, h0).max().item()) < 1e-5
    # the mean over layers
    got = dm2_subspace.cancelled([(w, -0.2 * w), (w, -0.6 * w)], h, h0)
    assert torch.allclose(got, torch.full((3,), 0.4), atol=1e-6)


def test_table_from_a_tiny_dm2_run(tiny_model, tmp_path):
    run = tmp_path / "work" / "runs" / "dm2_s0"
    r = subprocess.run([sys.executable, "erase.py", "--method", "dm2", "--concept", "van gogh", "--model", tiny_model,
                        "--dm2-pool", "2", "--dm2-mine-steps", "1", "--dm2-circumvent-steps", "2", "--dm2-batch", "1",
                        "--dm2-max-loops", "2", "--dm2-threshold", "-2", "--dm2-lr", "0.05", "--dm2-lora-on",
                        "values+cross-keys", "--out", str(run), "--grid-seeds", "0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (tmp_path / "work" / "runs" / "dm2_s1.tmp").mkdir()  # a run still going is left out
    out = tmp_path / "s.md"
    r = subprocess.run([sys.executable, "scripts/dm2_subspace.py", str(tmp_path / "work"), "--concept", "van gogh",
                        "--model", tiny_model, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if "dm2_s" in line and "attn2" in line]
    assert [c[2].strip() for c in rows] == ["attn2.to_v (7)", "attn2.to_k (7)"]  # one row per projection over its 7 layers
    for c in rows:
        assert len(c[4].split(",")) == 2  # one share per mined embedding
        assert c[5].strip() == c[6].strip() == "-"  # no attack cells
        assert all(abs(float(x)) < 10 for x in [c[3], *c[4].split(","), c[7]])
    bad = subprocess.run([sys.executable, "scripts/dm2_subspace.py", str(tmp_path), "--concept", "van gogh",
                          "--model", tiny_model, "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode != 0 and "no DM2 run folders" in bad.stderr
