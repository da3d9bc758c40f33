"""Checkpoint key names are the model's own (`layers.0.attention.wq.weight`), whatever wraps the model.

DDP prefixes every name with `module.` and `torch.compile` with `_orig_mod.`; FSDP2 (`fully_shard`) and
DTensor tensor parallelism keep the names. The torch backend names what it saves through `model_key`, and every
reader (resume, export) passes saved names through it too, so checkpoints written before this rule (with DDP's
`module.` prefix) still load and export.
"""

from __future__ import annotations

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def model_key(name: str) -> str:
    """`name` without the prefixes that wrappers (DDP, torch.compile) add in front of the model's own names."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


def model_keys(state: dict) -> dict:
    """A saved state dict with its keys as the model's own names."""
    out = {}
    for key, value in state.items():
        name = model_key(key)
        if name in out:
            raise ValueError(f"two tensors map to the model key {name!r} (the wrapper prefixes of {key!r})")
        out[name] = value
    return out
