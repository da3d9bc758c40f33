"""Pack a token stream into seq_len blocks and write them as a `datasets` save_to_disk folder.

Packing carries the remainder from one piece to the next, so only the final remainder (< seq_len tokens) of
each split is dropped (NxD's group_texts drops one per 1000-document map batch). Two on-disk formats:
- compact: one column `input_ids`, fixed-size list of int32 (4 bytes per token);
- nxd: exactly what NxD's get_dataset.py writes (`datasets` map of the tokenizer, then group_texts):
  `input_ids` list<int32>, `attention_mask` list<int8> (all ones), `labels` list<int64> (= input_ids).
Blocks stream into an Arrow file in the stage's work folder; `save_to_disk` then writes the final shards.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from data.config import DataFormat


def features(fmt: DataFormat, seq_len: int) -> Any:
    from datasets import Features, List, Value

    if fmt == DataFormat.compact:
        return Features({"input_ids": List(Value("int32"), length=seq_len)})
    return Features(
        {"input_ids": List(Value("int32")), "attention_mask": List(Value("int8")), "labels": List(Value("int64"))}
    )


class BlockWriter:
    """Streams (n, seq_len) int32 blocks into one Arrow file, then publishes it as a save_to_disk folder."""

    def __init__(self, tmp_file: Path, fmt: DataFormat, seq_len: int):
        from datasets.arrow_writer import ArrowWriter

        self.fmt, self.seq_len, self.tmp_file = fmt, seq_len, tmp_file
        self.features = features(fmt, seq_len)
        self.writer = ArrowWriter(features=self.features, path=str(tmp_file))
        self.blocks = 0

    def write(self, blocks: np.ndarray) -> None:
        import pyarrow as pa

        n = blocks.shape[0]
        flat = pa.array(blocks.reshape(-1), type=pa.int32())
        if self.fmt == DataFormat.compact:
            cols = {"input_ids": pa.FixedSizeListArray.from_arrays(flat, self.seq_len)}
        else:
            offsets = pa.array(np.arange(n + 1, dtype=np.int32) * self.seq_len, type=pa.int32())
            ones = pa.array(np.ones(n * self.seq_len, dtype=np.int8), type=pa.int8())
            labels = pa.array(blocks.reshape(-1).astype(np.int64), type=pa.int64())
            cols = {
                "input_ids": pa.ListArray.from_arrays(offsets, flat),
                "attention_mask": pa.ListArray.from_arrays(offsets, ones),
                "labels": pa.ListArray.from_arrays(offsets, labels),
            }
        self.writer.write_table(pa.table(cols))
        self.blocks += n

    def publish(self, out_dir: Path, split: str) -> None:
        """Finish the Arrow file and write `out_dir` with Dataset.save_to_disk (the layout NxD loads)."""
        import datasets

        self.writer.finalize()
        ds = datasets.Dataset.from_file(str(self.tmp_file), split=datasets.NamedSplit(split))
        assert ds.num_rows == self.blocks
        was_disabled = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()
        try:
            ds.save_to_disk(str(out_dir))
        finally:
            if not was_disabled:
                datasets.enable_progress_bars()
        del ds
        self.tmp_file.unlink()


class Packer:
    """Cuts a stream of token arrays into seq_len blocks; keeps the remainder for the next call."""

    def __init__(self, seq_len: int, writer: BlockWriter):
        self.seq_len, self.writer = seq_len, writer
        self.carry = np.empty(0, dtype=np.int32)
        self.tokens = 0
        self.documents = 0

    def feed(self, tokens: np.ndarray, documents: int) -> None:
        self.tokens += tokens.size
        self.documents += documents
        if self.carry.size:
            tokens = np.concatenate([self.carry, tokens])
        full = tokens.size // self.seq_len * self.seq_len
        if full:
            self.writer.write(tokens[:full].reshape(-1, self.seq_len))
        self.carry = tokens[full:].copy()

    @property
    def dropped(self) -> int:
        return int(self.carry.size)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
