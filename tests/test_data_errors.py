"""Bad input to the data stage: one clear ValueError naming the file/key and the value, and nothing published."""

from __future__ import annotations

import json
import shutil

import pytest

from data.config import DataSource
from tests.helpers.corpora import documents, make_cfg, prepare, write_jsonl


def _fails(cfg, tmp_path, *needles: str) -> str:
    out = tmp_path / "out"
    with pytest.raises(ValueError) as info:
        prepare(cfg, out)
    msg = str(info.value)
    for n in needles:
        assert n in msg, f"{n!r} not in: {msg}"
    assert not out.exists()
    assert not (tmp_path / ".out.tmp-test" / "_tmp").exists()  # the stage cleaned its scratch files
    return msg


def test_no_files_match(tmp_path):
    cfg = make_cfg(tmp_path, paths=[str(tmp_path / "nothing" / "*.jsonl")])
    _fails(cfg, tmp_path, "nothing/*.jsonl", "matches no file", "quote")


def test_unsupported_extension(tmp_path):
    (tmp_path / "a.csv").write_text("text\nhello\n")
    cfg = make_cfg(tmp_path, paths=[str(tmp_path / "a.csv")])
    _fails(cfg, tmp_path, "a.csv", "'.csv'", ".jsonl")


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    (tmp_path / "empty.txt").write_text("")
    cfg = make_cfg(tmp_path, paths=[str(tmp_path / "empty.*")])
    _fails(cfg, tmp_path, "corpus is empty", "0 characters", "empty.jsonl")


def test_jsonl_row_without_text_field_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", documents(5))
    with open(path, "a") as fh:
        fh.write(json.dumps({"id": 5, "body": "no text key"}) + "\n")
    cfg = make_cfg(tmp_path, paths=[str(path)], num_proc=2)  # raised in a worker, reported by the parent
    _fails(cfg, tmp_path, f"{path}, line 6", "'text'", "['id', 'body']", "data.text_field")


def test_jsonl_invalid_json_names_line(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", documents(3))
    with open(path, "a") as fh:
        fh.write('{"text": "unterminated\n')
    _fails(make_cfg(tmp_path, paths=[str(path)]), tmp_path, f"{path}, line 4", "not valid JSON")


def test_non_utf8_names_file_and_byte_offset(tmp_path):
    good = "plain ascii text. " * 10
    path = tmp_path / "latin1.txt"
    path.write_bytes(good.encode() + "café".encode("latin-1"))
    offset = len(good.encode()) + 3
    cfg = make_cfg(tmp_path, paths=[str(path)])
    _fails(cfg, tmp_path, str(path), f"byte offset {offset}", "0xe9", "UTF-8")


def test_non_utf8_in_jsonl_gives_absolute_offset(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", documents(3))
    size = path.stat().st_size
    prefix = b'{"text": "caf'
    with open(path, "ab") as fh:
        fh.write(prefix + b'\xe9"}\n')
    _fails(make_cfg(tmp_path, paths=[str(path)]), tmp_path, f"byte offset {size + len(prefix)}")


def test_tokenizer_folder_without_tokenizer(tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    cfg = make_cfg(tmp_path, tokenizer=str(folder))
    _fails(cfg, tmp_path, str(folder), "holds no tokenizer", "tokenizer.json", "config.json")


def test_tokenizer_vocabulary_larger_than_model(tmp_path):
    from data.tokenizer import ensure_sample_tokenizer

    folder = ensure_sample_tokenizer(tmp_path / "tok4096", 4096)
    cfg = make_cfg(tmp_path, tokenizer=str(folder))
    assert cfg.model.vocab_size == 2048
    _fails(cfg, tmp_path, "4096 tokens", "model.vocab_size=2048", str(folder))


@pytest.mark.parametrize("seq_len", [1, 0, -5])
def test_seq_len_below_two(tmp_path, seq_len):
    _fails(make_cfg(tmp_path, seq_len=seq_len), tmp_path, f"data.seq_len={seq_len}", "at least 2")


def test_corpus_smaller_than_one_block_says_how_many_tokens(tmp_path):
    from tests.helpers.corpora import hf_tokenizer

    path = write_jsonl(tmp_path / "c.jsonl", ["a short document", "and another one"])
    cfg = make_cfg(tmp_path, paths=[str(path)], seq_len=512, val_fraction=0.0)
    n = sum(len(hf_tokenizer(cfg)(t)["input_ids"]) for t in ["a short document", "and another one"])
    _fails(cfg, tmp_path, f"it has {n} tokens", "data.seq_len=512", "smaller than one block")


def test_validation_split_smaller_than_one_block(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", documents(50, max_words=20))
    cfg = make_cfg(tmp_path, paths=[str(path)], seq_len=128, val_fraction=0.02)
    _fails(cfg, tmp_path, "data.val_fraction=0.02", "held out 1 of 50", "data.val_fraction=0")


def test_parquet_without_text_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "a.parquet")
    _fails(make_cfg(tmp_path, paths=[str(tmp_path / "a.parquet")]), tmp_path, "a.parquet", "no column 'text'", "body")


def test_hub_layout_missing(tmp_path):
    (tmp_path / "wiki" / "raw_en").mkdir(parents=True)
    cfg = make_cfg(tmp_path, source=DataSource.hub, hub_dataset=str(tmp_path / "wiki"), hub_config="raw_en")
    _fails(cfg, tmp_path, "raw_en/train", "data.hub_config")


def test_hub_download_failure_names_repo_and_revision(tmp_path, monkeypatch):
    """The wikicorpus config's hub path up to the download, with huggingface_hub's offline switch on (the
    process may have imported huggingface_hub already, so its constant is set rather than HF_HUB_OFFLINE)."""
    from huggingface_hub import constants

    from launcher.compose import compose

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = compose(["data=wikicorpus", f"cluster.cache_dir={tmp_path / 'cache'}"]).cfg
    assert (cfg.data.hub_dataset, cfg.data.hub_config) == ("gboleda/wikicorpus", "raw_en")
    _fails(cfg, tmp_path, "data.hub_dataset='gboleda/wikicorpus'", "'refs/convert/parquet'", "download failed")


def test_a_failed_rebuild_keeps_the_previous_dataset(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", documents(30))
    cfg = make_cfg(tmp_path, paths=[str(path)], seq_len=32, val_fraction=0.0)
    prepare(cfg, tmp_path / "out")
    before = sorted(p.name for p in (tmp_path / "out" / "train").iterdir())
    shutil.rmtree(tmp_path / ".out.tmp-test", ignore_errors=True)
    with open(path, "a") as fh:
        fh.write('{"no_text": 1}\n')
    with pytest.raises(ValueError, match="line 31"):
        prepare(cfg, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == before
    assert (tmp_path / "out" / "_stage.json").is_file()
