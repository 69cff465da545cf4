"""scripts/update_readme.py copies every table of a benchmark report (with its introducing line) into README.md and
results/README.md."""
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import update_readme  # noqa: E402

REPORT = """# Benchmark: erasing "x"

Regenerate: `python benchmark.py --concept x` (seeds 0..0).

| method | ASR |
|---|---|
| esd-x | 0.5 |

Concept rate: prose that stays in the report.
Wall time of each cell in minutes:

| method | erase |
|---|---|
| esd-x | 3.2 |

All cells: 3 minutes of wall time for 1 seed(s).

**esd-x**, seed 0: ![esd-x](esd-x_before_after.png)
"""


def test_tables_are_copied_apart_with_the_command_last(tmp_path):
    (tmp_path / "report.md").write_text(REPORT)
    out = update_readme.table_of(str(tmp_path / "report.md"))
    assert out == ("| method | ASR |\n|---|---|\n| esd-x | 0.5 |\n\n"
                   "Wall time of each cell in minutes:\n\n| method | erase |\n|---|---|\n| esd-x | 3.2 |\n\n"
                   "All cells: 3 minutes of wall time for 1 seed(s).\n\n"
                   "Regenerate: `python benchmark.py --concept x` (seeds 0..0).\n")


def test_both_pages_are_filled_and_a_missing_report_writes_nothing(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "report.md").write_text(REPORT)
    marker = "<!-- report: results/report.md -->\nold\n<!-- /report -->\n"
    (tmp_path / "README.md").write_text("no markers here\n")
    (tmp_path / "results" / "README.md").write_text("# Results\n\n" + marker)
    update_readme.main(str(tmp_path))
    page = (tmp_path / "results" / "README.md").read_text()
    assert "old" not in page and "| esd-x | 0.5 |" in page and page.endswith("<!-- /report -->\n")
    assert (tmp_path / "README.md").read_text() == "no markers here\n"

    (tmp_path / "README.md").write_text("<!-- report: results/missing.md -->\n<!-- /report -->\n")
    (tmp_path / "results" / "README.md").write_text(marker)
    with pytest.raises(SystemExit, match="missing.md"):
        update_readme.main(str(tmp_path))
    assert (tmp_path / "results" / "README.md").read_text() == marker  # checked before anything is written
