"""benchmark.py: every cell runs once, the table aggregates over seeds, and a stopped benchmark resumes
to the same table."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import benchmark
import evaluate
import report

from conftest import ROOT


def bench(tiny_model, tmp_path, *more):
    cmd = [sys.executable, "benchmark.py", "--concept", "van gogh", "--model", tiny_model,
           "--methods", "base,uce", "--attacks", "cce", "--seeds", "2", "--work", str(tmp_path / "work"),
           "--out", str(tmp_path / "out"), "--erase-args", "--grid-seeds 0",
           "--attack-args", "--steps 2 --num-images 2 --batch 2 --num-targets 2 --eval-steps 2",
           "--eval-args", "--num-seeds 1 --num-other 3 --steps 2", *more]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_benchmark_runs_aggregates_and_resumes(tiny_model, tmp_path):
    r = bench(tiny_model, tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    m = json.load(open(tmp_path / "out" / "metrics.json"))
    assert m["methods"] == ["base", "uce"] and m["seeds"] == [0, 1] and m["cells_run_this_call"] == 2 * 3 + 2 * 2
    for method in ("base", "uce"):
        s = m["summary"][method]
        per = [s["per_seed"][k]["asr_cce"] for k in ("0", "1")]
        assert abs(s["asr_cce"]["mean"] - sum(per) / 2) < 1e-9  # the table's number is the mean of the cells
        assert 0 <= s["concept_rate"]["mean"] <= 1
    assert m["summary"]["base"]["erase_seconds"]["mean"] is None  # the base model costs nothing to erase
    assert m["summary"]["uce"]["erase_unet_evals"]["mean"] is not None
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| uce |" in report and "| base |" in report and os.path.exists(tmp_path / "out" / "robustness_vs_utility.png")
    # erased without a grid (--grid-seeds 0): the report's before/after figure comes from the evaluations' pictures
    assert not os.path.exists(tmp_path / "work" / "runs" / "uce_s0" / "before_after.png")
    assert "before_after_prompts" not in json.load(open(tmp_path / "work" / "runs" / "uce_s0" / "config.json"))
    assert "![uce](uce_before_after.png)" in report and "before, after (the evaluation's pictures)" in report
    assert os.path.exists(tmp_path / "out" / "uce_before_after.png") and "![base]" not in report
    # every cell's wall time is recorded in its folder and the report adds them up
    cell = json.load(open(tmp_path / "work" / "attacks" / "uce_s0_cce" / benchmark.CELL_FILE))
    assert cell["wall_seconds"] > 0 and cell["command"][0].endswith("attack.py")
    s = m["summary"]["uce"]
    assert all(s[f"cell_seconds_{p}"]["mean"] > 0 for p in ("erase", "cce", "evaluate"))
    assert m["summary"]["base"]["cell_seconds_erase"]["mean"] == 0
    total = sum(m["summary"][x]["per_seed"][k][f"cell_seconds_{p}"] for x in ("base", "uce") for k in ("0", "1")
                for p in ("erase", "cce", "evaluate"))
    assert f"All cells: {total / 60:.0f} minutes of wall time for 2 seed(s)." in report
    # a benchmark stopped before one cell finished: only that cell runs again, and the table is the same
    shutil.rmtree(tmp_path / "work" / "attacks" / "uce_s1_cce")
    shutil.rmtree(tmp_path / "work" / "eval" / "uce_s1")
    shutil.rmtree(tmp_path / "work" / "eval" / "base_s0")
    # two cells side by side, each started as a fresh `python script.py` (the first call forked them from the
    # preloaded server): the same table
    r = bench(tiny_model, tmp_path, "--jobs", "2", "--cell-start", "fresh")
    assert r.returncode == 0, r.stderr
    m2 = json.load(open(tmp_path / "out" / "metrics.json"))
    assert m2["cells_run_this_call"] == 3
    record = json.load(open(tmp_path / "work" / "eval" / "base_s0" / benchmark.CELL_FILE))
    assert record["threads"] >= 1 and record["start"] == "fresh"
    assert json.load(open(tmp_path / "work" / "eval" / "base_s1" / benchmark.CELL_FILE))["start"] == "preloaded"
    assert without_seconds(m2["summary"]) == without_seconds(m["summary"])  # bit-identical results on CPU
    # an attack added later: only its cells run, the evaluations are reused, and the old columns stay the same
    r = bench(tiny_model, tmp_path, "--attacks", "cce,ringabell-continuous")
    assert r.returncode == 0, r.stderr + r.stdout
    m3 = json.load(open(tmp_path / "out" / "metrics.json"))
    assert m3["cells_run_this_call"] == 2 * 2
    for method in ("base", "uce"):
        assert m3["summary"][method]["asr_cce"] == m2["summary"][method]["asr_cce"]
        assert 0 <= m3["summary"][method]["asr_ringabell-continuous"]["mean"] <= 1
    assert "ASR ringabell-continuous" in (tmp_path / "out" / "report.md").read_text()
    # finished cells are never reused under other settings: the benchmark says which and stops before running any
    r = bench(tiny_model, tmp_path, "--attack-args", "--steps 3 --num-images 2 --batch 2 --num-targets 2 --eval-steps 2")
    assert r.returncode != 0 and "made with other arguments" in r.stderr and "uce_s1_cce" in r.stderr
    assert "--steps 2" in r.stderr and "--steps 3" in r.stderr
    assert json.load(open(tmp_path / "out" / "metrics.json")) == m3  # nothing ran, nothing rewritten


def without_seconds(x):
    """A summary without the wall-clock figures (the only part a rerun may change)."""
    if isinstance(x, dict):
        return {k: without_seconds(v) for k, v in x.items() if "seconds" not in k}
    return x


def test_benchmark_rejects_unknown_names(tmp_path):
    r = subprocess.run([sys.executable, "benchmark.py", "--concept", "van gogh", "--methods", "esd-x,nope",
                        "--out", str(tmp_path / "o"), "--work", str(tmp_path / "w")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "unknown method nope" in r.stderr and "stereo" in r.stderr
    assert not (tmp_path / "w").exists()


def test_concept_selection(tmp_path, capsys):
    """--concept all is every concept of the model's world; a list is checked name by name; a repeated or unknown
    name, or a list that selects nothing, stops with one line."""
    import data
    assert benchmark.concept_names("all") == data.MINI_CONCEPTS and "purple" in data.MINI_CONCEPTS
    assert benchmark.concept_names("van gogh, Triangle") == ["van gogh", "triangle"]
    assert benchmark.concept_names("all", model="CompVis/stable-diffusion-v1-4") == data.SD_CONCEPTS
    for spec, said in ((" , ", "selects no concept"), ("triangle,triangle", "more than once")):
        with pytest.raises(SystemExit):
            benchmark.concept_names(spec)
        assert said in capsys.readouterr().err
    r = subprocess.run([sys.executable, "benchmark.py", "--concept", "triangle,nope", "--out", str(tmp_path / "o"),
                        "--work", str(tmp_path / "w")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "unknown concept 'nope'" in r.stderr and not (tmp_path / "w").exists()


def test_all_concepts_are_listed_and_checked_before_any_cell_runs(tmp_path, monkeypatch, capsys):
    """--concept all says every concept it will run, and plans (and checks) every concept's cells before the
    first cell runs."""
    import data
    seen = {}

    def stop(cells, *args, **kw):
        seen["cells"] = cells
        raise SystemExit(0)
    monkeypatch.setattr(benchmark, "run_cells", stop)
    with pytest.raises(SystemExit):
        benchmark.main(["--concept", "all", "--methods", "base,uce", "--attacks", "cce", "--profile", "laptop",
                        "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert f"{len(data.MINI_CONCEPTS)} concepts" in out and all(n in out for n in data.MINI_CONCEPTS)
    # per concept: one erasure (uce), two attacks (base, uce), two evaluations
    assert len(seen["cells"]) == 5 * len(data.MINI_CONCEPTS)
    assert {c[1][c[1].index("--concept") + 1] for c in seen["cells"]} == set(data.MINI_CONCEPTS)
    assert {os.path.basename(os.path.dirname(os.path.dirname(c[2]))) for c in seen["cells"]} == \
        {data.slug(n) for n in data.MINI_CONCEPTS}


def test_benchmark_of_two_concepts_summarises_and_resumes(tiny_model, tmp_path):
    """Two concepts x two seeds on the tiny model: each concept gets its own report, the summary's numbers are
    the mean over every (concept, seed) cell, and a rerun after one lost cell gives the same summary."""
    cmd = [sys.executable, "benchmark.py", "--concept", "van gogh,triangle", "--model", tiny_model,
           "--methods", "base,uce", "--attacks", "cce", "--seeds", "2", "--work", str(tmp_path / "work"),
           "--out", str(tmp_path / "out"), "--erase-args", "--grid-seeds 0",
           "--attack-args", "--steps 2 --num-images 2 --batch 2 --num-targets 2 --eval-steps 2",
           "--eval-args", "--num-seeds 1 --num-other 3 --steps 2 --num-implicit 2"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr + r.stdout
    m = json.load(open(tmp_path / "out" / "metrics.json"))
    assert m["concepts"] == ["van gogh", "triangle"] and m["cells_run_this_call"] == 2 * (2 + 4 + 4)
    per = {n: json.load(open(tmp_path / "out" / slug / "metrics.json")) for n, slug in
           (("van gogh", "van_gogh"), ("triangle", "triangle"))}
    for method in ("base", "uce"):
        cells = [per[n]["summary"][method]["per_seed"][k]["concept_rate"] for n in per for k in ("0", "1")]
        assert abs(m["summary"][method]["concept_rate"]["mean"] - sum(cells) / 4) < 1e-9
        assert m["summary"][method]["asr_seed_sd"] is not None
    report_md = (tmp_path / "out" / "report.md").read_text()
    assert "Benchmark over 2 concepts" in report_md and "| uce |" in report_md
    assert "(van_gogh/report.md)" in report_md and "Concepts a method did not erase" in report_md
    assert (tmp_path / "out" / "triangle" / "report.md").exists()
    shutil.rmtree(tmp_path / "work" / "triangle" / "eval" / "uce_s1")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr + r.stdout
    m2 = json.load(open(tmp_path / "out" / "metrics.json"))
    assert m2["cells_run_this_call"] == 1
    assert without_seconds(m2["summary"]) == without_seconds(m["summary"])


def test_scatter_png(tmp_path):
    report.scatter_png([("a", 0.2, 0.9), ("b", 1.0, 0.0)], str(tmp_path / "p.png"), "x", "y")
    from PIL import Image
    assert Image.open(tmp_path / "p.png").size == (560, 560)


def test_profiles_parse():
    """Every profile names known methods and attacks, and each script accepts the arguments it passes."""
    import attack
    import erase
    for name, prof in benchmark.BENCH_PROFILES.items():
        for method, args in prof["erase"].items():
            assert method == "*" or benchmark.BENCH_METHODS.get(method), (name, method)
            a = erase.parse([*benchmark.BENCH_METHODS["esd-x" if method == "*" else method], "--concept", "van gogh",
                             "--out", "x", *args])
            for flag, value in zip(args[::2], args[1::2]):
                assert str(getattr(a, flag[2:].replace("-", "_"))) == value
        for at, args in prof["attack"].items():
            assert at == "*" or at in benchmark.BENCH_ATTACKS, (name, at)
            a = attack.parse(["--attack", "cce" if at == "*" else at, "--concept", "van gogh", "--out", "x", *args])
            for flag, value in zip(args[::2], args[1::2]):
                assert str(getattr(a, flag[2:].replace("-", "_"))) == value, (name, at, flag)
        evaluate.build_parser().parse_args(["evaluate", "--concept", "van gogh", "--out", "x", *prof["eval"]])
    r = subprocess.run([sys.executable, "benchmark.py", "--concept", "van gogh", "--profile", "nope"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "invalid choice" in r.stderr


def test_stale_cell_check_sees_a_changed_default(tmp_path, monkeypatch, capsys):
    """A finished cell run with the same arguments but under another script default is not reused: the check
    compares every resolved setting, not only the command line."""
    import erase
    args = ["--method", "stereo", "--concept", "van gogh", "--seed", "0", "--rounds", "2"]
    out = str(tmp_path / "runs" / "stereo_s0")
    os.makedirs(out)
    made = benchmark.resolved_settings("erase.py", [*args, "--out", out])
    assert made["erase_scale_reo"] == erase.STEREO_ERASE_SCALE and "out" not in made
    json.dump({"wall_seconds": 1.0, "resumed": False, "command": ["erase.py", *args, "--out", out], "threads": 1,
               "settings": made}, open(os.path.join(out, benchmark.CELL_FILE), "w"))
    benchmark.check_cells([("erase.py", args, out)])  # same arguments, same defaults: reused
    # made by another checkout of the same code: its default paths (the mini world's folder) differ, and match
    moved = {k: v.replace(benchmark.HERE, "/elsewhere") if isinstance(v, str) else v for k, v in made.items()}
    assert moved != made
    json.dump({"wall_seconds": 1.0, "resumed": False, "command": ["/elsewhere/erase.py", *args, "--out", out],
               "threads": 1, "settings": moved}, open(os.path.join(out, benchmark.CELL_FILE), "w"))
    benchmark.check_cells([("erase.py", args, out)])
    monkeypatch.setattr(erase, "STEREO_ERASE_SCALE", erase.STEREO_ERASE_SCALE + 1)
    try:
        benchmark.check_cells([("erase.py", args, out)])
        raise AssertionError("a cell made under another default was reused")
    except SystemExit:
        pass
    s_e = erase.STEREO_ERASE_SCALE
    assert f"other defaults: erase_scale_reo: {s_e - 1!r} -> {s_e!r}" in capsys.readouterr().err


def test_stale_cell_check_compares_settings_not_words(tmp_path, capsys):
    """Other words for the same settings (a flag given twice, a default spelt out) reuse a finished cell; other
    words for other settings do not, and the refusal names the setting."""
    import erase
    args = ["--method", "dm2", "--concept", "van gogh", "--seed", "0", "--dm2-max-loops", "3"]
    out = str(tmp_path / "runs" / "dm2_s0")
    os.makedirs(out)
    made_with = [*args, "--dm2-circumvent-steps", "100", "--dm2-circumvent-steps", str(erase.DM2_CIRCUMVENT_STEPS)]
    json.dump({"wall_seconds": 1.0, "resumed": False, "command": ["erase.py", *made_with, "--out", out],
               "threads": 1, "settings": benchmark.resolved_settings("erase.py", [*made_with, "--out", out])},
              open(os.path.join(out, benchmark.CELL_FILE), "w"))
    benchmark.check_cells([("erase.py", args, out)])  # the last --dm2-circumvent-steps is the default: reused
    benchmark.check_cells([("erase.py", [*args, "--dm2-init", erase.DM2_INIT], out)])  # a default spelt out
    try:
        benchmark.check_cells([("erase.py", [*args, "--dm2-max-loops", "4"], out)])
        raise AssertionError("a cell made with other settings was reused")
    except SystemExit:
        pass
    assert "settings that differ: dm2_max_loops: 3 -> 4" in capsys.readouterr().err


def test_stale_cell_check_sees_retrained_weights(tmp_path, capsys):
    """A cell made on a model folder is stale once that folder's weights change, under the same path and settings:
    a retrained mini world does not reuse the cells of the one before."""
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "unet" / "weights.bin").write_bytes(b"\0" * 1000)
    args = ["--method", "uce", "--concept", "van gogh", "--seed", "0", "--model", str(model)]
    out = str(tmp_path / "runs" / "uce_s0")
    os.makedirs(out)
    json.dump({"wall_seconds": 1.0, "resumed": False, "command": ["erase.py", *args, "--out", out], "threads": 1,
               "settings": benchmark.resolved_settings("erase.py", [*args, "--out", out])},
              open(os.path.join(out, benchmark.CELL_FILE), "w"))
    benchmark.check_cells([("erase.py", args, out)])  # the same files: reused
    (model / "unet" / "weights.bin").write_bytes(b"\1" * 1000)  # same size, other bytes
    try:
        benchmark.check_cells([("erase.py", args, out)])
        raise AssertionError("a cell made on other weights was reused")
    except SystemExit:
        pass
    assert "model_files" in capsys.readouterr().err
    assert benchmark.files_fingerprint(str(tmp_path / "missing")) is None


def test_before_after_from_evaluations(tmp_path):
    """The figure's rows are the first row of the base model's and the method's concept_grid.png, then of their
    other_grid.png, picture for picture; without the base model's cell, the method's rows alone."""
    import numpy as np
    import data
    rng = np.random.default_rng(0)
    pics = {}
    for cell in ("base_s0", "uce_s0"):
        for grid, n in (("concept_grid.png", 12), ("other_grid.png", 9)):
            pics[cell, grid] = rng.integers(0, 255, (n, 16, 16, 3)).astype(np.uint8)
            data.save_png(data.image_grid(pics[cell, grid], report.GRID_COLS), str(tmp_path / "eval" / cell / grid))
    rows = benchmark.before_after_from_evaluations(str(tmp_path / "eval"), "uce", 0, str(tmp_path / "ba.png"))
    from PIL import Image
    got = data.grid_pictures(np.asarray(Image.open(tmp_path / "ba.png").convert("RGB")), report.GRID_COLS)
    want = [pics[c, g][:8] for g in ("concept_grid.png", "other_grid.png") for c in ("base_s0", "uce_s0")]
    assert np.array_equal(got, np.concatenate(want))
    assert rows.startswith("the concept's prompts before, after; other concepts' prompts before, after")
    shutil.rmtree(tmp_path / "eval" / "base_s0")
    rows = benchmark.before_after_from_evaluations(str(tmp_path / "eval"), "uce", 0, str(tmp_path / "ba.png"))
    got = data.grid_pictures(np.asarray(Image.open(tmp_path / "ba.png").convert("RGB")), report.GRID_COLS)
    assert np.array_equal(got, np.concatenate([pics["uce_s0", "concept_grid.png"][:8], pics["uce_s0", "other_grid.png"][:8]]))
    assert "before" not in rows and "after erasing" in rows


def test_cells_start_as_soon_as_what_they_need_is_done(tmp_path, monkeypatch):
    """No stage barrier: an attack whose erasure is done starts while another erasure still runs, and never
    before its own; earlier cells in the list go first; a failed cell stops the rest."""
    import threading
    import time
    events, lock = [], threading.Lock()
    seconds = {"erase_slow": 0.6, "erase_fast": 0.05, "attack_slow": 0.05, "attack_fast": 0.05}

    def fake_cell(script, args, out, log_path, threads=None, start=None):
        name = os.path.basename(out)
        with lock:
            events.append(("start", name))
        time.sleep(seconds[name])
        if name == "attack_fast" and "fail" in args:
            return "attack_fast failed"
        os.makedirs(out)
        with lock:
            events.append(("end", name))
        return None

    monkeypatch.setattr(benchmark, "run_cell", fake_cell)
    cells = [("erase.py", [], str(tmp_path / n)) for n in ("erase_slow", "erase_fast", "attack_slow", "attack_fast")]
    needs = {str(tmp_path / "attack_slow"): [str(tmp_path / "erase_slow")],
             str(tmp_path / "attack_fast"): [str(tmp_path / "erase_fast")]}
    assert benchmark.run_cells(cells, str(tmp_path / "log"), 2, "test", needs) == 4
    order = list(events)
    assert order.index(("start", "attack_fast")) < order.index(("end", "erase_slow"))  # no barrier
    assert order.index(("start", "attack_slow")) > order.index(("end", "erase_slow"))  # never before its need
    assert order[:2] == [("start", "erase_slow"), ("start", "erase_fast")]  # the list's order first
    for n in ("erase_slow", "erase_fast", "attack_slow", "attack_fast"):
        shutil.rmtree(tmp_path / n)
    events.clear()
    cells[3] = ("attack.py", ["fail"], cells[3][2])
    try:
        benchmark.run_cells(cells, str(tmp_path / "log"), 2, "test", needs)
        raise AssertionError("a failed cell did not stop the benchmark")
    except SystemExit:
        pass
    assert ("end", "erase_slow") in events  # the cell beside the failed one finished ...
    assert ("start", "attack_slow") not in events  # ... and nothing new started after the failure


def test_preloaded_cell_runs_the_script_and_reports_its_exit(tmp_path):
    """A cell forked from the preload server is the script run as `python script.py`: its output in OUT.log and
    its exit code (argparse's 2 here) in the failure message; a second cell reuses the same server."""
    for name in ("a", "b"):
        out = str(tmp_path / name)
        err = benchmark.run_cell("attack.py", ["--attack", "no-such-attack"], out, str(tmp_path / "log"), 1, "preloaded")
        assert err is not None and "exit 2" in err and out in err
        assert "invalid choice: 'no-such-attack'" in open(out + ".log").read()
    assert len(benchmark._PRELOAD_SERVER) == 1
