"""A hand-written LoRA layer (Hu et al. 2021): y = W x + (alpha / r) B A x, with W frozen.

Wrap existing nn.Linear layers by name; B starts at zero so the wrapped model equals the original at step 0.
merge() folds (alpha / r) B A into W (for export); unmerge() takes it out again.
"""
import torch
import torch.nn as nn


class LoRALinear(nn.Module):
    """Wraps an nn.Linear: the base layer's weight and bias are reused (frozen), lora_A (r x in) and lora_B
    (out x r) are the trainable low-rank update."""

    def __init__(self, base: nn.Linear, r=8, alpha=None):
        super().__init__()
        if r < 1 or r > min(base.in_features, base.out_features):
            raise ValueError(f"LoRA rank {r} must lie in 1..{min(base.in_features, base.out_features)}")
        self.base, self.r = base, r
        self.alpha = float(alpha if alpha is not None else r)
        self.scaling = self.alpha / r
        self.base.requires_grad_(False)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=5 ** 0.5)  # as nn.Linear initialises its weight
        self.merged = False

    def forward(self, x):
        y = self.base(x)
        if self.merged:
            return y
        return y + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def delta(self):
        return self.scaling * self.lora_B @ self.lora_A  # (out, in)

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.base.weight += self.delta().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.base.weight -= self.delta().to(self.base.weight.dtype)
            self.merged = False


def inject(model, name_filter, r=8, alpha=None):
    """Replace every nn.Linear whose qualified name passes name_filter(name) with a LoRALinear.

    Targets are collected first and replaced through their parent afterwards (never while iterating).
    Returns {name: LoRALinear}; raises ValueError if nothing matched."""
    targets = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and name_filter(n)]
    if not targets:
        raise ValueError("LoRA: the name filter matched no nn.Linear layer")
    wrapped = {}
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = LoRALinear(getattr(parent, child), r, alpha)
        setattr(parent, child, layer)
        wrapped[name] = layer
    return wrapped


def lora_state_dict(wrapped):
    """{'<layer name>.lora_A': tensor, '<layer name>.lora_B': tensor} for every wrapped layer."""
    out = {}
    for name, layer in wrapped.items():
        out[f"{name}.lora_A"] = layer.lora_A.detach()
        out[f"{name}.lora_B"] = layer.lora_B.detach()
    return out


def load_lora_state_dict(wrapped, state):
    for name, layer in wrapped.items():
        layer.lora_A.data.copy_(state[f"{name}.lora_A"])
        layer.lora_B.data.copy_(state[f"{name}.lora_B"])


def save(wrapped, path, metadata=None):
    from safetensors.torch import save_file
    meta = {"r": str(next(iter(wrapped.values())).r), "alpha": str(next(iter(wrapped.values())).alpha)}
    save_file({k: v.float().cpu().contiguous() for k, v in lora_state_dict(wrapped).items()}, path,
              metadata={**meta, **(metadata or {})})


def load(wrapped, path):
    from safetensors.torch import load_file
    load_lora_state_dict(wrapped, load_file(path))


def merge_all(wrapped):
    for layer in wrapped.values():
        layer.merge()


def unmerge_all(wrapped):
    for layer in wrapped.values():
        layer.unmerge()
