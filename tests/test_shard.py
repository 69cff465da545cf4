"""torchrun: attack.py and evaluate.py share their prompts out over ranks (gloo on CPU here), and the merged
result equals the one-process result."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

import sd as sdlib
from conftest import ROOT, uce_run


def run(*args, ranks=1):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable] if ranks == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    return subprocess.run([*launcher, *args], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def failure(r):
    """What a failed run printed: every rank's error lines first (torchrun's tail shows only the rank that waited in a
    barrier for the one that crashed), then the end of stderr."""
    errors = [ln for ln in r.stderr.splitlines() if "Error" in ln and "]:" in ln]
    return "\n".join(errors[-20:]) + "\n...\n" + r.stderr[-2000:]


def test_shard_map_in_one_process_is_a_plain_call(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert sdlib.rank_world() == (0, 1)
    assert sdlib.shard_map(lambda idx: [i * i for i in idx], 5) == [0, 1, 4, 9, 16]
    with sdlib.local_only():
        assert sdlib.shard_map(lambda idx: np.array(idx) + 1, 3) == [1, 2, 3]


def rows_of(folder):
    return [{k: v for k, v in r.items()} for r in csv.DictReader(open(folder / "results.csv", newline=""))]


@pytest.fixture(scope="module")
def erased(tiny_model, tmp_path_factory):
    return uce_run(tiny_model, tmp_path_factory.mktemp("shard"))


@pytest.mark.parametrize("which,extra", [
    ("unlearndiff", ["--timesteps", "2", "--iters-per-t", "2", "--check-every", "1"]),
    ("p4d-k", ["--iterations", "3", "--check-every", "1"]),
    ("cce", ["--steps", "2", "--num-images", "3", "--batch", "2"]),
])
def test_two_ranks_give_the_one_process_attack(erased, which, extra):
    outs = {}
    for ranks in (1, 2):
        outs[ranks] = erased.parent / f"{which}_{ranks}"
        r = run("attack.py", "--attack", which, "--concept", "van gogh", "--weights", str(erased), "--out",
                str(outs[ranks]), "--num-targets", "5", "--eval-steps", "2", *extra, ranks=ranks)
        assert r.returncode == 0, failure(r)
    one, two = (json.load(open(outs[k] / "metrics.json")) for k in (1, 2))
    assert rows_of(outs[1]) == rows_of(outs[2])  # 5 targets over 2 ranks: 3 + 2, put back in order
    for k in ("asr", "pre_asr", "attack_only_rate", "n_targets"):
        assert one[k] == two[k]
    # evaluations are summed over ranks: the same work, shared out; CCE's one inversion runs on both ranks
    duplicated = 2 * 2 if which == "cce" else 0  # --steps 2 x --batch 2
    assert two["cost"]["unet_evals"] == one["cost"]["unet_evals"] + duplicated
    e1, e2 = (load_file(str(outs[k] / "embeddings.safetensors")) for k in (1, 2))
    assert e1.keys() == e2.keys()
    for k in e1:
        assert e1[k].shape == e2[k].shape
        # the discrete results above are exact; P4D's continuous embeddings differ in the last bits, as a batch of
        # 3 or 2 targets rounds differently from one of 5 on CPU
        assert np.allclose(e1[k].float().numpy(), e2[k].float().numpy(), atol=1e-4), k
    assert sorted(os.listdir(outs[1] / "images")) == sorted(os.listdir(outs[2] / "images"))
    assert not any(p.name.endswith(".tmp") for p in erased.parent.iterdir())  # rank 1 wrote nothing of its own


def test_two_ranks_give_the_one_process_evaluation(erased):
    outs = {}
    for ranks in (1, 2):
        outs[ranks] = erased.parent / f"eval_{ranks}"
        r = run("evaluate.py", "evaluate", "--concept", "van gogh", "--weights", str(erased), "--out",
                str(outs[ranks]), "--num-seeds", "1", "--num-other", "5", "--steps", "2", ranks=ranks)
        assert r.returncode == 0, failure(r)
    one, two = (json.load(open(outs[k] / "metrics.json")) for k in (1, 2))
    for k in ("concept_rate", "preservation", "preservation_by_attribute", "n_concept_images", "n_other_images"):
        assert one[k] == two[k], k
    assert abs(one["frechet_distance"] - two["frechet_distance"]) < 1e-4
    assert one["eval_cost"]["unet_evals"] == two["eval_cost"]["unet_evals"]


def test_erase_refuses_torchrun(tiny_model, tmp_path):
    r = run("erase.py", "--method", "uce", "--concept", "van gogh", "--model", tiny_model, "--out",
            str(tmp_path / "r"), ranks=2)
    assert r.returncode != 0 and "without torchrun" in r.stderr and not (tmp_path / "r").exists()
