"""Copy the benchmark tables from results/*/report.md into README.md and results/README.md between their markers, so
each shows exactly what the benchmark wrote (a marker's path is relative to the repository root):

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
            "Sum of every", "Ceiling:", "For comparison")
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


PAGES = ("README.md", os.path.join("results", "README.md"))  # the pages that may hold markers


def markers(page, root=HERE):
    """The report paths named by page's markers (none when the page or its markers are absent)."""
    path = os.path.join(root, page)
    return [p for _, p, _, _ in BLOCK.findall(open(path).read())] if os.path.exists(path) else []


def update(page, root=HERE):
    """Replace what stands between each of page's markers with its report's tables."""
    path = os.path.join(root, page)
    text = BLOCK.sub(lambda m: m.group(1) + table_of(os.path.join(root, m.group(2))) + m.group(4), open(path).read())
    open(path, "w").write(text)


def main(root=HERE):
    found = {page: markers(page, root) for page in PAGES}
    if not any(found.values()):
        sys.exit(f"error: none of {', '.join(PAGES)} has <!-- report: PATH --> markers")
    missing = [f"{p} ({page})" for page, paths in found.items() for p in paths
               if not os.path.exists(os.path.join(root, p))]
    if missing:  # checked before any page is written: a page is updated whole or not at all
        sys.exit(f"error: no such report: {', '.join(missing)}")
    for page, paths in found.items():
        if paths:
            update(page, root)
            print(f"{page}: {len(paths)} table(s) copied from {', '.join(paths)}")


if __name__ == "__main__":
    main()
