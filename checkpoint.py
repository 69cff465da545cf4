"""The one checkpoint mechanism of every method and attack that can stop and resume: atomic writes, a settings
check on resume, the cost so far, and loading with torch.load(weights_only=True) (no pickled code runs).

write/read are the files; erase.py keeps one per run (checkpoint.pt, STEREO's stage-1 rounds, DM2's loops) and
attack.py one per loop and torchrun rank (Checkpoint)."""
import os

import numpy as np
import torch

import sd as sdlib


def pack(obj):
    """numpy arrays -> ("__numpy__", tensor): weights_only loading reads tensors and plain containers only."""
    if isinstance(obj, np.ndarray):
        return ("__numpy__", torch.from_numpy(np.ascontiguousarray(obj)))
    if isinstance(obj, dict):
        return {k: pack(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(pack(v) for v in obj)
    return obj


def unpack(obj):
    """The inverse of pack."""
    if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "__numpy__":
        return obj[1].numpy()
    if isinstance(obj, dict):
        return {k: unpack(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(unpack(v) for v in obj)
    return obj


def settings_of(a, ignored):
    """The settings a checkpoint is valid for: argparse's namespace without those that change no result."""
    return {k: v for k, v in vars(a).items() if k not in ignored}


def write(path, state):
    """torch.save, atomically: a kill while saving leaves the previous checkpoint intact."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(pack(state), path + ".part")
    os.replace(path + ".part", path)


def read(path, settings=None, map_location=None):
    """A checkpoint written by write(), loaded without running pickled code; fails in one line when it was made
    with other settings than `settings` (when both sides know theirs)."""
    state = unpack(torch.load(path, weights_only=True, map_location=map_location))
    made = state.get("settings")
    if settings is not None and made is not None and made != settings:
        diff = sorted(k for k in set(made) | set(settings) if made.get(k) != settings.get(k))
        sdlib.fail(f"checkpoint {path} was made with other settings ({', '.join(diff)}); "
                   "rerun with the same ones or without --resume")
    return state


class Checkpoint:
    """One attack loop's state, written atomically into the output's .tmp folder every --checkpoint-every steps and
    read back with --resume: a stopped attack continues where it stopped and ends with the same results as one that
    never stopped. One file per loop and torchrun rank; a checkpoint made with other settings is refused. Each
    save also writes the rank's cost so far (cost_path), so that a resumed attack reports the whole run's cost."""
    running = None  # (Timer, cost before this process) while main() attacks; None when a loop runs without main()

    def __init__(self, a, name):
        rank, world = sdlib.rank_world()
        folder = getattr(a, "state_dir", None)
        self.path = os.path.join(folder, f"state_{name}_rank{rank}of{world}.pt") if folder else None
        self.every, self.resume = getattr(a, "checkpoint_every", 0), getattr(a, "resume", False)
        self.settings = settings_of(a, ("resume", "overwrite", "checkpoint_every", "state_dir", "device", "picture_cache"))

    def load(self):
        """The saved state (a dict with 'step') when resuming and there is one, else None."""
        if not (self.path and self.resume and os.path.exists(self.path)):
            return None
        state = read(self.path, self.settings)
        sdlib.log(f"resumed {os.path.basename(self.path)} after step {state['step']}")
        return state

    def save(self, step, make_state):
        """After `step` completed steps; make_state() builds the dict (only when a checkpoint is due)."""
        if not (self.path and self.every) or step % self.every:
            return
        write(self.path, {"step": step, "settings": self.settings, **make_state()})
        if Checkpoint.running is not None:
            sdlib.write_cost(cost_path(os.path.dirname(self.path)), *Checkpoint.running)


def cost_path(state_dir):
    """This rank's cost up to its last checkpoint, in the attack's state folder (removed with the checkpoints)."""
    rank, world = sdlib.rank_world()
    return os.path.join(state_dir, f"state_cost_rank{rank}of{world}.json")
