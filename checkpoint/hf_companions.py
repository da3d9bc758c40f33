"""What makes an HF weights folder usable on its own (an export): config.json, generation_config.json and the tokenizer.

Both export writers call `write_companions` after the safetensors (`hf_load.save_hf` for the torch backend,
`convert.to_hf` for NxD checkpoints), so every export holds the same set of files and is one
`from_pretrained` away from use: `AutoModelForCausalLM`, `AutoTokenizer` and `GenerationConfig` all load it.

The tokenizer files are copied from the folder the data stage tokenized with (core.paths.tokenizer_dir), and
generation_config.json takes BOS/EOS from that tokenizer (config.json's model ids when the tokenizer does not
name them). Standard library only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from checkpoint.hf_adapter import HF_LAYOUT_VERSION

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
# The files `save_pretrained` of a tokenizer writes (fast, sentencepiece and BPE vocab/merges tokenizers, chat
# templates); a model folder's own config.json and weights are not among them.
TOKENIZER_NAMES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
# At least one of these, or AutoTokenizer cannot build a tokenizer from the folder.
TOKENIZER_MODELS = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


# How to get a tokenizer folder, for the errors below (the export stage names data.tokenizer instead).
FIX = "pass the folder of the tokenizer the model was trained with (one that AutoTokenizer.from_pretrained loads)"


def tokenizer_files(folder: Path, fix: str = FIX) -> list[Path]:
    """The tokenizer files of `folder`, or a one-paragraph error ending in `fix` when it holds no tokenizer."""
    if not folder.is_dir():
        raise ValueError(
            f"The tokenizer folder {folder} does not exist, so the export cannot include the tokenizer. Fix: {fix}."
        )
    files = [folder / name for name in TOKENIZER_NAMES if (folder / name).is_file()]
    if not any(f.name in TOKENIZER_MODELS for f in files):
        found = sorted(p.name for p in folder.iterdir())[:10]
        raise ValueError(
            f"The tokenizer folder {folder} holds no tokenizer (none of {', '.join(TOKENIZER_MODELS)}; it has "
            f"{found or 'nothing'}), so the export cannot include one. Fix: {fix}."
        )
    return files


def _content(token: Any) -> str | None:
    if isinstance(token, str):
        return token
    if isinstance(token, dict) and isinstance(token.get("content"), str):
        return token["content"]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def tokenizer_special_ids(folder: Path) -> dict[str, int | None]:
    """`bos_token_id` / `eos_token_id` of the tokenizer in `folder` (None where it does not name one): the
    tokens its tokenizer_config.json (or special_tokens_map.json) names, looked up in its added tokens."""
    conf = _read_json(folder / "tokenizer_config.json")
    special = _read_json(folder / "special_tokens_map.json")
    ids: dict[str, int] = {}
    for tok in _read_json(folder / "tokenizer.json").get("added_tokens", []):
        if isinstance(tok, dict) and isinstance(tok.get("content"), str) and isinstance(tok.get("id"), int):
            ids[tok["content"]] = tok["id"]
    for key, tok in (conf.get("added_tokens_decoder") or {}).items():
        content = _content(tok)
        if content is not None and str(key).isdigit():
            ids.setdefault(content, int(key))
    out: dict[str, int | None] = {}
    for name in ("bos", "eos"):
        text = _content(conf.get(f"{name}_token")) or _content(special.get(f"{name}_token"))
        out[f"{name}_token_id"] = ids.get(text) if text is not None else None
    return out


def generation_config(hf_config: dict[str, Any], tokenizer_dir: Path | None) -> dict[str, Any]:
    """generation_config.json as transformers HF_LAYOUT_VERSION writes `GenerationConfig(bos_token_id=...,
    eos_token_id=...)`: the tokenizer's BOS/EOS, else config.json's."""
    tok = tokenizer_special_ids(tokenizer_dir) if tokenizer_dir is not None else {}
    out: dict[str, Any] = {}
    for key in ("bos_token_id", "eos_token_id"):
        value = tok.get(key)
        out[key] = value if value is not None else hf_config.get(key)
    return {**{k: v for k, v in out.items() if v is not None}, "transformers_version": HF_LAYOUT_VERSION}


def write_companions(dest: Path, hf_config: dict[str, Any], tokenizer_dir: Path | None) -> list[str]:
    """Write config.json and generation_config.json into `dest` and copy the tokenizer files of
    `tokenizer_dir` (None: no tokenizer); returns the names written, sorted."""
    files = tokenizer_files(tokenizer_dir) if tokenizer_dir is not None else []
    (dest / CONFIG).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    gen = generation_config(hf_config, tokenizer_dir)
    (dest / GENERATION_CONFIG).write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")
    for f in files:
        shutil.copyfile(f, dest / f.name)
    return sorted([CONFIG, GENERATION_CONFIG, *(f.name for f in files)])
