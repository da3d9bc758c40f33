"""Hugging Face safetensors folders in and out of our model, one tensor at a time.

`load_hf` serves `model.init=pretrained`: it checks config.json against the model config, lists every key from
the safetensors headers (so a missing, unexpected or unreadable weight is reported before anything is copied),
then reads one tensor at a time with `safe_open` and copies it into the matching parameter. Peak memory is the
model plus its largest tensor, never two models. Parameters that are already DTensors (TP / FSDP2) receive
their local slice only.

`save_hf` writes model.safetensors (or model-0000i-of-0000N.safetensors + model.safetensors.index.json), config.json,
generation_config.json and (given its folder) the tokenizer: a folder that `transformers` loads on its own
(checkpoint/hf_folder.py). It is written under a temporary name and renamed into place when complete
(core/publish.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from checkpoint.hf_adapter import from_hf_key, to_hf, to_hf_config
from checkpoint.hf_companions import tokenizer_files, write_companions
from checkpoint.hf_folder import INDEX, SINGLE, check_config, checkpoint_files, read_hf_config
from core import publish
from model.config import ModelConfig

__all__ = ["INDEX", "SINGLE", "check_config", "checkpoint_files", "load_hf", "read_hf_config", "save_hf"]


def _keys(file: Path) -> list[str]:
    try:
        with safe_open(str(file), framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as e:
        raise ValueError(
            f"{file} is not a readable safetensors file ({e}); it is probably truncated or "
            "corrupt: delete it and download or export it again."
        ) from e


@torch.no_grad()
def load_hf(model: nn.Module, path: str | Path, cfg: ModelConfig | None = None) -> dict[str, Any]:
    """Copy the weights of the HF folder `path` into `model` (plain or DTensor parameters), in place."""
    if cfg is None:
        cfg = getattr(model, "cfg", None)
        assert isinstance(cfg, ModelConfig), "a model without .cfg needs cfg="
    check_config(path, cfg)
    params = dict(model.named_parameters(remove_duplicate=False))
    plan: dict[Path, list[tuple[str, str]]] = {}
    unexpected: list[str] = []
    for file in checkpoint_files(path):
        for hf_key in _keys(file):
            ours = from_hf_key(hf_key)
            if ours is None:
                continue
            if ours in params:
                plan.setdefault(file, []).append((hf_key, ours))
            else:
                unexpected.append(f"{hf_key} (in {file.name})")
    covered = {id(params[ours]) for entries in plan.values() for _, ours in entries}
    # Tied embeddings: output.weight is tok_embeddings.weight, so either HF key covers both names.
    missing = [hf_key for hf_key, p in to_hf(params).items() if id(p) not in covered]
    if missing or unexpected:
        raise ValueError(
            f"The weights in {path} do not fit the model: missing {missing or 'none'}; unexpected "
            f"{unexpected or 'none'}. The folder must hold every Llama 3 weight of this architecture and no "
            "other; check that it is a complete download of the intended model."
        )
    for file, entries in plan.items():
        try:
            with safe_open(str(file), framework="pt") as f:
                for hf_key, ours in entries:
                    _copy_into(params[ours], f.get_tensor(hf_key), f"{hf_key} in {file}")
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{file} could not be read ({e}); it is corrupt: download it again.") from e
    return {"path": str(path), "tensors": sum(map(len, plan.values())), "files": len(plan)}


def _copy_into(param: torch.Tensor, full: torch.Tensor, where: str) -> None:
    from torch.distributed.tensor import DTensor, distribute_tensor

    shape = tuple(param.shape)
    if tuple(full.shape) != shape:
        raise ValueError(
            f"{where} has shape {tuple(full.shape)}, the model expects {shape}; the checkpoint "
            "does not match the model config."
        )
    if isinstance(param, DTensor):
        # Every rank read the full tensor: slice it locally, no communication (src_data_rank=None).
        local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local()
        param.to_local().copy_(local)
    else:
        param.copy_(full)


@torch.no_grad()
def _full_state(model_or_state_dict: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from torch.distributed.tensor import DTensor

    if isinstance(model_or_state_dict, nn.Module):
        # DDP: the wrapped model; keep_vars so that DDP + TP shards keep their `_st_info` attribute.
        sd = getattr(model_or_state_dict, "module", model_or_state_dict).state_dict(keep_vars=True)
    else:
        sd = dict(model_or_state_dict)
    # DTensor (TP/FSDP) values are gathered: every rank of the mesh calls save_hf, rank 0 writes. Under DDP + TP
    # the parameters are local shards that carry their DTensor layout in `_st_info` (torch's DDP/TP transform).
    out = {}
    for k, v in sd.items():
        info = getattr(v, "_st_info", None)
        if info is not None:
            v = DTensor.from_local(v, info.mesh, info.placements, run_check=False, shape=info.shape, stride=info.stride)
        out[k] = (v.full_tensor() if isinstance(v, DTensor) else v).detach()
    return out


def save_hf(
    model_or_state_dict: nn.Module | dict[str, torch.Tensor],
    cfg: ModelConfig,
    out_dir: str | Path,
    *,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 5 * 2**30,
    tokenizer_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Write an HF folder at `out_dir` (absent or empty). dtype None keeps the tensors' own dtype; the tokenizer
    files of `tokenizer_dir` are copied beside the weights (None: the folder gets no tokenizer)."""
    out = Path(out_dir)
    tok = Path(tokenizer_dir) if tokenizer_dir is not None else None
    hf = to_hf(_full_state(model_or_state_dict))
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return {"path": str(out), "written": False}  # every rank gathered; rank 0 writes
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} already exists and is not empty; save_hf never overwrites. Remove it first.")
    if tok is not None:
        tokenizer_files(tok)  # a missing tokenizer is reported before anything is written
    if cfg.tie_word_embeddings:
        hf.pop("lm_head.weight", None)  # as save_pretrained: transformers re-ties it from embed_tokens
    tensors = {k: (v if dtype is None else v.to(dtype)).detach().cpu().contiguous() for k, v in hf.items()}
    shards: list[list[str]] = [[]]
    size = 0
    for k, v in tensors.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += n
    names = (
        [SINGLE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    total = sum(v.numel() * v.element_size() for v in tensors.values())
    torch_dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    with publish.publishing(out) as tmp:
        for name, keys in zip(names, shards):
            save_file({k: tensors[k] for k in keys}, str(tmp / name), metadata={"format": "pt"})
        if len(shards) > 1:
            weight_map = {k: name for name, keys in zip(names, shards) for k in keys}
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        companions = write_companions(tmp, to_hf_config(cfg, torch_dtype), tok)
    return {
        "path": str(out),
        "written": True,
        "files": names,
        "companions": companions,
        "total_size": total,
        "tensors": len(tensors),
    }
