"""Imports point down only: floors import nothing of ours, shared modules only floors below them, entry points
only shared modules (never another entry point, not even inside a function); benchmark.py, the runner above the
entry points, is the one module that imports them."""
import ast
import os

from conftest import ROOT
GROUND = {"data", "lora", "losses"}  # import nothing of ours
MIDDLE = {"sd"}  # the Stable Diffusion plumbing: nothing of ours either
SHARED = {"judges", "inversion", "checkpoint", "report"}  # shared by the entry points
ENTRY = {"erase", "attack", "evaluate", "mini"}
RUNNER = {"benchmark"}
OURS = GROUND | MIDDLE | SHARED | ENTRY | RUNNER
ALLOWED = {**{m: set() for m in GROUND | MIDDLE},
           **{m: GROUND | MIDDLE | SHARED for m in SHARED},  # one shared module may use another (inversion: sd)
           **{m: GROUND | MIDDLE | SHARED for m in ENTRY},
           **{m: GROUND | MIDDLE | SHARED | ENTRY for m in RUNNER}}


def imports_of(path):
    """Every module of ours that `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & (OURS | {"scripts", "experiments"})


def test_every_top_level_module_has_a_floor():
    here = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")}
    assert here == OURS, f"modules without a floor in this test: {sorted(here - OURS)}; gone: {sorted(OURS - here)}"


def test_imports_point_down_only():
    wrong = {}
    for m, allowed in ALLOWED.items():
        bad = imports_of(os.path.join(ROOT, m + ".py")) - allowed - {m}
        if bad:
            wrong[m] = sorted(bad)
    assert not wrong, f"imports that point up or sideways: {wrong}"


def test_imports_of_sees_imports_inside_functions(tmp_path):
    """The check itself: an import hidden inside a function is found (so the test above can fail)."""
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef g():\n    import attack\n    from evaluate import x\n")
    assert imports_of(str(f)) == {"attack", "evaluate"}


def test_every_module_imports():
    """Each module imports on its own (no cycle hidden behind an import order)."""
    import importlib
    import subprocess
    import sys
    for m in sorted(OURS):
        r = subprocess.run([sys.executable, "-c", f"import {m}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (m, r.stderr[-1500:])
    assert importlib.import_module("benchmark").PARSERS  # the runner reaches every entry point's parser
