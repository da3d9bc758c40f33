"""The data stage's rules, torch- and numpy-free: value ranges, which documents are held out, the two splits must
each hold a block, and what a tokenizer folder says about itself.

The data stage raises them at run time (data/prepare.py, with exact token counts) and the launcher reports them
at plan time (launcher/validate.py), in the same words. Before the data stage has run there are no token counts:
`split_estimate` bounds them from the documents' UTF-8 bytes, which is exact enough to catch a split that cannot
hold a block and never refuses one that could (a byte-level BPE, such as Llama 3's and the sample's tokenizer,
makes at most one token per byte, plus the BOS/EOS it adds).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from core.problems import Problem, Range
from data.config import DataConfig, DataSource

RANGES = (
    Range("data.seq_len", at_least=2, why="a block predicts its next tokens", fix="set data.seq_len=2048."),
    Range(
        "data.val_fraction",
        at_least=0,
        below=1,
        why="the share of documents held out for validation",
        fix="set data.val_fraction=0.01, or 0 for no validation split.",
    ),
    Range(
        "data.sample_documents",
        at_least=1,
        special=(0, "all of them"),
        why="how many of the sample corpus's documents to use",
        fix="set data.sample_documents=0 (all of them) or a positive count such as 100.",
    ),
    Range("data.num_proc", at_least=1, special=(0, "all cores"), fix="set data.num_proc=0."),
)
# Plan-time estimates read .jsonl files only up to this many bytes in all (the plan stays fast).
ESTIMATE_BYTES = 32 << 20
# Tokens a tokenizer may add per document beyond its text (BOS, and EOS in some post-processors).
SPECIALS_PER_DOCUMENT = 2


def range_problems(d: DataConfig) -> list[Problem]:
    return [p for r in RANGES for p in r.problems(getattr(d, r.key.split(".", 1)[1]))]


def fraction(d: DataConfig) -> Fraction:
    """data.val_fraction as the exact fraction the held-out rule uses."""
    return Fraction(str(d.val_fraction)).limit_denominator(1_000_000)


def held_out(index: int, f: Fraction) -> bool:
    """Document `index` is held out when ceil((i+1)f) > ceil(if): evenly spaced, document 0 first (if f > 0).
    (data.prepare.validation_mask is the vectorised form the data stage uses; a test checks they agree.)"""
    return -(-(index + 1) * f.numerator // f.denominator) > -(-index * f.numerator // f.denominator)


def block_problems(
    d: DataConfig,
    documents: int,
    tokens: int,
    train_tokens: int,
    val_documents: int,
    val_tokens: int,
    where: str,
    bound: bool = False,
) -> list[Problem]:
    """Each split must fill at least one block of data.seq_len tokens. `bound`: the token counts are upper bounds
    (plan time: estimated from bytes before tokenizing), so a problem here is certain, and said to be estimated."""
    at_most = "at most " if bound else ""
    how = " (an upper bound from the documents' UTF-8 bytes, estimated before tokenizing)" if bound else ""
    if train_tokens < d.seq_len:
        held = f", {at_most}{val_tokens} of them held out for validation" if val_tokens else ""
        fix = f"add text, or lower data.seq_len to at most {max(train_tokens, 2)}."
        if val_tokens >= d.seq_len:
            fix = f"add text, or lower data.val_fraction (it holds out {val_documents} of {_documents(documents)})."
        return [
            Problem(
                "data.seq_len",
                d.seq_len,
                f"the corpus is smaller than one block: it has {at_most}{tokens} tokens{held}{how} "
                f"({_documents(documents)} in {where}).",
                fix,
            )
        ]
    if fraction(d) > 0 and val_tokens < d.seq_len:
        suggest = float(f"{min(0.5, 2 * d.seq_len / max(tokens, 1)):.2g}")
        return [
            Problem(
                "data.val_fraction",
                d.val_fraction,
                f"held out {val_documents} of {_documents(documents)} ({at_most}{val_tokens} tokens{how}), less than "
                f"one block of data.seq_len={d.seq_len}.",
                f"raise data.val_fraction (about {suggest:g} should give a block) or set data.val_fraction=0 for no "
                "validation split.",
            )
        ]
    return []


def _documents(n: int) -> str:
    return f"{n} document" if n == 1 else f"{n} documents"


@dataclass(frozen=True)
class TokenizerFacts:
    vocab_size: int
    # Byte-level BPE with no normalizer: at most one token per byte of text.
    byte_level: bool


def tokenizer_facts(folder: Path) -> TokenizerFacts:
    """What tokenizer.json says, without importing tokenizers (keeps the launcher light)."""
    spec = json.loads((folder / "tokenizer.json").read_text())
    ids = list(spec.get("model", {}).get("vocab", {}).values())
    ids += [t["id"] for t in spec.get("added_tokens", [])]
    text = json.dumps(spec.get("pre_tokenizer"))
    byte_level = spec.get("model", {}).get("type") == "BPE" and '"ByteLevel"' in text and not spec.get("normalizer")
    return TokenizerFacts(max(ids) + 1 if ids else 0, byte_level)


def split_problems(d: DataConfig, byte_level: bool) -> list[Problem]:
    """Plan-time `block_problems` from byte bounds, where they are cheap: data=sample and local .txt/.jsonl files
    up to ESTIMATE_BYTES (not parquet, not hub datasets, not tokenizers that may make more tokens than bytes)."""
    if not byte_level or any(r.problems(getattr(d, r.key.split(".", 1)[1])) for r in RANGES):
        return []
    sizes = _document_bytes(d)
    if sizes is None:
        return []
    f = fraction(d)
    extra = SPECIALS_PER_DOCUMENT + int(d.append_eos)
    val = [n + extra for i, n in enumerate(sizes) if f > 0 and held_out(i, f)]
    total = sum(sizes) + extra * len(sizes)
    where = "the sample corpus" if d.source == DataSource.sample else f"{', '.join(d.paths)}"
    return block_problems(d, len(sizes), total, total - sum(val), len(val), sum(val), where, bound=True)


def _document_bytes(d: DataConfig) -> list[int] | None:
    """UTF-8 bytes of each document in corpus order (a .jsonl line's bytes bound its text's), or None."""
    if d.source == DataSource.sample:
        from data import sample

        docs = sample.documents()
        docs = docs[: d.sample_documents] if d.sample_documents else docs
        return [len(doc.encode()) for doc in docs]
    if d.source != DataSource.files:
        return None
    from data.sources import resolve

    files, problems = resolve(d.paths)
    if problems or any(f.suffix == ".parquet" for f in files):
        return None
    if sum(os.path.getsize(f) for f in files if f.suffix == ".jsonl") > ESTIMATE_BYTES:
        return None
    out: list[int] = []
    for f in files:
        if f.suffix == ".txt":
            out.append(os.path.getsize(f))
            continue
        with open(f, "rb") as fh:
            out += [len(line) for line in fh if line.strip()]
    return out
