"""Copy the benchmark tables from results/*/report.md into README.md between their markers, so the README shows
exactly what the benchmark wrote:

    <!-- report: results/benchmark/van_gogh/report.md -->
    ...replaced by that report's table...
    <!-- /report -->

    python scripts/update_readme.py
"""
import os
import re
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"(<!-- report: (\S+) -->\n)(.*?)(<!-- /report -->)", re.S)


def table_of(report):
    """The report's tables (each with the line that introduces it, when it has one), its total and its command."""
    lines = open(report).read().splitlines()
    keep = ("|", "Wall time", "All cells", "This call ran", "Regenerate:", "Each cell:", "Cells within", "Methods by",
            "Sum of every", "Ceiling:")
    blocks, block = [], []
    for ln in lines:
        if ln.startswith(keep):
            block.append(ln)
        elif block:
            blocks.append(block)
            block = []
    blocks += [block] if block else []
    if not any(ln.startswith("|") for b in blocks for ln in b):
        sys.exit(f"error: {report} has no table")
    regen = [b for b in blocks if b[0].startswith("Regenerate:")]  # the command goes last
    return "\n\n".join("\n".join(b) for b in [b for b in blocks if b not in regen] + regen) + "\n"


def main():
    path = os.path.join(HERE, "README.md")
    text = open(path).read()
    found = BLOCK.findall(text)
    if not found:
        sys.exit("error: README.md has no <!-- report: PATH --> markers")
    missing = [p for _, p, _, _ in found if not os.path.exists(os.path.join(HERE, p))]
    if missing:
        sys.exit(f"error: no such report: {', '.join(missing)}")
    text = BLOCK.sub(lambda m: m.group(1) + table_of(os.path.join(HERE, m.group(2))) + m.group(4), text)
    open(path, "w").write(text)
    print(f"README.md: {len(found)} table(s) copied from {', '.join(p for _, p, _, _ in found)}")


if __name__ == "__main__":
    main()
