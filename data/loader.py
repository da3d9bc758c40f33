"""Training-time reader of the prepared dataset (`<data_dir>/train`, `<data_dir>/validation`).

Sample order is a pure function of the global sample position: position i is row perm_e[i % N] of epoch
e = i // N (perm_e the identity, or a permutation seeded by (seed, e) when shuffling). One optimizer step
consumes the next `global_batch_size` positions; data-parallel rank r takes the r-th contiguous slice of them.
So the data position is one integer (samples consumed), resume continues at the exact next batch, and every
layout (dp 1, 2, 4, any micro-batching) sees the same global batch at the same step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.marker import STAGE_MARKER

SPLITS = ("train", "validation")


@dataclass(frozen=True)
class DatasetInfo:
    path: Path
    seq_len: int
    vocab_size: int
    rows: dict[str, int]


def check_dataset(root: Path, *, seq_len: int, vocab_size: int) -> DatasetInfo:
    """Refuse a missing, incomplete or mismatched dataset with one paragraph that says how to fix it.
    `seq_len` is the training sequence length (data.seq_len), `vocab_size` the model's embedding rows."""
    want_seq, model_vocab = seq_len, vocab_size
    make = "Run the data stage first (python -m launcher stages=[data], or without stages=... to run all)."
    if not root.exists():
        raise ValueError(
            f"The prepared dataset {root} (data.output_dir / data_dir of this config) does not exist. {make}"
        )
    marker_path = root / STAGE_MARKER
    try:
        marker = json.loads(marker_path.read_text())
        summary = marker["summary"]
        seq_len, vocab = int(summary["seq_len"]), int(summary["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"The prepared dataset {root} is incomplete: its marker {marker_path} is missing or "
            f"unreadable ({type(exc).__name__}: {exc}), so the data stage never finished there. "
            f"{make} It redoes an incomplete output."
        ) from None
    missing = [s for s in SPLITS if not (root / s / "state.json").exists()]
    if missing:
        raise ValueError(
            f"The prepared dataset {root} is incomplete: split folder(s) {', '.join(missing)} are "
            f"missing or not a `datasets` save_to_disk folder (no state.json). Delete {root} and "
            f"rerun the data stage (python -m launcher stages=[data] force=true)."
        )
    if seq_len != want_seq:
        raise ValueError(
            f"The prepared dataset {root} has blocks of seq_len={seq_len} tokens, but "
            f"data.seq_len={want_seq}. Training reads whole blocks, so they must agree: set "
            f"data.seq_len={seq_len}, or point data.output_dir elsewhere (or leave it empty) so the "
            f"data stage packs a dataset for {want_seq}."
        )
    if vocab > model_vocab:
        raise ValueError(
            f"The prepared dataset {root} was tokenized with a vocabulary of {vocab} tokens "
            f"(tokenizer {summary.get('tokenizer', '?')}), more than model.vocab_size="
            f"{model_vocab}: token ids would index past the embedding. Use the tokenizer "
            f"that matches the model (data.tokenizer), or set model.vocab_size>={vocab}."
        )
    rows = {s: Split(root / s).rows for s in SPLITS}
    if rows["train"] == 0:
        raise ValueError(
            f"The prepared dataset {root}/train has no rows. Add text to the corpus or lower "
            f"data.seq_len, then rerun the data stage with force=true."
        )
    return DatasetInfo(root, seq_len, vocab, rows)


class Split:
    """Rows of one split as int64 (B, S) tensors; only `input_ids` is read (labels are input_ids, unshifted).

    Reads the Arrow files of the `save_to_disk` folder directly (memory-mapped, zero-copy): the same bytes
    `datasets.load_from_disk` maps, without importing `datasets` (and pandas) at training start-up.
    """

    def __init__(self, path: Path):
        import pyarrow as pa

        state = json.loads((path / "state.json").read_text())
        self._chunks: list[np.ndarray] = []
        for f in state["_data_files"]:
            table = pa.ipc.open_stream(pa.memory_map(str(path / f["filename"]))).read_all()
            for chunk in table.column("input_ids").chunks:
                if len(chunk):
                    values = chunk.flatten().to_numpy(zero_copy_only=False)
                    self._chunks.append(values.reshape(len(chunk), -1))
        self._starts = np.cumsum([0] + [c.shape[0] for c in self._chunks])
        self.rows = int(self._starts[-1])
        widths = {c.shape[1] for c in self._chunks}
        if len(widths) > 1:
            raise ValueError(
                f"The dataset {path} has rows of different lengths {sorted(widths)}; a packed "
                f"dataset has one length (data.seq_len). Rerun the data stage with force=true."
            )
        self.seq_len = widths.pop() if widths else 0

    def take(self, rows: np.ndarray) -> torch.Tensor:
        if len(self._chunks) == 1:
            arr = self._chunks[0][rows]
        else:
            which = np.searchsorted(self._starts, rows, side="right") - 1
            arr = np.stack([self._chunks[c][r - self._starts[c]] for c, r in zip(which, rows)])
        return torch.from_numpy(arr.astype(np.int64))


class TrainBatches:
    """Micro-batches of one data-parallel rank for each optimizer step, resumable from `consumed` samples."""

    def __init__(
        self,
        split: Split,
        *,
        global_batch: int,
        micro_batch: int,
        dp_rank: int,
        dp_size: int,
        seed: int,
        shuffle: bool,
        consumed: int = 0,
    ):
        assert global_batch % (micro_batch * dp_size) == 0, (global_batch, micro_batch, dp_size)
        self.split, self.global_batch, self.micro_batch = split, global_batch, micro_batch
        self.dp_rank, self.dp_size, self.seed, self.shuffle = dp_rank, dp_size, seed, shuffle
        self.consumed = consumed
        self._perm: tuple[int, np.ndarray] | None = None

    def rows_at(self, positions: np.ndarray) -> np.ndarray:
        n = self.split.rows
        epochs, offsets = np.divmod(positions, n)
        if not self.shuffle:
            return offsets
        out = np.empty_like(offsets)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._permutation(int(e))[offsets[sel]]
        return out

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = (epoch, rng.permutation(self.split.rows))
        return self._perm[1]

    def next_step(self) -> list[torch.Tensor]:
        per_rank = self.global_batch // self.dp_size
        start = self.consumed + self.dp_rank * per_rank
        rows = self.rows_at(np.arange(start, start + per_rank, dtype=np.int64))
        self.consumed += self.global_batch
        return [self.split.take(rows[i : i + self.micro_batch]) for i in range(0, per_rank, self.micro_batch)]

    @property
    def epoch(self) -> float:
        return self.consumed / self.split.rows


def eval_batches(
    split: Split, *, global_batch: int, micro_batch: int, num_batches: int, dp_rank: int, dp_size: int
) -> list[torch.Tensor]:
    """The held-out rows this rank evaluates: the first num_batches global batches (fewer if the split is
    smaller), strided over the data-parallel ranks; the same rows every evaluation, whatever the layout."""
    total = min(split.rows, num_batches * global_batch)
    mine = np.arange(dp_rank, total, dp_size, dtype=np.int64)
    return [split.take(mine[i : i + micro_batch]) for i in range(0, mine.size, micro_batch)]
