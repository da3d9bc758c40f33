"""A Hugging Face model folder (config.json + *.safetensors) checked without reading a tensor, torch-free.

`checkpoint.hf_load` (train) and the `convert` stage raise these problems at run time; the launcher reports them at
plan time for a local `model.pretrained_path`, in the same words (launcher/validate.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from checkpoint.hf_adapter import config_mismatches
from core.problems import Problem, raise_if
from model.config import ModelConfig

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
KEY = "model.pretrained_path"


def read_hf_config(path: str | Path) -> dict[str, Any]:
    f = Path(path) / "config.json"
    if not f.is_file():
        raise ValueError(
            f"{f} does not exist: model.pretrained_path must be a Hugging Face model folder with config.json "
            "and *.safetensors (as `save_pretrained` or `huggingface-cli download` writes it)."
        )
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f} is not valid JSON ({e}); re-download or re-export the model folder.") from e


def config_problems(hf: dict[str, Any], path: str | Path, cfg: ModelConfig) -> list[Problem]:
    """One problem naming every field where config.json and the model config disagree (none when they fit)."""
    bad = config_mismatches(hf, cfg)
    if not bad:
        return []
    return [
        Problem(
            KEY,
            str(path),
            f"its config.json does not match the model config ({cfg.name}): " + "; ".join(bad) + ".",
            "the pretrained weights must have the configured architecture: pick the model option that matches "
            "the checkpoint (+model=...) or point model.pretrained_path at the right folder.",
        )
    ]


def check_config(path: str | Path, cfg: ModelConfig) -> None:
    raise_if(config_problems(read_hf_config(path), path, cfg))


def weight_problems(path: str | Path) -> list[Problem]:
    """The folder must hold safetensors weights: those its index names, else model.safetensors, else any."""
    return _weights(Path(path))[1]


def checkpoint_files(path: str | Path) -> list[Path]:
    """The safetensors files of an HF folder: those its index names, else model.safetensors, else all."""
    files, problems = _weights(Path(path))
    raise_if(problems)
    return files


def _weights(root: Path) -> tuple[list[Path], list[Problem]]:
    index = root / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            return [], [
                Problem(KEY, str(root), f"{index} is not a valid safetensors index ({e!r}).", "re-download it.")
            ]
        files = [root / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            return [], [
                Problem(
                    KEY, str(root), f"{INDEX} names files that do not exist: {', '.join(absent)}.", "re-download them."
                )
            ]
        return files, []
    if (root / SINGLE).is_file():
        return [root / SINGLE], []
    files = sorted(root.glob("*.safetensors"))
    if not files:
        return [], [
            Problem(
                KEY,
                str(root),
                "has no *.safetensors: the weights must be in safetensors format (pytorch_model.bin is not read).",
                "convert it with transformers' save_pretrained, or point model.pretrained_path at a folder with "
                "*.safetensors.",
            )
        ]
    return files, []


def folder_problems(path: str | Path, cfg: ModelConfig) -> list[Problem]:
    """Everything the plan can check of a local pretrained folder: config.json present, valid and matching the
    model, and safetensors weights present (their tensors are checked when they are read)."""
    try:
        hf = read_hf_config(path)
    except ValueError as e:
        return [Problem(KEY, str(path), str(e), "point it at a Hugging Face model folder, or use a hub id.")]
    return config_problems(hf, path, cfg) + weight_problems(path)
