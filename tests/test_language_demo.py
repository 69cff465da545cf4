"""scripts/language_demo.py: its report holds the measured table against issue 21's bars and DM2's SD v1.4 numbers
beside it; a --model that is not a pipeline folder is refused before anything runs."""
import os
import subprocess
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import language_demo  # noqa: E402


def test_report_only_marks_missed_bars_and_prints_the_sd_reference(tmp_path):
    for concept, _ in language_demo.CASES:  # the committed benchmark reports the demo reads
        slug = language_demo.bench_slug(concept, "quick")
        assert os.path.exists(os.path.join(ROOT, "results", "benchmark", slug, "metrics.json")), slug
    language_demo.main(["--seeds", "1", "--report-only", "--out", str(tmp_path)])
    text = (tmp_path / "demo.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| van gogh | ") or ln.startswith("| triangle | ")]
    measured = [r for r in rows if r.split(" | ")[1] in ("esd-x", "uce", "esd-u")]
    assert len(measured) == 3, measured
    # a number on the wrong side of its bar carries a cross, and the list of misses names every crossed cell
    crosses = sum(cell.count("✗") for r in measured for cell in r.split(" | "))
    assert crosses and f"Bars not met ({crosses})" in text
    for concept, model, *numbers in language_demo.SD_REFERENCE:
        assert f"| {concept} | {model} | " + " | ".join(str(x) for x in numbers) + " |" in text
    assert all(0 <= x <= 100 for _, _, *numbers in language_demo.SD_REFERENCE for x in numbers)


def test_model_that_is_not_a_pipeline_is_refused_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "language_demo.py"), "--model", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "not a pipeline folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1
