"""scripts/dm2_preserved.py: a row for c0, for 0*c and for each mined embedding and its negative."""
import subprocess
import sys

from conftest import ROOT


def test_rows_for_c0_zero_and_each_mined_embedding(tiny_model, tmp_path):
    run = tmp_path / "dm2"
    r = subprocess.run([sys.executable, "erase.py", "--method", "dm2", "--concept", "van gogh", "--model", tiny_model,
                        "--dm2-pool", "2", "--dm2-mine-steps", "1", "--dm2-circumvent-steps", "1", "--dm2-batch", "1",
                        "--dm2-max-loops", "2", "--dm2-threshold", "-2", "--out", str(run), "--grid-seeds", "0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "p.md"
    r = subprocess.run([sys.executable, "scripts/dm2_preserved.py", str(run), "--pictures", "2", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines()[6:] if line.startswith("| ")]
    assert [c[0].strip() for c in rows] == ["c0 = 'a photo'", "0*c (any mined embedding)", "mined.0 (c)",
                                            "-mined.0 (-c)", "mined.1 (c)", "-mined.1 (-c)"]
    assert all(0 <= float(c[1]) <= 1 for c in rows)
    assert all(sum(int(x.split()[-1]) for x in c[2].split(",")) == 2 for c in rows)  # 2 pictures' styles
    bad = subprocess.run([sys.executable, "scripts/dm2_preserved.py", str(run), "--pictures", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "--pictures must be at least 1" in bad.stderr
