"""The `data` stage: corpus -> tokenizer -> packed seq_len blocks -> `<out>/train` and `<out>/validation`.

Replaces NxD's get_dataset.py. Correct to the token: the packed stream of each split is its documents tokenized
one by one (as the tokenizer's own call does: BOS first for Llama 3, EOS only with data.append_eos) and
concatenated; only the final remainder (< seq_len) of each split is dropped and reported. Documents are held
out for validation evenly through the corpus (document i when ceil((i+1)f) > ceil(if), f = data.val_fraction),
so no document is in both splits. Output is byte-identical for any data.num_proc.

The stage adapter (data/stage_data.py) hands it a temporary sibling of the final folder, which the job runner
publishes with the `_stage.json` marker after it returns: an interrupted run leaves nothing at the final path.
Bad input raises ValueError before anything is published.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.problems import raise_if
from data import rules
from data.config import DataConfig, DataFormat

if TYPE_CHECKING:
    from data.sources import Corpus
    from data.tokenizer import LoadedTokenizer

SPLITS = ("train", "validation")


def num_workers(requested: int) -> int:
    if requested > 0:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def validation_mask(first: int, count: int, fraction: Fraction) -> np.ndarray:
    """Which of documents first..first+count-1 are held out: evenly spaced, document 0 first (if f > 0)."""
    if fraction == 0:
        return np.zeros(count, dtype=bool)
    p, q = fraction.numerator, fraction.denominator
    i = np.arange(first, first + count + 1, dtype=np.int64)
    ceil = -((-i * p) // q)
    return ceil[1:] > ceil[:-1]


def _check(d: DataConfig) -> Fraction:
    raise_if(rules.range_problems(d))
    return rules.fraction(d)


class _Progress:
    """A tqdm bar over input bytes with documents/s and tokens/s; sparse updates when not on a terminal."""

    def __init__(self, total: int):
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        self.bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="data",
            mininterval=0.5 if tty else 30.0,
            dynamic_ncols=True,
        )
        self.t0 = time.perf_counter()

    def update(self, nbytes: int, docs: int, tokens: int) -> None:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{docs / dt:,.0f} docs/s, {tokens / dt / 1e6:,.2f}M tok/s", refresh=False)
        self.bar.update(nbytes)

    def close(self) -> None:
        self.bar.close()


def _closing(items: Iterator[Any], progress: _Progress) -> Iterator[Any]:
    try:
        yield from items
    finally:
        progress.close()


def prepare(d: DataConfig, corpus: Corpus, tok: LoadedTokenizer, out: Path, t0: float | None = None) -> dict[str, Any]:
    """Encode and pack `corpus` with `tok` into `out`/{train,validation} (out: a fresh folder the caller publishes).
    `t0`: when the stage started (perf_counter), so start-up is reported."""
    from data.encode import Encoder
    from data.pack import BlockWriter, Packer, folder_bytes, remove

    t0 = time.perf_counter() if t0 is None else t0
    fraction = _check(d)
    eos = None
    if d.append_eos:
        if tok.eos_token_id is None:
            raise ValueError(
                f"data.append_eos=true but the tokenizer at {tok.path} has no eos_token. Set "
                f"data.append_eos=false, or use a tokenizer with an eos_token."
            )
        eos = tok.eos_token_id
    work = Path(out)
    tmp = work / "_tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    workers = num_workers(d.num_proc)
    packers = {s: Packer(d.seq_len, BlockWriter(tmp / f"{s}.arrow", d.format, d.seq_len)) for s in SPLITS}
    pids: set[int] = set()
    docs = chars = tokens = 0
    try:
        with Encoder(tok.backend_json, eos, workers) as encoder:
            startup = time.perf_counter() - t0
            progress = _Progress(corpus.total_weight)
            for enc in _closing(encoder.map(corpus.pieces), progress):
                n = enc.lengths.size
                held = validation_mask(docs, n, fraction)
                if held.any():
                    by_token = np.repeat(held, enc.lengths)
                    packers["validation"].feed(enc.tokens[by_token], int(held.sum()))
                    packers["train"].feed(enc.tokens[~by_token], n - int(held.sum()))
                else:
                    packers["train"].feed(enc.tokens, n)
                docs += n
                chars += enc.chars
                tokens += enc.tokens.size
                pids.add(enc.pid)
                progress.update(enc.piece.weight, docs, tokens)
        encode_seconds = time.perf_counter() - t0 - startup
        _check_result(d, corpus, docs, chars, tokens, packers)
        for s in SPLITS:
            packers[s].writer.publish(work / s, s)
    finally:
        remove(tmp)
    blocks = {s: packers[s].writer.blocks for s in SPLITS}
    summary: dict[str, Any] = {
        "source": corpus.description,
        "files": len(corpus.files),
        "seq_len": d.seq_len,
        "format": DataFormat(d.format).value,
        "tokenizer": str(tok.path),
        "vocab_size": tok.vocab_size,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "append_eos": d.append_eos,
        "val_fraction": d.val_fraction,
        "documents": docs,
        "documents_split": {s: packers[s].documents for s in SPLITS},
        "characters": chars,
        "tokens": tokens,
        "blocks": blocks,
        "tokens_dropped": sum(packers[s].dropped for s in SPLITS),
        "bytes_written": sum(folder_bytes(work / s) for s in SPLITS),
        "num_proc": workers,
        "workers_used": len(pids),
        "startup_seconds": round(startup, 3),
        "encode_seconds": round(encode_seconds, 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    assert tokens == sum(b * d.seq_len for b in blocks.values()) + summary["tokens_dropped"]
    _print_summary(summary)
    return summary


def _check_result(d: DataConfig, corpus: Corpus, docs: int, chars: int, tokens: int, packers: dict) -> None:
    files = corpus.files
    where = corpus.description + (f" ({', '.join(files[:3])}{' ...' if len(files) > 3 else ''})" if files else "")
    if docs == 0 or chars == 0:
        raise ValueError(
            f"the corpus is empty ({docs} documents, {chars} characters): {where}. Point "
            f"data.paths at files with text (jsonl rows need a non-empty {d.text_field!r} field)."
        )
    train, val = packers["train"], packers["validation"]
    raise_if(rules.block_problems(d, docs, tokens, train.tokens, val.documents, val.tokens, where))


def _print_summary(s: dict[str, Any]) -> None:
    b = s["blocks"]
    print(
        f"[data] {s['documents']:,} documents -> {s['tokens']:,} tokens -> {b['train']:,} train + "
        f"{b['validation']:,} validation blocks of {s['seq_len']} ({s['format']}), {s['tokens_dropped']:,} "
        f"tokens dropped (final remainders), {s['bytes_written'] / 1e6:,.1f} MB written, "
        f"{s['seconds']:.1f} s ({s['num_proc']} workers)",
        flush=True,
    )
