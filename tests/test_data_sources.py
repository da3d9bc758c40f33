"""Corpus planning and reading: pieces cover every document once, in order; the validation split is stable."""

from __future__ import annotations

import os
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import numpy as np

from data.prepare import validation_mask
from data.sources import expand, plan_files, read
from tests.helpers.corpora import documents, write_jsonl


def _read_all(pieces) -> list[str]:
    return [doc for p in pieces for doc in read(p)]


def test_jsonl_pieces_cut_at_line_starts_and_cover_every_row_in_order(tmp_path):
    docs = documents(500, seed=11)
    path = write_jsonl(tmp_path / "c.jsonl", docs)
    for piece_bytes in (1, 100, 1000, 10**9):
        pieces = plan_files([path], "text", piece_bytes)
        assert _read_all(pieces) == docs
        assert pieces[0].start == 0 and pieces[-1].stop == path.stat().st_size
        assert all(a.stop == b.start for a, b in pairwise(pieces))
    assert len(plan_files([path], "text", 1000)) > 10


def test_parquet_pieces_follow_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = documents(100, seed=12)
    pq.write_table(pa.table({"text": docs, "n": list(range(100))}), tmp_path / "a.parquet", row_group_size=7)
    pieces = plan_files([tmp_path / "a.parquet"], "text", 1)
    assert len(pieces) == 15 and _read_all(pieces) == docs
    assert _read_all(plan_files([tmp_path / "a.parquet"], "text")) == docs


def test_expand_keeps_pattern_order_sorts_globs_and_drops_repeats(tmp_path):
    for name in ("b.txt", "a.txt", "c.jsonl"):
        (tmp_path / name).write_text("x")
    got = expand([str(tmp_path / "c.jsonl"), str(tmp_path / "*.txt"), str(tmp_path / "a.txt")])
    assert [p.name for p in got] == ["c.jsonl", "a.txt", "b.txt"]
    assert all(isinstance(p, Path) and p.is_absolute() for p in got)


def test_validation_mask_is_even_starts_at_zero_and_independent_of_chunking():
    f = Fraction(1, 100)
    whole = validation_mask(0, 1000, f)
    assert whole.sum() == 10 and list(np.flatnonzero(whole)) == list(range(0, 1000, 100))
    chunks = np.concatenate([validation_mask(a, 37, f) for a in range(0, 1000, 37)])[:1000]
    assert np.array_equal(whole, chunks)
    assert validation_mask(0, 50, Fraction(0)).sum() == 0
    assert abs(validation_mask(0, 10_000, Fraction(3, 40)).sum() - 750) <= 1


def test_quoted_paths_on_the_command_line_compose_to_a_list():
    """The quoting docs/data.md documents: a list in brackets, items with spaces or globs in double quotes."""
    from launcher.compose import compose

    cfg = compose(["data=files", 'data.paths=["my corpus/*.txt","b/**/*.jsonl"]', "data.text_field=content"]).cfg
    # Relative paths are pinned to the folder the command was typed in (stage jobs may run elsewhere).
    here = os.getcwd()
    assert cfg.data.paths == [f"{here}/my corpus/*.txt", f"{here}/b/**/*.jsonl"] and cfg.data.text_field == "content"
    got = compose(["data=files", "data.paths=[a.jsonl,/c/*.parquet]"]).cfg.data.paths
    assert got == [f"{here}/a.jsonl", "/c/*.parquet"]
