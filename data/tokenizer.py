"""Tokenizers for the data stage: the sample BPE tokenizer built locally, and loading any tokenizer folder.

The sample tokenizer goes through the same code path as the real Llama 3 tokenizer: a byte-level BPE with
Llama 3's pre-tokenizer split, a TemplateProcessing post-processor that puts `<|begin_of_text|>` first, saved
as a Hugging Face `tokenizer.json` + `tokenizer_config.json` (`PreTrainedTokenizerFast`, as Meta ships it) that
`transformers.AutoTokenizer` loads. The data stage encodes with the Rust tokenizer that `transformers` built
from the folder, so documents are tokenized exactly as the tokenizer's own call does it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import publish
from core.paths import is_hub_id

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
# Llama 3's pre-tokenizer split (tokenizer.json of meta-llama/Meta-Llama-3-8B, `Split` with `Isolated`).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
# Files that make a folder a tokenizer folder for AutoTokenizer (fast, sentencepiece, or BPE vocab/merges).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")


def build_sample_tokenizer(texts: list[str] | tuple[str, ...], vocab_size: int) -> Any:
    """Train a byte-level BPE with `vocab_size` entries in total (2 special tokens: BOS id 0, EOS id 1)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    assert tok.token_to_id(BOS) == 0 and tok.token_to_id(EOS) == 1
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, 0)]),
        ]
    )
    return tok


def _tokenizer_config() -> dict[str, Any]:
    # The keys Meta's Llama 3 tokenizer_config.json carries (without its 256 reserved special tokens).
    return {
        "bos_token": BOS,
        "eos_token": EOS,
        "clean_up_tokenization_spaces": True,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def save_folder(tok: Any, folder: Path) -> None:
    """Write a trained tokenizer as a Hugging Face tokenizer folder (what AutoTokenizer.from_pretrained reads)."""
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(), indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS}, indent=2))


def ensure_sample_tokenizer(folder: Path, vocab_size: int) -> Path:
    """Build the sample tokenizer at `folder` unless it is there; atomic (temp folder + rename)."""
    if (folder / "tokenizer.json").is_file():
        return folder
    from data import sample

    try:
        with publish.publishing(folder) as tmp:
            save_folder(build_sample_tokenizer(sample.documents(), vocab_size), tmp)
    except (OSError, publish.ForeignOutputError):
        if not (folder / "tokenizer.json").is_file():  # not a concurrent build that won the race
            raise
    return folder


def tokenizer_folder(setting: str, folder: Path, *, sample_vocab_size: int) -> Path:
    """The local folder to load for `data.tokenizer=setting` (`folder`: where it lives, core.paths.tokenizer_dir):
    built there for `sample`, the download stage's output for a hub id, else the path itself."""
    if setting == "sample":
        return ensure_sample_tokenizer(folder, sample_vocab_size)
    if is_hub_id(setting) and not folder.is_dir():
        raise ValueError(
            f"data.tokenizer={setting!r} is a hub id whose local copy {folder} does not exist: the "
            f"download stage fetches it before the data stage. Run both (stages=[download,data], or stages=[] "
            f"for everything), or point data.tokenizer at a local folder holding tokenizer.json."
        )
    if not folder.is_dir():
        raise ValueError(
            f"data.tokenizer={setting!r}: the folder {folder} does not exist. Set "
            f"data.tokenizer to a folder holding tokenizer.json, a hub id, or 'sample'."
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        found = sorted(p.name for p in folder.iterdir())[:10]
        raise ValueError(
            f"data.tokenizer={setting!r}: the folder {folder} holds no tokenizer (none of "
            f"{', '.join(TOKENIZER_FILES)}; it has {found or 'nothing'}). Save one there with "
            f"AutoTokenizer.from_pretrained(<hub id>).save_pretrained('{folder}'), or set data.tokenizer to "
            f"the model's hub id (for example meta-llama/Meta-Llama-3-8B) so the download stage fetches it."
        )
    return folder


@dataclass(frozen=True)
class LoadedTokenizer:
    path: Path
    # The Rust tokenizer as `transformers` configured it, serialized: what the encode workers load.
    backend_json: str
    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int | None


def _from_pretrained(folder: Path) -> Any:
    """AutoTokenizer, except that a plain PreTrainedTokenizerFast (Llama 3) is loaded without AutoTokenizer's
    import of torch (the class AutoTokenizer would pick anyway; a test checks both give the same ids)."""
    try:
        conf = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        conf = {}
    if (
        conf.get("tokenizer_class") in ("PreTrainedTokenizerFast", "TokenizersBackend")
        and (folder / "tokenizer.json").is_file()
    ):
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def load(folder: Path, *, setting: str, model_vocab_size: int, model_name: str) -> LoadedTokenizer:
    """Load the tokenizer the way NxD's get_dataset.py does (AutoTokenizer) and check it fits the model
    (`setting` is data.tokenizer, for messages)."""
    try:
        hf = _from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"data.tokenizer={setting!r}: transformers could not load a tokenizer from "
            f"{folder}: {e}. Check that the folder holds a complete tokenizer "
            f"(tokenizer.json + tokenizer_config.json)."
        ) from e
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"data.tokenizer={setting!r}: {folder} gives a slow (Python) tokenizer; the "
            f"data stage needs a fast one (tokenizer.json). Convert it with "
            f"AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained(...)."
        )
    vocab = len(hf)
    if vocab > model_vocab_size:
        raise ValueError(
            f"data.tokenizer={setting!r} has {vocab} tokens, more than model.vocab_size="
            f"{model_vocab_size} (model={model_name}): token ids would index past the embedding table. "
            f"Use the model's own tokenizer, or a model whose vocab_size is at least {vocab}."
        )
    return LoadedTokenizer(
        path=folder,
        backend_json=backend.to_str(),
        vocab_size=vocab,
        bos_token_id=hf.bos_token_id,
        eos_token_id=hf.eos_token_id,
    )
