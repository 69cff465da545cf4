"""scripts/compare_profiles.py: side-by-side cells, gaps and the ordering of methods, on two made-up reports."""
import json
import os
import subprocess
import sys

from conftest import ROOT


def report(folder, values, seconds, evals=None):
    """A metrics.json as benchmark.py writes it, with only what the comparison reads."""
    os.makedirs(folder)
    summary = {}
    for method, (rate, pres, asr_a, asr_b) in values.items():
        s = {"concept_rate": rate, "preservation": pres, "asr_a": asr_a, "asr_b": asr_b,
             "cell_seconds_erase": seconds, "cell_seconds_a": seconds, "erase_unet_evals": (evals or {}).get(method)}
        summary[method] = {k: {"mean": v, "sd": None} for k, v in s.items()}
    json.dump({"concept": "van gogh", "seeds": [0], "methods": list(values), "attacks": ["a", "b"],
               "command": "cmd", "summary": summary}, open(os.path.join(folder, "metrics.json"), "w"))


def test_compare(tmp_path):
    report(tmp_path / "full", {"x": (0.1, 0.9, 0.5, 0.3), "y": (0.0, 1.0, 0.0, 0.1)}, 60.0, {"x": 10000, "y": 0})
    report(tmp_path / "quick", {"x": (0.1, 0.9, 0.8, 0.3), "y": (0.0, 1.0, 0.1, 0.1), "z": (1, 1, 1, 1)}, 30.0,
           {"x": 2500, "y": 0})
    out = tmp_path / "cmp.md"
    r = subprocess.run([sys.executable, "scripts/compare_profiles.py", str(tmp_path / "full"), str(tmp_path / "quick"),
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "| x | 0.10 / 0.10 | 0.90 / 0.90 | 0.50 / 0.80 | 0.30 / 0.30 | 0.30 (ASR a) | 10,000 / 2,500 (0.25) |" in text
    assert "| y | 0.00 / 0.00 | 1.00 / 1.00 | 0.00 / 0.10 | 0.10 / 0.10 | 0.10 (ASR a) | - |" in text  # no evals
    assert "| z |" not in text  # only the methods both reports have
    assert "Cells within 0.05: 6 of 8; within 0.10: 7" in text
    assert "full: y, x; quick: y, x (1 of 1 pairs ordered the same way" in text
    assert "full 4 min, quick 3 min" in text  # 2 cells x 60 s x 2 methods; 2 x 30 s x 3 methods
