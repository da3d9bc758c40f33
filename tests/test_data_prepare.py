"""The data stage end to end with real `datasets`, `tokenizers` and `transformers`: correct to the token,
deterministic across workers, NxD-compatible, and the same blocks from the hub parquet path."""

from __future__ import annotations

from fractions import Fraction
from itertools import chain
from pathlib import Path

import numpy as np
import pytest

from data.config import DataFormat, DataSource
from data.prepare import validation_mask
from tests.helpers.corpora import documents, hf_tokenizer, load_blocks, make_cfg, prepare, reference_blocks, write_jsonl


def _split(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    held = validation_mask(0, len(docs), Fraction(str(fraction)))
    return [d for d, h in zip(docs, held) if not h], [d for d, h in zip(docs, held) if h]


def test_packed_stream_equals_documents_tokenized_one_by_one(tmp_path, capsys):
    docs = documents(300, seed=1)
    path = write_jsonl(tmp_path / "corpus.jsonl", docs)
    cfg = make_cfg(tmp_path, paths=[str(path)], seq_len=64, val_fraction=0.1)
    out = tmp_path / "out"
    s = prepare(cfg, out)
    tok = hf_tokenizer(cfg)
    train_docs, val_docs = _split(docs, 0.1)
    assert len(val_docs) == 30 and s["documents_split"] == {"train": 270, "validation": 30}
    want_train, drop_train = reference_blocks(tok, train_docs, 64)
    want_val, drop_val = reference_blocks(tok, val_docs, 64)
    assert np.array_equal(load_blocks(out / "train"), want_train)
    assert np.array_equal(load_blocks(out / "validation"), want_val)
    # BOS first in every document, no EOS: the token count is the tokenizer's own, to the token.
    assert want_train[0, 0] == tok.bos_token_id == 0
    assert tok.eos_token_id not in set(want_train.reshape(-1).tolist())
    assert s["blocks"] == {"train": len(want_train), "validation": len(want_val)}
    assert s["tokens_dropped"] == drop_train + drop_val < 2 * 64
    assert s["tokens"] == sum(len(tok(d)["input_ids"]) for d in docs)
    assert s["documents"] == 300 and s["vocab_size"] == 2048 and s["seq_len"] == 64
    assert s["bytes_written"] > 4 * 64 * len(want_train)
    assert (out / "_stage.json").is_file() and not list(tmp_path.glob(".out.tmp*"))
    # The progress bar (stderr) reports documents/s and tokens/s; the summary line (stdout) the totals.
    printed = capsys.readouterr()
    assert "docs/s" in printed.err and "tok/s" in printed.err
    assert f"{s['documents']:,} documents -> {s['tokens']:,} tokens" in printed.out
    assert f"{s['tokens_dropped']:,} tokens dropped" in printed.out and "MB written" in printed.out


def test_append_eos_adds_one_eos_after_each_document(tmp_path):
    docs = documents(40, seed=2)
    cfg = make_cfg(
        tmp_path, paths=[str(write_jsonl(tmp_path / "c.jsonl", docs))], seq_len=32, val_fraction=0.0, append_eos=True
    )
    s = prepare(cfg, tmp_path / "out")
    tok = hf_tokenizer(cfg)
    want, dropped = reference_blocks(tok, docs, 32, eos=tok.eos_token_id)
    got = load_blocks(tmp_path / "out" / "train")
    assert np.array_equal(got, want)
    assert s["tokens"] == sum(len(tok(d)["input_ids"]) + 1 for d in docs) and s["tokens_dropped"] == dropped
    assert int((want == tok.eos_token_id).sum()) >= len(docs) - 1  # the last may fall in the dropped tail
    assert s["blocks"]["validation"] == 0


def test_deterministic_and_identical_across_num_proc(tmp_path):
    docs = documents(400, seed=3)
    paths = [str(write_jsonl(tmp_path / "corpus" / f"part-{i:02d}.jsonl", docs[i::8])) for i in range(8)]
    outs = {}
    for name, num_proc in (("a", 1), ("b", 2), ("c", 2)):
        cfg = make_cfg(
            tmp_path, paths=[str(tmp_path / "corpus" / "*.jsonl")], seq_len=48, num_proc=num_proc, val_fraction=0.05
        )
        outs[name] = (prepare(cfg, tmp_path / name), tmp_path / name)
    assert outs["a"][0]["workers_used"] == 1
    # num_proc=2 really used two worker processes (distinct pids reported with the pieces they encoded).
    assert outs["b"][0]["num_proc"] == 2 and outs["b"][0]["workers_used"] == 2
    for split in ("train", "validation"):
        files = {n: sorted((o / split).glob("*.arrow")) for n, (_, o) in outs.items()}
        data = {n: b"".join(f.read_bytes() for f in fs) for n, fs in files.items()}
        assert data["a"] == data["b"] == data["c"] and len(data["a"]) > 0
    assert len(paths) == 8


def _nxd_reference(tok, docs: list[str], block_size: int):
    """NxD's get_dataset.py, as written there: datasets.map of the tokenizer, then group_texts."""
    import datasets

    raw = datasets.Dataset.from_dict({"text": docs})
    tokenized = raw.map(lambda ex: tok(ex["text"]), batched=True, remove_columns=["text"])

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total = len(concatenated[next(iter(examples))]) // block_size * block_size
        result = {k: [t[i : i + block_size] for i in range(0, total, block_size)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    return tokenized.map(group_texts, batched=True)


def test_nxd_format_matches_nxd_get_dataset_exactly(tmp_path):
    import datasets

    docs = documents(200, seed=4)  # < 1000 documents: one map batch, so NxD drops only the final remainder too
    cfg = make_cfg(
        tmp_path,
        paths=[str(write_jsonl(tmp_path / "c.jsonl", docs))],
        seq_len=64,
        val_fraction=0.0,
        format=DataFormat.nxd,
    )
    prepare(cfg, tmp_path / "out")
    ours = datasets.load_from_disk(str(tmp_path / "out" / "train"))
    ref = _nxd_reference(hf_tokenizer(cfg), docs, 64)
    assert ours.features == ref.features
    assert ours.data.schema.remove_metadata() == ref.data.schema.remove_metadata()
    assert str(ours.features["attention_mask"].feature.dtype) == "int8"
    assert str(ours.features["labels"].feature.dtype) == "int64"
    assert ours.num_rows == ref.num_rows > 0
    assert ours.to_dict() == ref.to_dict()
    # NxD's training side: load_from_disk + default_data_collator gives (batch, seq) tensors of these dtypes.
    from transformers import default_data_collator

    batch = default_data_collator([ours[0], ours[1]])
    assert tuple(batch["input_ids"].shape) == (2, 64)
    assert bool((batch["labels"] == batch["input_ids"]).all()) and bool((batch["attention_mask"] == 1).all())


def test_compact_format_is_one_fixed_length_int32_column(tmp_path):
    import datasets
    import pyarrow as pa

    cfg = make_cfg(
        tmp_path, paths=[str(write_jsonl(tmp_path / "c.jsonl", documents(60, seed=5)))], seq_len=16, val_fraction=0.0
    )
    s = prepare(cfg, tmp_path / "out")
    ds = datasets.load_from_disk(str(tmp_path / "out" / "train"))
    assert ds.column_names == ["input_ids"]
    assert ds.data.schema.field("input_ids").type == pa.list_(pa.int32(), 16)
    assert ds.with_format("numpy")[:]["input_ids"].shape == (s["blocks"]["train"], 16)
    # about 4 bytes per token on disk (NxD's three columns take 13)
    assert s["bytes_written"] / (s["blocks"]["train"] * 16) < 4.5


def test_sample_corpus_default(tmp_path):
    cfg = make_cfg(tmp_path, val_fraction=0.05)
    s = prepare(cfg, tmp_path / "out")
    from data import sample

    docs = list(sample.documents())
    assert s["documents"] == len(docs) > 200 and s["source"].startswith("sample corpus")
    train_docs, _ = _split(docs, 0.05)
    want, _ = reference_blocks(hf_tokenizer(cfg), train_docs, 256)
    assert np.array_equal(load_blocks(tmp_path / "out" / "train"), want)
    assert s["blocks"]["train"] > 300 and s["blocks"]["validation"] >= 8


def test_sample_documents_takes_the_first_n_documents(tmp_path):
    from data import sample

    cfg = make_cfg(tmp_path, val_fraction=0.05, sample_documents=60)
    s = prepare(cfg, tmp_path / "out")
    docs = list(sample.documents())[:60]
    assert s["documents"] == 60 and "60 documents" in s["source"]
    train_docs, _ = _split(docs, 0.05)
    want, _ = reference_blocks(hf_tokenizer(cfg), train_docs, 256)
    assert np.array_equal(load_blocks(tmp_path / "out" / "train"), want)


def _write_wikicorpus_like(root: Path, docs: list[str]) -> None:
    """The layout and schema of the hub's parquet conversion of wikicorpus raw_en (id, title, text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "raw_en" / "train"
    folder.mkdir(parents=True)
    half = len(docs) // 2
    for i, part in enumerate((docs[:half], docs[half:])):
        table = pa.table(
            {
                "id": [str(i * half + j) for j in range(len(part))],
                "title": [f"Article {j}" for j in range(len(part))],
                "text": part,
            }
        )
        pq.write_table(table, folder / f"{i:04d}.parquet", row_group_size=16)


def test_wikicorpus_hub_path_on_local_parquet(tmp_path):
    docs = documents(120, seed=6)
    _write_wikicorpus_like(tmp_path / "wikicorpus", docs)
    cfg = make_cfg(
        tmp_path,
        source=DataSource.hub,
        hub_dataset=str(tmp_path / "wikicorpus"),
        hub_config="raw_en",
        hub_revision="refs/convert/parquet",
        seq_len=32,
        val_fraction=0.0,
    )
    s = prepare(cfg, tmp_path / "out")
    want, _ = reference_blocks(hf_tokenizer(cfg), docs, 32)
    assert np.array_equal(load_blocks(tmp_path / "out" / "train"), want)
    assert s["files"] == 2 and s["documents"] == 120


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".parquet"])
def test_txt_jsonl_and_parquet_files_by_glob_with_a_configured_text_field(tmp_path, suffix):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = documents(12, seed=7, max_words=300)
    folder = tmp_path / "my corpus"
    folder.mkdir()
    if suffix == ".txt":
        for i, d in enumerate(docs):
            (folder / f"doc{i:02d}.txt").write_text(d, encoding="utf-8")
    elif suffix == ".jsonl":
        write_jsonl(folder / "a.jsonl", docs[:5], field="body")
        write_jsonl(folder / "b.jsonl", docs[5:], field="body")
    else:
        pq.write_table(pa.table({"body": docs}), folder / "a.parquet", row_group_size=5)
    cfg = make_cfg(
        tmp_path,
        paths=[str(folder / f"*{suffix}")],
        seq_len=32,
        val_fraction=0.0,
        text_field="text" if suffix == ".txt" else "body",
    )
    prepare(cfg, tmp_path / "out")
    want, _ = reference_blocks(hf_tokenizer(cfg), docs, 32)
    assert np.array_equal(load_blocks(tmp_path / "out" / "train"), want)


def test_rerun_is_skipped_and_changed_settings_rebuild(tmp_path):
    """Through the job wrapper: the same settings are skipped; a changed setting rebuilds in place."""
    from core.paths import data_dir
    from core.stages import Stage
    from launcher import job

    path = write_jsonl(tmp_path / "c.jsonl", documents(60, seed=8))
    cfg = make_cfg(tmp_path, paths=[str(path)], seq_len=32, val_fraction=0.0)
    cfg.data.output_dir = str(tmp_path / "prepared")
    run_dir = tmp_path / "run"
    first = job.run_job(run_dir, Stage.data, cfg)
    final = data_dir(cfg)
    assert first["blocks"]["train"] > 0 and load_blocks(final / "train").shape[1] == 32
    again = job.run_job(run_dir, Stage.data, cfg)
    assert again == {"skipped": True, "reason": f"complete at {final}"}
    cfg.data.num_proc = 2  # not a setting the output depends on: still skipped
    assert job.run_job(run_dir, Stage.data, cfg)["skipped"]
    cfg.data.seq_len = 16
    rebuilt = job.run_job(run_dir, Stage.data, cfg)
    assert "skipped" not in rebuilt and rebuilt["seq_len"] == 16
    assert load_blocks(final / "train").shape == (rebuilt["blocks"]["train"], 16)
    assert not list(final.parent.glob(f".{final.name}.*"))
