"""The training-time loader on real prepared datasets: data-parallel shares, exact resume, shuffling, the NxD
column layout, and the errors for a missing, incomplete or mismatched dataset."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from core.marker import STAGE_MARKER as MARKER
from core.paths import data_dir
from data.loader import Split, TrainBatches, check_dataset, eval_batches
from tests.helpers.training import small_config


def _steps(split: Split, steps: int, **kw) -> list[torch.Tensor]:
    b = TrainBatches(split, **kw)
    return [torch.cat(b.next_step()) for _ in range(steps)]


def test_dp_ranks_partition_the_global_batch_and_resume_continues(prepared):
    split = Split(data_dir(small_config(prepared)) / "train")
    assert split.rows > 100 and split.seq_len == 64
    common = dict(global_batch=8, seed=1, shuffle=False)
    one = _steps(split, 4, micro_batch=2, dp_rank=0, dp_size=1, **common)
    halves = [_steps(split, 4, micro_batch=2, dp_rank=r, dp_size=2, **common) for r in range(2)]
    for s in range(4):
        torch.testing.assert_close(torch.cat([halves[0][s], halves[1][s]]), one[s], rtol=0, atol=0)
        assert not torch.equal(halves[0][s], halves[1][s])
    # Micro-batching does not change what a step sees.
    torch.testing.assert_close(_steps(split, 4, micro_batch=4, dp_rank=0, dp_size=1, **common)[3], one[3])
    # Resume from the data position gives the exact next batches.
    resumed = TrainBatches(split, micro_batch=2, dp_rank=0, dp_size=1, consumed=2 * 8, **common)
    torch.testing.assert_close(torch.cat(resumed.next_step()), one[2], rtol=0, atol=0)


def test_epochs_wrap_and_shuffle_is_seeded_and_resumable(prepared):
    split = Split(data_dir(small_config(prepared)) / "train")
    n = split.rows
    b = TrainBatches(split, global_batch=8, micro_batch=8, dp_rank=0, dp_size=1, seed=7, shuffle=False)
    assert b.rows_at(np.array([n - 1, n, n + 1])).tolist() == [n - 1, 0, 1]
    sh = TrainBatches(split, global_batch=8, micro_batch=8, dp_rank=0, dp_size=1, seed=7, shuffle=True)
    epoch0 = sh.rows_at(np.arange(n))
    epoch1 = sh.rows_at(np.arange(n, 2 * n))
    assert sorted(epoch0.tolist()) == list(range(n)) and epoch0.tolist() != list(range(n))
    assert sorted(epoch1.tolist()) == list(range(n)) and epoch1.tolist() != epoch0.tolist()
    again = TrainBatches(
        split, global_batch=8, micro_batch=8, dp_rank=0, dp_size=1, seed=7, shuffle=True, consumed=n - 3
    )
    assert torch.equal(torch.cat(again.next_step()), split.take(sh.rows_at(np.arange(n - 3, n + 5))))
    other = TrainBatches(split, global_batch=8, micro_batch=8, dp_rank=0, dp_size=1, seed=8, shuffle=True)
    assert other.rows_at(np.arange(n)).tolist() != epoch0.tolist()


def test_eval_rows_do_not_depend_on_the_layout(prepared):
    split = Split(data_dir(small_config(prepared)) / "validation")
    one = eval_batches(split, global_batch=8, micro_batch=2, num_batches=2, dp_rank=0, dp_size=1)
    two = [eval_batches(split, global_batch=8, micro_batch=2, num_batches=2, dp_rank=r, dp_size=2) for r in (0, 1)]
    rows = lambda batches: sorted(map(tuple, torch.cat(batches).tolist()))  # noqa: E731
    assert rows(one) == rows(two[0] + two[1]) and len(rows(one)) == min(16, split.rows)


def test_nxd_columns_are_read_like_compact(tmp_path):
    import datasets

    blocks = np.arange(5 * 16, dtype=np.int32).reshape(5, 16)
    ds = datasets.Dataset.from_dict(
        {
            "input_ids": blocks.tolist(),
            "attention_mask": np.ones_like(blocks).tolist(),
            "labels": blocks.astype(np.int64).tolist(),
        }
    )
    ds.save_to_disk(str(tmp_path / "train"))
    split = Split(tmp_path / "train")
    assert split.rows == 5 and split.seq_len == 16
    assert torch.equal(split.take(np.array([4, 0])), torch.from_numpy(blocks[[4, 0]].astype(np.int64)))


def _copy_dataset(prepared, tmp_path):
    src = data_dir(small_config(prepared))
    dst = tmp_path / "ds"
    shutil.copytree(src, dst)
    cfg = small_config(prepared)
    cfg.data.output_dir = str(dst)
    return cfg, dst


def _check(cfg):
    return check_dataset(data_dir(cfg), seq_len=cfg.data.seq_len, vocab_size=cfg.model.vocab_size)


def test_missing_and_incomplete_dataset_errors(prepared, tmp_path):
    cfg = small_config(prepared)
    cfg.data.output_dir = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"nowhere .*does not exist\. Run the data stage first"):
        _check(cfg)
    cfg, dst = _copy_dataset(prepared, tmp_path)
    (dst / MARKER).unlink()
    with pytest.raises(ValueError, match=rf"{dst} is incomplete: its marker .*{MARKER} is missing"):
        _check(cfg)
    cfg, dst = _copy_dataset(prepared, tmp_path / "b")
    shutil.rmtree(dst / "validation")
    with pytest.raises(ValueError, match=r"split folder\(s\) validation are missing"):
        _check(cfg)


def test_seq_len_and_vocabulary_mismatch_errors(prepared, tmp_path):
    cfg, dst = _copy_dataset(prepared, tmp_path)
    assert _check(cfg).seq_len == 64
    bad = replace(cfg, data=replace(cfg.data, seq_len=128))
    with pytest.raises(ValueError, match=r"seq_len=64 tokens, but data.seq_len=128.*set data.seq_len=64"):
        _check(bad)
    bad = replace(cfg, model=replace(cfg.model, vocab_size=256))
    with pytest.raises(ValueError, match=r"vocabulary of 512 tokens.*more than model.vocab_size=256"):
        _check(bad)
    marker = json.loads((dst / MARKER).read_text())
    assert marker["summary"]["vocab_size"] == 512
